"""The detect room with a multi-rank trainer: ranks > 0 only heartbeat, and the policy sees the role
as alive as its weakest rank (real liveness listeners and links, no processes)."""

from __future__ import annotations

import time
from pathlib import Path

from slurm_rl import protocol as P
from slurm_rl.config import RunConfig
from slurm_rl.controller.context import Context
from slurm_rl.controller.detect import Detector
from slurm_rl.controller.faults import Faults
from slurm_rl.controller.registry import Registry
from slurm_rl.controller.weights import Lineage
from slurm_rl.liveness import LivenessListener
from slurm_rl.rundir import RunDir
from slurm_rl.states import NodeHealth, RoleState
from slurm_rl.store import Store


def _rooms(tmp_path: Path) -> tuple[Registry, Detector]:
    cfg = RunConfig.model_validate({"trainer": {"nodes": 2, "ranks_per_node": 1}, "spare": {"replicas": 0}})
    ctx = Context(RunDir(tmp_path), cfg, Store(tmp_path / "state.db"), None)  # type: ignore[arg-type]  (no jobs here)
    registry = Registry(ctx)
    registry.create()
    faults = Faults(ctx, registry)
    lineage = Lineage(ctx, registry, faults)
    return registry, Detector(ctx, registry, lineage, faults, lambda: None)


def test_the_trainer_is_as_alive_as_its_weakest_rank(tmp_path: Path) -> None:
    registry, detect = _rooms(tmp_path)
    trainer = registry.trainer()
    ident = P.Ident("trainer", 0, trainer.incarnation)
    l0, l1 = LivenessListener("127.0.0.1"), LivenessListener("127.0.0.1")
    try:
        t0 = time.time()
        detect.hello(trainer, P.Hello(ident=ident, job_id="J", node="n1", pid=10, host_id="h", sync_addrs={},
                                      live_addr=l0.address, world_size=2, rdzv="127.0.0.1:1234"), t0)
        detect.rank_hello(trainer, P.Hello(ident=ident, job_id="J", node="n2", pid=11, host_id="h", sync_addrs={},
                                           live_addr=l1.address, rank=1, world_size=2), t0)
        assert trainer.world_size == 2 and trainer.rdzv == "127.0.0.1:1234" and trainer.nodes() == ["n1", "n2"]
        # rank 0 keeps beating, rank 1 went quiet at t0: the role's last heartbeat is rank 1's
        detect.seen(trainer, t0 + 5)
        hb = detect.view(committed=0, full_restarts=0, node_failures={}, excluded=set(), restarting=False,
                         stopping=False)
        tv = next(s for s in hb.slots if s.slot == "trainer/0")
        assert tv.last_hb == t0 and tv.shape == (2, 1) and hb.trainer_shape == (2, 1)
        detect.rank_heartbeat(trainer, P.Heartbeat(ident=ident, phase="waiting_for_data", progress=0, version=0,
                                                   wepoch=0, rank=1, live_addr=l1.address), t0 + 5)
        # rank 1's node is DOWN: so is the role's
        detect.node_health = {"n1": NodeHealth.OK, "n2": NodeHealth.DOWN}
        v = detect.view(committed=0, full_restarts=0, node_failures={}, excluded=set(), restarting=False,
                        stopping=False)
        tv = next(s for s in v.slots if s.slot == "trainer/0")
        assert tv.last_hb == t0 + 5 and tv.node_health is NodeHealth.DOWN
        # rank 1's process ends: its link closes, which the role's view shows
        l1.close()
        deadline = time.time() + 5
        while trainer.ranks[1].link_lost_at is None and time.time() < deadline:
            time.sleep(0.02)
            detect.drain()
        assert trainer.ranks[1].link_lost_at is not None and trainer.link_lost_at is None
        v = detect.view(committed=0, full_restarts=0, node_failures={}, excluded=set(), restarting=False,
                        stopping=False)
        assert next(s for s in v.slots if s.slot == "trainer/0").link_lost_at == trainer.ranks[1].link_lost_at
        assert trainer.state is RoleState.STARTING
    finally:
        l0.close()
        detect.close()


def test_a_completing_job_keeps_the_nodes_it_ran_on(tmp_path: Path) -> None:
    """A multi-node job that is COMPLETING lists only the nodes still completing (Slurm's squeue);
    the jobs table keeps the allocation it ran on."""
    from slurm_rl.backends.base import JobStatus, Snapshot
    from slurm_rl.states import JobState

    registry, detect = _rooms(tmp_path)
    trainer = registry.trainer()
    trainer.job_id = "7"
    detect.ctx.store.record_job("7", trainer.name, trainer.incarnation, "slurm", "PENDING", time.time())
    try:
        def poll(state: JobState, *nodes: str) -> str:
            detect.snapshot(Snapshot(jobs={"7": JobStatus("7", state, nodes)}, nodes={}))
            (row,) = detect.ctx.store.jobs()
            return row["nodes"]

        assert not poll(JobState.PENDING)
        assert poll(JobState.RUNNING, "n1", "n2") == "n1,n2"
        assert poll(JobState.COMPLETING, "n1") == "n1,n2"
        assert poll(JobState.COMPLETED, "n1") == "n1,n2"
    finally:
        detect.close()


