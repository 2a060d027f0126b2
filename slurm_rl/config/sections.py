"""The run configuration's sections: typed, validated models with their defaults (loading.py reads
YAML and overrides into them).

One section per concern (model, task, algorithm, recovery, sync, controller, chaos) and one per
role (trainer, rollout, spare) with the Slurm resources of that role. Unknown keys are rejected
with a suggestion. `--set key.sub=value` overrides are applied to the raw YAML before validation,
so they get exactly the same checks.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from slurm_rl.backends.base import Resources
from slurm_rl.states import FaultKind, Phase, RoleKind

if TYPE_CHECKING:
    pass


class _Section(BaseModel):
    # no inf/nan anywhere: a duration of .inf hangs event waits, .nan compares false with everything
    model_config = ConfigDict(extra="forbid", validate_default=True, use_enum_values=False, allow_inf_nan=False)


class RecoveryPolicy(str, enum.Enum):
    ROLE_BASED = "role-based"
    FULL_RESTART = "full-restart"

    def __str__(self) -> str:
        return self.value


class BackendKind(str, enum.Enum):
    LOCAL = "local"
    SLURM = "slurm"

    def __str__(self) -> str:
        return self.value


class EngineKind(str, enum.Enum):
    VLLM = "vllm"
    HF = "hf"

    def __str__(self) -> str:
        return self.value


def parse_slurm_time(value: str | int) -> int:
    """Slurm time formats -> whole minutes (rounded up).

    `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`, as `sbatch --time` takes them.
    """
    if isinstance(value, bool):
        raise ValueError("must be minutes or a Slurm time such as 2:00:00")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be a positive number of minutes")
        return value
    s = str(value).strip()
    days = 0
    if "-" in s:
        d, _, s = s.partition("-")
        if not d.isdigit():
            raise ValueError(f"'{value}' is not a Slurm time (use minutes, HH:MM:SS or D-HH:MM:SS)")
        days = int(d)
        parts = s.split(":")
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"'{value}' is not a Slurm time (use minutes, HH:MM:SS or D-HH:MM:SS)")
        parts += ["0"] * (3 - len(parts))       # D-H, D-H:M, D-H:M:S
        h, m, sec = parts
    else:
        parts = s.split(":")
        if len(parts) == 1:
            h, m, sec = "0", parts[0], "0"
        elif len(parts) == 2:
            h, m, sec = "0", parts[0], parts[1]
        elif len(parts) == 3:
            h, m, sec = parts
        else:
            raise ValueError(f"'{value}' is not a Slurm time (use minutes, HH:MM:SS or D-HH:MM:SS)")
    if not all(x.isdigit() for x in (h, m, sec)):
        raise ValueError(f"'{value}' is not a Slurm time (use minutes, HH:MM:SS or D-HH:MM:SS)")
    total_s = ((days * 24 + int(h)) * 60 + int(m)) * 60 + int(sec)
    if total_s <= 0:
        raise ValueError("must be longer than zero")
    return -(-total_s // 60)


class SlurmResources(_Section):
    """Per-role scheduler resources. Unset fields inherit from the top-level `slurm:` section."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | int | None = Field(default=None, description="Slurm time limit: minutes or D-HH:MM:SS")
    nodes: int | None = Field(default=None, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=0)
    cpus_per_task: int | None = Field(default=None, ge=1)
    mem_gb: float | None = Field(default=None, gt=0)
    gres: str | None = None
    constraint: str | None = None
    exclude: list[str] = Field(default_factory=list)
    nodelist: list[str] = Field(default_factory=list)
    additional: dict[str, str] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _time_ok(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            parse_slurm_time(v)
        return v

    @field_validator("partition", "account", "qos", "time", "gres", "constraint", "exclude", "nodelist",
                     "additional")
    @classmethod
    def _one_line(cls, v: Any) -> Any:
        # each value becomes one `#SBATCH` line: a newline or other control character would start a shell line
        items = v.items() if isinstance(v, dict) else v if isinstance(v, list) else [v]
        for x in items:
            for part in x if isinstance(x, tuple) else (x,):
                if isinstance(part, str) and any(ord(c) < 32 or ord(c) == 127 for c in part):
                    raise ValueError(f"{part!r} contains a newline or control character; Slurm options are one line")
        return v


class ModelConfig(_Section):
    path: str | None = Field(default=None, description="HF model dir; unset builds the tiny demo model")
    family: Literal["llama", "qwen2", "qwen3"] = Field(
        default="llama", description="family of the tiny model built when path is unset (qwen2: qkv bias and tied "
        "embeddings; qwen3: q/k norm)")
    tokenizer: Literal["char", "words"] = Field(
        default="char", description="tokenizer of the tiny model: one token per character, or per word of the "
        "task's data (shorter sequences)")
    hidden: int = Field(default=128, ge=32)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    kv_heads: int = Field(default=2, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_model_len: int = Field(default=128, ge=16)

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.path is None:
            if self.hidden % self.heads:
                raise ValueError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
            if self.heads % self.kv_heads:
                raise ValueError(f"model.heads ({self.heads}) must be divisible by model.kv_heads ({self.kv_heads})")
            if self.hidden // self.heads < 32:
                raise ValueError(
                    f"model.hidden / model.heads = {self.hidden // self.heads}: vLLM's CPU attention needs a head "
                    "size of at least 32; raise model.hidden or lower model.heads")
        return self


class TaskFields(_Section):
    """Record fields of a dataset; unset: the first present of the usual names."""

    prompt: str | None = Field(default=None, description="default: prompt, question or problem")
    answer: str | None = Field(default=None, description="default: answer or solution")
    id: str | None = Field(default=None, description="default: id if present, else <file stem>:<line or row>")


class TaskConfig(_Section):
    kind: Literal["arithmetic", "word-problems", "dataset", "jsonl"] = Field(
        default="arithmetic", description="arithmetic: generated a<op>b= prompts; word-problems: generated "
        "one-operation word problems in GSM8K (or MATH) format; dataset (or jsonl): records from task.path")
    path: str | None = Field(default=None, description="records: a .jsonl or .parquet file, or a Hugging Face "
                             "datasets save_to_disk directory (kind: dataset)")
    split: str | None = Field(default=None, description="split of a datasets directory (default: train)")
    eval_path: str | None = Field(default=None, description="held-out records for evaluation (a file or dir)")
    eval_split: str | None = Field(default=None, description="eval split of a datasets directory (e.g. test); "
                                   "read from eval_path, else from path")
    eval_size: int | None = Field(
        default=None, ge=1, description="eval problems: with eval_path/eval_split at most this many of them "
        "(a seeded sample); without, this many held out of the training data (or generated apart)")
    format: Literal["auto", "gsm8k", "math", "plain"] = Field(
        default="auto", description="how the gold answer is read from the answer field: gsm8k (after the last "
        "####), math (the last \\boxed{}), plain (the whole field), auto (whichever the field has)")
    fields: TaskFields = Field(default_factory=TaskFields)
    shuffle: bool = Field(default=True, description="each epoch hands the problems out in a fresh order drawn "
                          "from the seed (off: file order)")
    num_problems: int = Field(default=2000, ge=1)
    max_operand: int = Field(default=9, ge=1)
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+"])
    max_answer: int | None = Field(default=None, description="redraw problems whose answer is larger")
    max_second_operand: int | None = Field(default=None, ge=1, description="word problems: the largest second "
                                           "operand (default max_operand; 1: 'gets 1 more')")
    template: str = Field(default="{prompt}", description="the user message; {prompt} is replaced by the problem, "
                          "every other brace is kept as written")
    chat: bool = Field(default=False, description="apply the tokenizer's chat template (system prompt, user "
                       "message, generation prompt)")
    system_prompt: str | None = Field(default=None, description="a system message (chat), else text put before "
                                      "the prompt")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra variables for the chat template, e.g. {enable_thinking: false}")
    reward: str | None = Field(
        default=None, description="math (the final answer verified with math-verify), exact (the demo's rule), "
        "package.module:function or path/to/file.py:function, called as f(prompt, completion, record) -> float; "
        "default: exact for arithmetic, math otherwise")
    seed: int | None = None

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("task.template must contain {prompt}")
        return v

    @model_validator(mode="after")
    def _path(self) -> TaskConfig:
        if self.kind in ("jsonl", "dataset") and not self.path:
            raise ValueError(f"task.kind is {self.kind!r} but task.path is not set; point it at a .jsonl or "
                             ".parquet file or a datasets directory")
        if self.kind in ("arithmetic", "word-problems") and (self.path or self.eval_path or self.eval_split):
            raise ValueError(f"task.path/eval_path/eval_split are for datasets, but task.kind is {self.kind!r} "
                             "(its problems are generated); set task.kind: dataset")
        if self.kind == "word-problems" and self.format == "plain":
            raise ValueError("word problems are written in gsm8k or math format; set task.format to one of them")
        return self

    @property
    def reward_spec(self) -> str:
        return self.reward or ("exact" if self.kind == "arithmetic" else "math")

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_path or self.eval_split or self.eval_size)


class AlgorithmConfig(_Section):
    steps: int = Field(default=150, ge=1, description="trainer steps (= weight versions) in the run")
    prompts_per_step: int = Field(default=16, ge=1)
    group_size: int = Field(default=8, ge=2, description="samples per prompt (GRPO group)")
    lr: float = Field(default=1e-3, gt=0)
    clip_eps: float = Field(default=0.2, gt=0, lt=1)
    kl_coef: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    normalize_std: bool = True
    max_new_tokens: int = Field(default=4, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    max_staleness: int = Field(default=2, ge=0, description="drop trajectories more versions behind than this")
    buffer_steps: float = Field(default=2.0, gt=0, description="rollouts pause when this many steps of data wait")
    eval_every: int = Field(default=0, ge=0, description="greedy pass@1 on the task's eval split whenever a "
                            "multiple of this many steps is reached (0: never); rollout/0 runs it")


class TrainerConfig(SlurmResources):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ranks_per_node: int | None = Field(
        default=None, ge=1, description="trainer processes per node (FSDP2 ranks): default one per GPU "
        "(gpus_per_node), else 1; set it on CPU nodes (gloo), e.g. 2")
    dist_timeout_s: float = Field(
        default=1800.0, gt=0, description="how long a rank waits in a collective (the batch broadcast while "
        "the trainer waits for data included) before torch.distributed gives up")
    checkpoint_every: int = Field(default=10, ge=1)
    keep_checkpoints: int = Field(default=3, ge=1)
    micro_batch_size: int = Field(
        default=4, ge=1, description="sequences per forward/backward; gradients accumulate over the step's "
        "micro-batches (the step equals the full-batch one). Raise it for short sequences, lower it for long ones")
    gradient_checkpointing: bool = Field(
        default=True, description="recompute each transformer layer's activations in the backward instead of "
        "keeping them (Hugging Face gradient_checkpointing_enable): ~30% more compute, far less memory")
    logprob_chunk_tokens: int = Field(
        default=1024, ge=1, description="tokens whose lm_head + log_softmax are computed at once; the "
        "[tokens, vocab] logits of one chunk are the largest tensor a step makes (1024 x 152k fp32: 0.6 GB)")


class RolloutConfig(SlurmResources):
    replicas: int = Field(default=2, ge=1)
    engine: EngineKind = EngineKind.VLLM
    prompts_per_batch: int = Field(default=8, ge=1)
    engine_multiprocess: bool = Field(default=False, description="vLLM in its default multi-process mode")
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)


class SpareConfig(SlurmResources):
    replicas: int = Field(default=1, ge=0)
    warm_trainer: bool = Field(
        default=True, description="build the trainer (model and optimizer, on the CPU) while standing by, so a "
        "promotion to trainer skips it; with a GPU trainer only the code is warmed (the engine owns the GPU)")
    trainer_nodes: int = Field(
        default=0, ge=0, description="a warm standby of the trainer's own shape: 0 for none, else the "
        "trainer's node count (trainer.nodes). One more job like the trainer's (its resources, one rank per GPU) "
        "forms its process group and builds its shards, then waits; a dead trainer is re-formed on it at once "
        "(no queue wait, no build) while a new standby is queued. Costs a second trainer allocation")


def _default_phase_timeouts() -> dict[Phase, float]:
    return {
        Phase.LOADING: 180.0,
        Phase.RESTORING: 120.0,
        Phase.GENERATING: 30.0,
        Phase.SYNCING_WEIGHTS: 30.0,
        Phase.STEPPING: 60.0,
        Phase.PUBLISHING: 30.0,
        Phase.CHECKPOINTING: 300.0,
        Phase.IDLE: 20.0,
        Phase.WAITING_FOR_DATA: 20.0,
        Phase.STOPPING: 30.0,
    }


class RecoveryConfig(_Section):
    policy: RecoveryPolicy = RecoveryPolicy.ROLE_BASED
    heartbeat_interval_s: float = Field(default=0.25, gt=0)
    suspect_after_s: float = Field(default=1.0, gt=0, description="heartbeat silence that makes a role SUSPECT")
    phase_timeouts: dict[Phase, float] = Field(
        default_factory=_default_phase_timeouts,
        description="per phase: silence (or no progress) for this long confirms a SUSPECT role DEAD")
    hang_after_s: float = Field(
        default=10.0, gt=0, description="heartbeat silence that confirms a hang (heartbeats come from their own "
        "thread every heartbeat_interval_s); the phase timeout applies instead when it is shorter, and always "
        "while loading or restoring, where native code may hold the interpreter for long")
    hang_idle_after_s: float = Field(
        default=5.0, gt=0, description="heartbeat silence that confirms a hang when the role's batch-step agent "
        "sees its process use no CPU meanwhile (deadlocked, or stuck in the kernel); a process it sees stopped "
        "(state T) is dead at once, one using CPU gets hang_after_s")
    process_state: bool = Field(
        default=True, description="confirm hangs with the role process's state as its job's batch agent (Slurm) or "
        "the local backend sees it (stopped: dead at once; no CPU: hang_idle_after_s); off: heartbeat silence only")
    probe_timeout_s: float = Field(default=1.0, gt=0)
    restart_budget: int = Field(default=5, ge=0, description="restarts of one role slot within budget_window_s")
    budget_window_s: float = Field(default=600.0, gt=0)
    exclude_node_after: int = Field(default=2, ge=1, description="failures on a node before it is excluded")
    max_full_restarts: int = Field(default=3, ge=0)
    lease_timeout_s: float = Field(default=300.0, gt=0)
    standby: Literal["spare-then-rollout", "spare-only", "none"] = Field(
        default="spare-then-rollout", description="which one-process standby a dead trainer is restored on: a "
        "spare, else the rollout holding the newest weights; spares only; or none (a new trainer job). The "
        "trainer-shaped standby (spare.trainer_nodes) is taken first whatever this says")
    weigh_start_times: bool = Field(
        default=True, description="weigh this run's measured start times (submission to ready): a dead rollout "
        "waits for a spare still starting when it is clearly sooner than a new job, and a dead trainer leaves "
        "the only rollout generating when a cold trainer is back sooner; off: promote whatever is ready, else "
        "submit a new job")

    @field_validator("phase_timeouts")
    @classmethod
    def _positive(cls, v: dict[Phase, float]) -> dict[Phase, float]:
        for phase, t in v.items():
            if not 0 < t < float("inf"):
                raise ValueError(f"recovery.phase_timeouts.{phase.value} must be a positive number of seconds (got {t})")
        return v

    @field_validator("phase_timeouts", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        if isinstance(v, dict):
            merged: dict[Any, Any] = {p.value: t for p, t in _default_phase_timeouts().items()}
            merged.update(v)
            return merged
        return v

    @model_validator(mode="after")
    def _order(self) -> RecoveryConfig:
        if self.hang_idle_after_s <= self.suspect_after_s:
            raise ValueError(f"recovery.hang_idle_after_s ({self.hang_idle_after_s}) must be longer than "
                             f"recovery.suspect_after_s ({self.suspect_after_s})")
        if self.hang_after_s <= self.suspect_after_s:
            raise ValueError(f"recovery.hang_after_s ({self.hang_after_s}) must be longer than "
                             f"recovery.suspect_after_s ({self.suspect_after_s})")
        if self.suspect_after_s < self.heartbeat_interval_s * 2:
            raise ValueError(
                f"recovery.suspect_after_s ({self.suspect_after_s}) must be at least twice "
                f"recovery.heartbeat_interval_s ({self.heartbeat_interval_s}), or every late heartbeat is a fault")
        return self


class SyncConfig(_Section):
    transport: Literal["auto", "tcp", "ucx", "shm"] = "auto"
    host: str = Field(default="auto", description="address a role serves weights on (auto: loopback locally, "
                                                   "the node's address on Slurm)")
    deadline_s: float = Field(
        default=30.0, gt=0, description="the least time a weight pull gets (all holders together); more when "
        "the bytes to move need it (deadline_slack x bytes / measured bandwidth). A holder that sends nothing "
        "for 0.6 x the syncing_weights phase timeout is given up on whatever the deadline")
    deadline_slack: float = Field(
        default=3.0, ge=1, description="a pull may take this many times as long as its bytes need at the "
        "bandwidth this process measured on its earlier pulls")
    assumed_gbps: float = Field(
        default=1.0, gt=0, description="bandwidth (GB/s) assumed for a process's first pull, before it has "
        "measured one")
    bucket_mb: float = Field(default=64.0, gt=0)


class ControllerConfig(_Section):
    host: str = Field(default="auto", description="address roles use to reach the controller (auto: loopback "
                                                   "for the local backend, this host's address for Slurm)")
    bind: str | None = Field(default=None, description="address to bind (default: host)")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    tick_s: float = Field(default=0.1, gt=0)
    poll_interval_s: float | None = Field(default=None, gt=0, description="scheduler poll period, one squeue+sinfo "
                                          "per poll (default: 0.2 s local, 2 s Slurm)")
    max_message_mb: float = Field(default=64.0, gt=0)
    stop_grace_s: float = Field(default=20.0, gt=0, description="how long roles get to stop before their jobs are "
                                "cancelled; a role writing a checkpoint gets its checkpointing phase timeout")


class ChaosConfig(_Section):
    enabled: bool = False
    mean_interval_steps: float = Field(default=10.0, gt=0)
    kinds: list[FaultKind] = Field(default_factory=lambda: [FaultKind.CRASH, FaultKind.NODE_DOWN, FaultKind.HANG])
    roles: list[RoleKind] = Field(default_factory=lambda: [RoleKind.ROLLOUT, RoleKind.TRAINER])
    start_after_steps: int = Field(default=5, ge=0)
    max_faults: int | None = Field(default=None, ge=0)
    seed: int = 0


class LoggingConfig(_Section):
    """Where metrics go besides the state store (slurm_rl.metrics)."""

    jsonl: bool = Field(default=True, description="metrics.jsonl in the run directory, one line per step and eval")
    tensorboard: bool = Field(default=True, description="TensorBoard event files in <run dir>/tb")
    wandb: bool = Field(default=False, description="also log to Weights & Biases")
    wandb_project: str = "slurm-rl"
    wandb_entity: str | None = None
    wandb_mode: Literal["online", "offline"] = Field(
        default="online", description="offline writes the run under <run dir>/wandb for `wandb sync` later")


class LocalConfig(_Section):
    nodes: int = Field(default=4, ge=1, description="fake node names the local backend spreads roles over")
    node_down_s: float = Field(default=30.0, ge=0, description="how long an injected node-down lasts locally")


class RunConfig(_Section):
    name: str | None = None
    backend: BackendKind = BackendKind.LOCAL
    seed: int = 0
    runs_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    spare: SpareConfig = Field(default_factory=SpareConfig)
    slurm: SlurmResources = Field(default_factory=SlurmResources)
    local: LocalConfig = Field(default_factory=LocalConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError(f"'{v}' is not a usable run name: letters, digits, '.', '_', '-' (max 64)")
        return v

    @model_validator(mode="after")
    def _cross(self) -> RunConfig:
        gpus = self.trainer.gpus_per_node if self.trainer.gpus_per_node is not None else self.slurm.gpus_per_node
        rpn = self.trainer.ranks_per_node
        if rpn is not None and gpus and rpn != gpus:
            raise ValueError(f"trainer.ranks_per_node={rpn} differs from trainer.gpus_per_node={gpus}: a GPU trainer "
                             "runs one rank per GPU; drop ranks_per_node (it is for CPU nodes)")
        if self.algorithm.eval_every and not self.task.has_eval:
            raise ValueError("algorithm.eval_every is set but the task has no eval split; set task.eval_path, "
                             "task.eval_split or task.eval_size")
        nodes = self.trainer_shape()[0]
        if self.spare.trainer_nodes and self.spare.trainer_nodes != nodes:
            raise ValueError(f"spare.trainer_nodes={self.spare.trainer_nodes} but the trainer runs on {nodes} node(s): "
                             f"a trainer-shaped standby has the trainer's shape; set spare.trainer_nodes={nodes} or 0")
        if self.recovery.standby == "spare-only" and self.spare.replicas == 0:
            raise ValueError("recovery.standby is 'spare-only' but spare.replicas is 0; add a spare or use 'spare-then-rollout'")
        return self

    def resources(self, role: RoleKind) -> Resources:
        """Scheduler resources of a role: its own section over the top-level `slurm:` defaults."""
        # a trainer-shaped standby asks for what the trainer asks for
        own: SlurmResources = {RoleKind.TRAINER: self.trainer, RoleKind.ROLLOUT: self.rollout,
                               RoleKind.SPARE: self.spare, RoleKind.TRAINER_SPARE: self.trainer}[role]
        base = self.slurm

        def pick(name: str, default: Any) -> Any:
            v = getattr(own, name)
            if v is None or v == [] or v == {}:
                v = getattr(base, name)
            return default if v is None else v

        time = pick("time", 60)
        return Resources(
            partition=pick("partition", None), account=pick("account", None), qos=pick("qos", None),
            time_min=parse_slurm_time(time), nodes=pick("nodes", 1), gpus_per_node=pick("gpus_per_node", 0),
            cpus_per_task=pick("cpus_per_task", 1), mem_gb=pick("mem_gb", None), gres=pick("gres", None),
            constraint=pick("constraint", None), exclude=tuple(pick("exclude", [])),
            nodelist=tuple(pick("nodelist", [])),
            additional=tuple(sorted({**base.additional, **own.additional}.items())),
            tasks_per_node=self._tasks_per_node(role, pick("gpus_per_node", 0)),
        )

    def _tasks_per_node(self, role: RoleKind, gpus: int) -> int:
        """A trainer runs one rank per GPU (or `ranks_per_node` on CPU); other roles one process."""
        if role not in (RoleKind.TRAINER, RoleKind.TRAINER_SPARE):
            return 1
        return self.trainer.ranks_per_node or gpus or 1

    def trainer_shape(self) -> tuple[int, int]:
        """(nodes, ranks per node) of the trainer job: its world size is their product."""
        r = self.resources(RoleKind.TRAINER)
        return r.nodes, r.tasks_per_node

    def standby_misfit(self, kind: RoleKind) -> str:
        """Why a job of `kind` (a spare or a rollout: one process on one node) cannot become the
        trainer, or "" when it can: it must have the trainer's shape and at least its resources."""
        n, r = self.trainer_shape()
        if (n, r) != (1, 1):
            return f"the trainer is {n} node(s) x {r} rank(s); a {kind.value} is one process on one node"
        t, s = self.resources(RoleKind.TRAINER), self.resources(kind)
        if s.nodes != 1:
            return f"a {kind.value} job has {s.nodes} nodes; the trainer runs on one"
        if s.gpus_per_node < t.gpus_per_node:
            return f"a {kind.value} job has {s.gpus_per_node} GPU(s); the trainer needs {t.gpus_per_node}"
        if t.mem_gb is not None and s.mem_gb is not None and s.mem_gb < t.mem_gb:
            return f"a {kind.value} job has {s.mem_gb} GB of memory; the trainer asks for {t.mem_gb}"
        for what in ("gres", "constraint"):
            want, got = getattr(t, what), getattr(s, what)
            if want and want != got:
                return f"a {kind.value} job's {what} is {got or 'unset'}; the trainer's is {want}"
        return ""

    def replicas(self, role: RoleKind) -> int:
        return {RoleKind.TRAINER: 1, RoleKind.ROLLOUT: self.rollout.replicas, RoleKind.SPARE: self.spare.replicas,
                RoleKind.TRAINER_SPARE: 1 if self.spare.trainer_nodes else 0}[role]

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)
