"""Hostile input that needs no live run: configs, `--set` overrides, CLI arguments, Slurm output,
and another user on the same login node.

Properties (hypothesis):
  * any YAML document and any `--set` list gives a valid RunConfig or a ConfigError, and a valid
    one survives the round trip the roles make (to_yaml -> model_validate);
  * any argument list gives an exit code in {0, 1, 2, 3} and never a traceback;
  * any squeue/sacct/sinfo/sbatch text gives records or a SlurmOutputError (a BackendError),
    never IndexError/ValueError, and a node list never expands past its cap.
Bugs found here (BUG-n in docs/failure-model.md) are fixed; their tests stay as regressions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from slurm_rl.cli import cli
from slurm_rl.config import RunConfig, load_config
from slurm_rl.errors import BackendError, ConfigError
from slurm_rl.rundir import RunDir
from slurm_rl.slurm import parse as sp
from slurm_rl.store import Store

DATA = Path(__file__).resolve().parent / "slurm" / "data"
# CI runs the same examples every time (derandomized); SLURM_RL_EXPLORE=1 draws new ones, ten times as many.
EXPLORE = os.environ.get("SLURM_RL_EXPLORE") == "1"


def fast(n: int) -> settings:
    return settings(max_examples=n * (10 if EXPLORE else 1), derandomize=not EXPLORE, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ============================================================================ configs
def _key_paths(model: type[BaseModel] = RunConfig, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + (name,))
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _key_paths(ann, prefix + (name,))
    return out


KEY_PATHS = _key_paths()
SECTIONS = sorted({p[0] for p in KEY_PATHS})
PHASES = ["loading", "idle", "waiting_for_data", "stepping", "checkpointing", "publishing", "generating",
          "syncing_weights", "restoring", "stopping"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["1:00:00", "2-00:00", "abc", "", "vllm", "hf", "local", "slurm", "role-based", "full-restart",
                     "crash", "node-down", "spare-only", "none", "auto", "{prompt}", "x{prompt}", "+", "*", "/",
                     "float32", "jsonl", "arithmetic", "0", "-1", "1e9", "²", "٣"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(PHASES + [p[-1] for p in KEY_PATHS]), st.text(max_size=8)),
                    inner, max_size=4)), max_leaves=12)


@st.composite
def config_docs(draw: Any) -> dict[str, Any]:
    """Mostly the real sections and keys (to get deep into validation), with wrong values and strays."""
    doc: dict[str, Any] = {}
    for path in draw(st.lists(st.sampled_from(KEY_PATHS), max_size=8)):
        cur = doc
        for part in path[:-1]:
            nxt = cur.get(part)
            if not isinstance(nxt, dict):
                nxt = cur[part] = {}
            cur = nxt
        cur[path[-1]] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.text(max_size=10))] = draw(values)
    return doc


def _check_config(load: Any) -> None:
    try:
        cfg = load()
    except ConfigError as e:
        assert str(e).strip()
        return
    assert isinstance(cfg, RunConfig)
    # roles and the controller re-read the resolved config the launcher writes
    again = RunConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")


@fast(300)
@given(doc=config_docs(), cut=st.one_of(st.none(), st.integers(min_value=0, max_value=400)))
def test_any_yaml_document_is_a_config_or_a_config_error(tmp_path_factory, doc, cut):
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    if cut is not None:
        text = text[:cut]                      # a truncated file
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    _check_config(lambda: load_config(path))


@fast(200)
@given(raw=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_any_text_is_a_config_or_a_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(raw, encoding="utf-8", errors="surrogateescape")
    _check_config(lambda: load_config(path))


@st.composite
def overrides(draw: Any) -> str:
    path = list(draw(st.sampled_from(KEY_PATHS)))
    if draw(st.integers(0, 4)) == 0:
        path.append(draw(st.sampled_from(PHASES + ["x", "", "0"])))
    if draw(st.integers(0, 6)) == 0:
        path[draw(st.integers(0, len(path) - 1))] = draw(st.text(max_size=6))
    value = draw(st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                           st.text(max_size=20)))
    sep = draw(st.sampled_from(["=", "=", "=", "", "==", " = "]))
    return ".".join(path) + sep + value


@fast(300)
@given(sets=st.lists(overrides(), max_size=5))
@example(sets=["recovery.phase_timeouts.idle=3", "rollout.replicas=4", "chaos.kinds=[crash, hang]"])
def test_any_set_overrides_are_a_config_or_a_config_error(sets):
    _check_config(lambda: load_config("configs/demo.yaml", sets))


@pytest.mark.parametrize("text", ["rollout: &x {exclude: *x}\n", "rollout:\n  exclude: &x [*x]\n",
                                  "rollout: {exclude: " + "[" * 3000 + "]" * 3000 + "}\n",
                                  "rollout: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n"])
def test_self_referencing_or_very_deep_yaml_is_a_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize("sets", [["recovery.phase_timeouts.idle=-1"], ["recovery.phase_timeouts.stepping=0"],
                                  ["recovery.phase_timeouts.generating=.nan"],
                                  ["recovery.heartbeat_interval_s=.inf", "recovery.suspect_after_s=.inf"],
                                  ["recovery.lease_timeout_s=.inf"], ["controller.tick_s=.inf"]])
def test_durations_must_be_positive_and_finite(sets):
    with pytest.raises(ConfigError):
        load_config("configs/demo.yaml", sets)


# ============================================================================ CLI arguments
def fake_run(root: Path, name: str, *, state: str = "running") -> RunDir:
    """A run directory with a small store and no process (the CLI reads it, never starts anything)."""
    run = RunDir(root / name)
    run.create()
    cfg = RunConfig.model_validate({"name": name, "algorithm": {"steps": 10}, "rollout": {"engine": "hf"}})
    run.config.write_text(cfg.to_yaml())
    now = time.time()
    st_ = Store(run.db)
    try:
        st_.set_metas(run_state=state, created=now - 10, started=now - 9, trainer_version=3, committed=2, wepoch=0)
        for i, slot in enumerate(("trainer/0", "rollout/0")):
            kind, idx = slot.split("/")
            st_.upsert_role(slot, kind, int(idx), "READY", 1, f"L1-{i}", "local1", "idle", 0, 2, now, 0, "", now)
            st_.record_job(f"L1-{i}", slot, 1, "local", "RUNNING", now - 8)
        st_.event(now - 5, "fault_injected", "injected crash into rollout/0", slot="rollout/0")
        st_.open_fault("rollout/0", "crash", "local1", True, now - 5)
    finally:
        st_.close()
    run.write_meta(name=name, backend="local", recovery="role-based", created=now - 10)
    return run


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cliw")
    live = fake_run(root, "live")
    ended = fake_run(root, "ended", state="finished")
    (root / "file.txt").write_text("not a run")
    (root / "cfg.yaml").write_text("rollout: {replicas: 0}\n")      # invalid: launch must refuse it
    return root, live, ended


def _params() -> tuple[list[str], list[str]]:
    cmds, opts = [], set()
    for name, cmd in cli.commands.items():
        cmds.append(name)
        for p in cmd.params:
            opts.update(getattr(p, "opts", []))
            opts.update(getattr(p, "secondary_opts", []))
    # these follow a run forever (until its controller ends it), start processes or simulate for minutes;
    # make-tiny-model and make-dataset write wherever they are told (tests/test_task_launch.py covers them)
    opts -= {"--follow", "-f", "--watch", "-w", "--plot"}
    cmds = [c for c in cmds if c not in ("resume", "simulate", "sweep", "launch", "make-tiny-model", "make-dataset")]
    return cmds, sorted(opts)


COMMANDS, OPTIONS = _params()
surrogate_text = st.binary(min_size=1, max_size=6).map(lambda b: b.decode("utf-8", errors="surrogateescape"))


@st.composite
def argv(draw: Any, world: tuple[Path, RunDir, RunDir]) -> list[str]:
    root, live, ended = world
    paths = [str(live.path), str(ended.path), str(root), str(root / "nope"), str(root / "file.txt"), "/", "/proc/1"]
    token = st.one_of(
        st.sampled_from(OPTIONS), st.sampled_from(paths),
        st.sampled_from(["rollout/0", "trainer/0", "spare/9", "rollout/-1", "rollout/", "/0", "x/y", "crash", "hang",
                         "exit:3", "exit:", "exit:-1", "exit:x", "node-down", "drain", "dead", "recovered", "10m",
                         "+5s", "14:05", "2025-01-31T14:05", "0", "-1", "1000", "1001", "nan", "--", "-", ""]),
        st.text(max_size=12).filter(lambda s: "\x00" not in s), surrogate_text.filter(lambda s: "\x00" not in s),
        st.integers(-10**20, 10**20).map(str))
    head = draw(st.sampled_from(COMMANDS + ["--help", "--version", "nonsense"]))
    return [head] + draw(st.lists(token, max_size=6))


def _check_cli(args: list[str]) -> Any:
    res = CliRunner().invoke(cli, args)
    exc = res.exception
    tb = "" if exc is None or isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    assert not tb, f"slurm-rl {' '.join(map(repr, args))} raised {tb}"
    assert res.exit_code in (0, 1, 2, 3), (args, res.exit_code, res.output[-500:])
    assert "Traceback" not in res.output, (args, res.output[-2000:])
    return res


@fast(250)
@given(data=st.data())
def test_any_arguments_give_an_exit_code_and_no_traceback(cli_world, data):
    args = data.draw(argv(cli_world))
    if args[0] == "stop" and str(cli_world[1].path) in args:
        assume(False)          # would mark the shared fake run stopped (tested below on its own copy)
    _check_cli(args)


def test_stop_of_a_run_without_controller_marks_it_stopped(tmp_path):
    run = fake_run(tmp_path, "s")
    res = _check_cli(["stop", str(run.path)])
    assert res.exit_code == 0
    res = _check_cli(["inject", str(run.path), "rollout/0", "--fault", "crash"])
    assert res.exit_code == 2 and "ended" in res.output


@pytest.mark.parametrize("args", [["inject", "{live}", "rollout/1", "--fault", "exit:²"],
                                  ["events", "{live}", "--slot", "rollout/¹"],
                                  ["inject", "{live}", "rollout/²", "--fault", "crash"]])
def test_unicode_digits_are_bad_input(cli_world, args):
    live = str(cli_world[1].path)
    res = _check_cli([a.replace("{live}", live) for a in args])
    assert res.exit_code == 2


def test_an_exit_code_out_of_range_is_bad_input(cli_world):
    res = _check_cli(["inject", str(cli_world[1].path), "rollout/0", "--fault", "exit:99999999999999999999"])
    assert res.exit_code == 2


# ============================================================================ another user
# Run the CLI as uid 65534 in a forked child (modules are imported before the fork: the
# interpreter's own files may not be readable by that user).
STRANGER = 65534


def as_stranger(args: list[str]) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(STRANGER)
            os.setuid(STRANGER)
            res = CliRunner().invoke(cli, args)
            exc = res.exception
            out = {"code": res.exit_code, "output": res.output[-1000:],
                   "exception": None if exc is None or isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"}
        except BaseException as e:  # noqa: BLE001
            out = {"code": -1, "output": "", "exception": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def _warm_imports(run: RunDir) -> None:
    for args in (["status", str(run.path)], ["events", str(run.path)], ["report", str(run.path)],
                 ["ls", str(run.path.parent)], ["inject", str(run.path), "rollout/0", "--fault", "crash"]):
        CliRunner().invoke(cli, args)
    import slurm_rl.controller.__main__  # noqa: F401  (stop without a controller)
    import slurm_rl.roles.worker  # noqa: F401  (imported before the uid switch)


def store_snapshot(run: RunDir) -> tuple[Any, ...]:
    from slurm_rl.store import connect

    conn = connect(run.db, readonly=True)
    try:
        return tuple(tuple(tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in
                     ("meta", "events", "faults", "roles", "jobs"))
    finally:
        conn.close()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
STRANGER_COMMANDS = [["status", "{run}"], ["status", "{run}", "--json"], ["events", "{run}"], ["report", "{run}"],
                     ["stop", "{run}"], ["inject", "{run}", "rollout/0", "--fault", "crash"], ["resume", "{run}"],
                     ["ls", "{root}"], ["status", "{private}"], ["stop", "{private}"],
                     ["inject", "{private}", "rollout/0", "--fault", "crash"]]


@pytest.fixture(scope="module")
def shared_root():
    """A project directory everyone can list (0755, outside pytest's 0700 temp dir), holding one
    user's owner-only run."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="slurm-rl-shared-"))
    os.chmod(root, 0o755)
    run = fake_run(root, "mine")
    (root / "private").mkdir(mode=0o700)            # a run inside a directory the stranger cannot list
    private = fake_run(root / "private", "theirs")
    _warm_imports(run)
    yield root, run, private
    shutil.rmtree(root, ignore_errors=True)


@needs_root
@pytest.mark.parametrize("args", STRANGER_COMMANDS, ids=lambda a: " ".join(a[:1] + a[2:]))
def test_another_user_changes_nothing_and_gets_no_traceback(shared_root, args):
    root, run, private = shared_root
    before = store_snapshot(run), store_snapshot(private)
    res = as_stranger([a.replace("{run}", str(run.path)).replace("{root}", str(root))
                       .replace("{private}", str(private.path)) for a in args])
    assert (store_snapshot(run), store_snapshot(private)) == before       # nothing was changed
    assert res["exception"] is None, res
    assert res["code"] in (0, 2, 3), res
    assert "Traceback" not in res["output"]


# ============================================================================ Slurm output
def _data(name: str) -> str:
    return (DATA / name).read_text()


SAMPLES = {
    "squeue": [_data(f) for f in ("squeue_final.txt", "squeue_mixed.txt", "squeue_requeued.txt")],
    "sacct": [_data(f) for f in ("sacct_final.txt", "sacct_with_steps.txt", "sacct_oom_handwritten.txt")],
    "sinfo": [_data(f) for f in ("sinfo_down.txt", "sinfo_drain.txt", "sinfo_drained.txt", "sinfo_not_responding.txt")],
}
PARSERS = {"squeue": sp.parse_squeue, "sacct": sp.parse_sacct, "sinfo": sp.parse_sinfo}
slurm_alphabet = st.sampled_from(list("0123456789|[],-+:*_. \n\tabcnRUNIGPDFAELCO()#~!%$@^") + ["²", "٣", "\x00", "é"])
slurm_text = st.text(alphabet=slurm_alphabet, max_size=200)


@st.composite
def damaged(draw: Any, kind: str) -> str:
    """Real output, cut short, with lines dropped, fields duplicated or characters changed."""
    text = draw(st.sampled_from(SAMPLES[kind]))
    lines = text.splitlines()
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "drop", "dup_field", "junk", "swap"]))
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "drop":
            del lines[i]
        elif op == "dup_field":
            parts = lines[i].split("|")
            j = draw(st.integers(0, len(parts) - 1))
            lines[i] = "|".join(parts[:j] + [parts[j]] + parts[j:])
        elif op == "junk":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(slurm_text) + lines[i][pos:]
        else:
            parts = lines[i].split("|")
            draw(st.randoms()).shuffle(parts)
            lines[i] = "|".join(parts)
    out = "\n".join(lines)
    return out[: draw(st.integers(0, len(out)))] if draw(st.booleans()) else out