def test_a_sharded_trainer_is_listed_as_parts_and_relays_say_their_count(tmp_path: Path) -> None:
    """The WeightsInfo a puller gets: a 2-rank trainer's ranks as part_holders (part r from rank r),
    not as a whole holder; a rollout that relays the parts is a holder, and the parts count is
    what holders said (so a trainer re-formed at another size still finds the old count)."""
    registry, detect = _rooms(tmp_path)
    lin = detect.lineage
    trainer = registry.trainer()
    ident = P.Ident("trainer", 0, trainer.incarnation)
    l0, l1, l2 = (LivenessListener("127.0.0.1") for _ in range(3))
    try:
        t0 = time.time()
        detect.hello(trainer, P.Hello(ident=ident, job_id="J", node="n1", pid=10, host_id="h1",
                                      sync_addrs={"tcp": "tcp://n1:1"}, live_addr=l0.address, world_size=2,
                                      rdzv="127.0.0.1:1234"), t0)
        detect.rank_hello(trainer, P.Hello(ident=ident, job_id="J", node="n2", pid=11, host_id="h2",
                                           sync_addrs={"tcp": "tcp://n2:1"}, live_addr=l1.address, rank=1,
                                           world_size=2), t0)
        lin.held(trainer, 0, 0, None, 2)
        w = lin.info()
        assert w.holders == [] and w.parts == 2
        assert w.part_holders == [{"tcp": "tcp://n1:1"}, {"tcp": "tcp://n2:1"}] and w.part_hosts == ["h1", "h2"]
        rollout = registry.slots["rollout/0"]
        rident = P.Ident("rollout", 0, rollout.incarnation)
        detect.hello(rollout, P.Hello(ident=rident, job_id="R", node="n3", pid=12, host_id="h3",
                                      sync_addrs={"tcp": "tcp://n3:1"}, live_addr=l2.address), t0)
        detect.heartbeat(rollout, P.Heartbeat(ident=rident, phase="generating", progress=1, version=0, wepoch=0,
                                              sync_addrs={"tcp": "tcp://n3:1"}, live_addr=l2.address, parts=2), t0)
        w = lin.info(for_slot=trainer)
        assert w.holders == [{"tcp": "tcp://n3:1"}] and w.parts == 2
        # the trainer is gone, the rollout holds a version of a 4-rank trainer (a resume at another
        # size): its count stands, not the configured shape's (2)
        trainer.reset_runtime()
        detect.heartbeat(rollout, P.Heartbeat(ident=rident, phase="generating", progress=2, version=0, wepoch=0,
                                              live_addr=l2.address, parts=4), t0 + 1)
        w = lin.info()
        assert w.holders == [{"tcp": "tcp://n3:1"}] and w.parts == 4 and w.part_holders == []
    finally:
        for lst in (l0, l1, l2):
            lst.close()
        detect.close()


def test_a_restored_trainer_is_loaded_when_it_publishes_even_before_a_ready_heartbeat(tmp_path: Path) -> None:
    """The MTTR split of a trainer fault: its load ends when the new trainer publishes the restored
    version. A fast restore can commit its first step before any heartbeat said it was ready; the
    load must still be recorded, and a later ready heartbeat must not move it."""
    registry, detect = _rooms(tmp_path)
    trainer = registry.trainer()
    store = detect.ctx.store
    trainer.fault_ids = [store.open_fault(trainer.name, "hang", "n1", True, time.time())]
    ident = P.Ident("trainer", 0, trainer.incarnation)
    live = LivenessListener("127.0.0.1")
    try:
        t0 = time.time()
        detect.hello(trainer, P.Hello(ident=ident, job_id="J", node="n1", pid=10, host_id="h", sync_addrs={},
                                      live_addr=live.address), t0)
        detect.lineage.trainer_version = 8                 # the committed step it was restored at
        detect.lineage.held(trainer, 8, 0, None)           # the restored version, published
        (row,) = store.faults()
        assert row["t_scheduled"] is not None and row["t_loaded"] is not None
        assert row["t_scheduled"] <= row["t_loaded"] <= row["t_synced"]
        loaded = row["t_loaded"]
        time.sleep(0.01)
        detect.heartbeat(trainer, P.Heartbeat(ident=ident, phase="stepping", progress=1, version=8, wepoch=0,
                                              live_addr=live.address), time.time())
        (row,) = store.faults()
        assert row["t_loaded"] == loaded
    finally:
        live.close()
        detect.close()
