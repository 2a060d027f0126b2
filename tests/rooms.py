"""Controller rooms on a real run directory and store, with a backend that starts nothing: for unit
tests of the lineage and recovery against checkpoints on disk."""

from __future__ import annotations

import queue
import uuid
from pathlib import Path

from slurm_rl import protocol as P
from slurm_rl.config import RunConfig
from slurm_rl.controller.broker import Broker
from slurm_rl.controller.context import Context
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.recover import Recovery
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.weights import Lineage
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store


class Backend:
    """Takes submissions and cancellations, starts nothing (also a whole Controller's backend)."""

    name = "local"

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.call_counts: dict[str, int] = {}

    def submit(self, spec: object) -> str:
        return "J"

    def cancel(self, ids: list[str]) -> None:
        self.cancelled += ids

    def close(self) -> None:
        pass


def lineage_rooms(tmp_path: Path, **cfg: object) -> tuple[Context, Registry, Faults, Lineage]:
    """A fresh run's context, registry (slots created), faults and lineage (started)."""
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    ctx = Context(run, RunConfig.model_validate(cfg), Store(tmp_path / "state.db"), Backend())  # type: ignore[arg-type]
    registry = Registry(ctx)
    registry.create()
    faults = Faults(ctx, registry)
    lineage = Lineage(ctx, registry, faults)
    lineage.start()
    return ctx, registry, faults, lineage


NOW = 1000.0


class Rooms:
    """The controller's rooms over a real store, with a backend that starts nothing."""

    def __init__(self, tmp_path: Path, **cfg: object) -> None:
        self.run = RunDir(tmp_path)
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        self.cfg = RunConfig.model_validate(cfg or {"spare": {"replicas": 1}})
        self.store = Store(tmp_path / "state.db")
        self.store.load_problems([(f"{i}+1=", str(i + 1)) for i in range(50)])
        self.ctx = Context(self.run, self.cfg, self.store, Backend())  # type: ignore[arg-type]
        self.registry = Registry(self.ctx)
        self.registry.create()
        self.faults = Faults(self.ctx, self.registry)
        self.lineage = Lineage(self.ctx, self.registry, self.faults)
        self.lineage.start()
        self.broker = Broker(self.ctx, self.lineage, self.faults)
        self.rec = Recovery(self.ctx, self.registry, self.lineage, self.broker, self.faults, queue.SimpleQueue(),
                            on_jobs_changed=lambda: None, stop_run=lambda reason, failed: None)

    def close(self) -> None:
        self.rec.close()
        self.store.close()

    def train(self, steps: int, *, commit: int, group_version: int | None = None) -> None:
        """`steps` trainer steps of 2 groups each (reported by trainer/0), committed through `commit`."""
        lin, store = self.lineage, self.store
        trainer = self.registry.trainer()
        for _ in range(steps):
            v = lin.trainer_version
            self.hand_in(2, version=v if group_version is None else group_version)
            got = store.fetch_batch(trainer.holder(), v, 2, 100)
            assert len(got) == 2
            store.step_done(P.StepDone(ident=P.Ident(kind="trainer", index=0, incarnation=trainer.incarnation),
                                       version=v + 1, wepoch=lin.wepoch, group_ids=[g.group_id for g in got],
                                       t_start=NOW, t_end=NOW + 1, wait_s=0.0, metrics={}), trainer.holder())
            lin.stepped(v + 1)
        lin.commit(commit)

    def hand_in(self, n: int, *, version: int) -> None:
        leases = self.store.lease("rollout/0#1", n, NOW, 60)
        groups = [P.GroupMsg(group_id=uuid.uuid4().hex, item_id=x.item_id, problem_idx=x.problem_idx,
                             prompt_ids=[1], samples=[P.SampleMsg([2], [-0.1], 1.0)], version=version,
                             wepoch=self.lineage.wepoch) for x in leases]
        acc, rej = self.store.submit_groups("rollout/0#1", "rollout/0", 1, groups, NOW,
                                            trainer_version=self.lineage.trainer_version, max_staleness=100,
                                            wepoch=self.lineage.wepoch, committed=self.lineage.committed)
        assert len(acc) == n and not rej

    def persisted(self) -> dict[str, object]:
        m = self.store.get_meta
        steps = [(r["step"], r["state"]) for r in self.store.steps()]
        return {"wepoch": m("wepoch"), "epoch_bases": m("epoch_bases"), "trainer_version": m("trainer_version"),
                "committed": m("committed"), "full_restarts": m("full_restarts", 0), "steps": steps,
                "groups": sorted(tuple(r) for r in self.store.conn.execute("SELECT id, state FROM groups"))}