def _records_or_backend_error(fn: Any, text: str) -> None:
    try:
        out = fn(text)
    except BackendError as e:
        assert str(e)
        return
    assert out is not None


@fast(300)
@given(kind=st.sampled_from(["squeue", "sacct", "sinfo"]), data=st.data())
def test_damaged_slurm_output_is_records_or_a_clear_error(kind, data):
    text = data.draw(st.one_of(damaged(kind), slurm_text))
    _records_or_backend_error(PARSERS[kind], text)


@fast(300)
@given(text=st.one_of(slurm_text, st.text(max_size=60)))
@example(text="n[1-3,5]")
@example(text="n[01-99999]")
def test_small_parsers_never_raise_anything_else(text):
    for fn in (sp.expand_nodelist, sp.parse_sbatch_job_id):
        _records_or_backend_error(fn, text)
    assume("²" not in text and "\u00b9" not in text and "\u00b3" not in text)   # BUG-7, tested below
    for fn in (sp.parse_exit_code, sp.parse_wait_status, sp.parse_job_state, sp.node_health, sp.parse_partitions):
        fn(text)


@pytest.mark.parametrize("fn,text", [(sp.parse_wait_status, "²"), (sp.parse_squeue, "1|1|FAILED|²|None|n1|x")])
def test_superscript_digits_in_slurm_output(fn, text):
    _records_or_backend_error(fn, text)


_EXPAND = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))   # 1 GiB: a blow-up is a MemoryError, not a dead machine
from slurm_rl.slurm.parse import expand_nodelist, SlurmOutputError
try:
    n = len(expand_nodelist(sys.argv[1]))
    print("expanded", n)
except SlurmOutputError as e:
    print("error", e)
"""


@pytest.mark.parametrize("text", ["r[1-99999]-n[1-99999]", "n[" + ",".join(["1-99999"] * 2000) + "]"])
def test_node_list_blowups_are_refused(text):
    res = subprocess.run([sys.executable, "-c", _EXPAND, text], capture_output=True, text=True, timeout=60, check=False)
    assert res.stdout.startswith("error"), (res.stdout[-300:], res.stderr[-300:])
