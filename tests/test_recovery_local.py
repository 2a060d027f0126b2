"""Role-based recovery on the local backend: every fault kind, injected into a real run."""

from __future__ import annotations

import os
import signal
import time

import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from tests import runs

pytestmark = pytest.mark.slow

LONG = "algorithm.steps=100000"


@pytest.fixture
def run_factory(tmp_path):
    made = []

    def make(*sets, name="r"):
        run = runs.launch(tmp_path, LONG, *sets, name=name)
        made.append(run)
        runs.wait_ready(run)
        return run

    yield make
    for run in made:
        runs.cleanup(run)
        assert runs.run_processes(run) == []


def recovered(run, slot):
    return runs.slot_events(run, "recovered", slot)


def test_rollout_crash_is_replaced_by_the_warm_spare(run_factory):
    run = run_factory()
    old_job = runs.role(run, "rollout/1")["job_id"]
    spare_job = runs.role(run, "spare/0")["job_id"]
    t = runs.inject(run, "rollout/1", "crash")
    runs.wait_for(lambda: recovered(run, "rollout/1"), 30, "rollout/1 generating again", run)
    dead = runs.events(run, "dead")[0]
    # found before a heartbeat is even missed: the liveness link ends, or the 0.2-s job poll sees it
    assert dead["slot"] == "rollout/1" and dead["t"] - t < 0.9, dict(dead)
    runs.wait_for(lambda: runs.role(run, "rollout/1")["job_id"] == spare_job, 10, "flush")
    assert runs.role(run, "rollout/1")["job_id"] != old_job
    runs.wait_for(lambda: runs.role(run, "spare/0")["state"] == "READY", 90, "spare/0 backfilled", run)
    rep = runs.stop_and_audit(run)
    f = rep["faults"][0]
    assert f["slot"] == "rollout/1" and f["kind"] == "crash" and f["recover_s"] < 10
    assert rep["restarts"]["rollout"] == 1 and rep["restarts"]["trainer"] == 0


def test_trainer_keeps_stepping_while_a_rollout_is_replaced_without_spare(run_factory):
    run = run_factory("spare.replicas=0")
    t = runs.inject(run, "rollout/0", "crash")
    runs.wait_for(lambda: recovered(run, "rollout/0"), 90, "rollout/0 replaced by a new job", run)
    t_rec = recovered(run, "rollout/0")[0]["t"]
    during = runs.q(run, "SELECT COUNT(*) FROM steps WHERE t_end > ? AND t_end < ? AND state != 'rolled_back'",
                    (t, t_rec))[0][0]
    assert during >= 3, f"trainer took {during} steps during the {t_rec - t:.1f}s recovery"
    submitted = [e for e in runs.events(run, "submitted") if e["slot"] == "rollout/0"]
    assert len(submitted) == 2                                           # initial + replacement
    runs.stop_and_audit(run)


def test_trainer_crash_restored_from_standby_at_committed_step(run_factory):
    run = run_factory()
    runs.wait_for(lambda: runs.committed(run) >= 15, 90, "15 committed steps", run)
    before = runs.committed(run)
    spare_job = runs.role(run, "spare/0")["job_id"]
    runs.inject(run, "trainer/0", "crash")
    runs.wait_for(lambda: recovered(run, "trainer/0"), 30, "trainer restored", run)
    restore = runs.events(run, "trainer_rollback")[0]
    import json
    resumed_at = json.loads(restore["data"])["committed"]
    assert resumed_at >= before                                          # nothing committed is lost
    runs.wait_for(lambda: runs.role(run, "trainer/0")["job_id"] == spare_job, 5,
                  "the warm spare's job to hold trainer/0", run)
    # the spare built its trainer while standing by: the promotion reused it (the weights are the
    # spare's own, or, when its eager pull was a step behind the fast demo trainer, a live holder's)
    data = json.loads(runs.events(run, "trainer_restore")[-1]["data"])
    assert data["staged"] == "yes", data
    assert data["weights"] in ("weights already held by this standby", "a live holder"), data
    # where the restore's time went, for the MTTR split of `report` (the trainer was staged: no build)
    split = {k: float(data[k]) for k in ("build_s", "verify_s", "weights_s", "optimizer_s")}
    assert all(v >= 0 for v in split.values()) and sum(split.values()) <= float(data["restore_s"]) + 0.01, data
    runs.wait_for(lambda: runs.committed(run) >= resumed_at + 5, 60, "5 more steps", run)
    # steps go on from the committed one: never back past it
    kept = [r["step"] for r in runs.q(run, "SELECT step FROM steps WHERE state != 'rolled_back' ORDER BY step")]
    assert kept == list(range(1, len(kept) + 1))
    runs.stop_and_audit(run)


def test_hung_rollout_is_found_stopped_as_soon_as_it_is_suspect(run_factory):
    run = run_factory()
    t = runs.inject(run, "rollout/0", "hang")
    runs.wait_for(lambda: recovered(run, "rollout/0"), 30, "hung rollout replaced", run)
    dead = [e for e in runs.events(run, "dead") if e["slot"] == "rollout/0"][0]
    # two heartbeats missed and its process seen stopped: no need to wait 10 s
    assert dead["t"] - t < 2.0 and "stopped (state T)" in dead["msg"], dict(dead)
    runs.stop_and_audit(run)


def test_hung_rollout_is_found_by_its_phase_timeout(run_factory):
    # without the process state, only the silence tells: the phase timeout (4 s here)
    run = run_factory("recovery.phase_timeouts.generating=4", "recovery.phase_timeouts.idle=4",
                      "recovery.phase_timeouts.syncing_weights=4", "recovery.process_state=false")
    t = runs.inject(run, "rollout/0", "hang")
    runs.wait_for(lambda: [e for e in runs.events(run, "suspect") if e["slot"] == "rollout/0"], 10, "suspect", run)
    runs.wait_for(lambda: recovered(run, "rollout/0"), 30, "hung rollout replaced", run)
    dead = [e for e in runs.events(run, "dead") if e["slot"] == "rollout/0"][0]
    # within its phase timeout, not before: 4 s of silence counted from the last heartbeat, which
    # may precede the SIGSTOP by one heartbeat interval (0.25 s)
    assert 3.7 <= dead["t"] - t < 8.0, dead["msg"]
    assert "timeout" in dead["msg"]
    runs.stop_and_audit(run)


def test_exit_code_fault_is_recovered(run_factory):
    run = run_factory()
    runs.inject(run, "rollout/1", "exit:3")
    runs.wait_for(lambda: recovered(run, "rollout/1"), 30, "rollout/1 recovered", run)
    runs.wait_for(lambda: [e for e in runs.events(run) if e["slot"] == "rollout/1"
                           and e["kind"] in ("dead", "job_ended") and "exit 3" in e["msg"]], 10, "exit 3 recorded", run)
    runs.stop_and_audit(run)


def test_drain_moves_the_role_gracefully(run_factory):
    run = run_factory()
    node = runs.role(run, "rollout/0")["node"]
    runs.inject(run, "rollout/0", "drain")
    runs.wait_for(lambda: runs.events(run, "moved") or runs.events(run, "promoted"), 30, "the move", run)
    runs.wait_for(lambda: runs.role(run, "rollout/0")["state"] == "READY"
                  and runs.role(run, "rollout/0")["node"] != node, 30, "rollout/0 on another node", run)
    assert runs.events(run, "move_started")
    assert not [e for e in runs.events(run, "dead") if e["slot"] == "rollout/0"]   # planned, not a failure
    assert [e for e in runs.events(run, "goodbye") if e["slot"] == "rollout/0"]
    rep = runs.stop_and_audit(run)
    assert rep["restarts"]["rollout"] == 0


def test_node_down_takes_every_role_on_it_and_all_come_back(run_factory):
    run = run_factory("local.nodes=3")       # 4 roles on 3 nodes: one node holds two roles
    nodes = {}
    for r in runs.q(run, "SELECT slot, node FROM roles"):
        nodes.setdefault(r["node"], []).append(r["slot"])
    node, slots = max(nodes.items(), key=lambda kv: len(kv[1]))
    runs.inject(run, slots[0], "node-down")
    for s in slots:
        runs.wait_for(lambda s=s: runs.role(run, s)["state"] == "READY" and runs.role(run, s)["node"] != node,
                      120, f"{s} back on another node", run)
    assert {e["slot"] for e in runs.events(run, "dead")} >= set(slots)
    runs.stop_and_audit(run)


def test_controller_kill_and_resume_keeps_the_roles(run_factory):
    run = run_factory()
    jobs = {r["slot"]: (r["job_id"], r["incarnation"]) for r in runs.q(run, "SELECT * FROM roles")}
    pid = runs.controller_pid(run)
    os.kill(pid, signal.SIGKILL)
    runs.wait_for(lambda: runs.controller_pid(run) is None, 10, "controller gone")
    time.sleep(3)                                          # roles carry on without it
    workers = [p for p in runs.run_processes(run) if "roles.worker" in " ".join(p.cmdline())]
    assert len(workers) == 4
    res = CliRunner().invoke(cli, ["resume", str(run.path), "--detach"])
    assert res.exit_code == 0, res.output
    before = runs.committed(run)
    runs.wait_for(lambda: runs.committed(run) >= before + 5, 60, "training goes on after resume", run)
    after = {r["slot"]: (r["job_id"], r["incarnation"]) for r in runs.q(run, "SELECT * FROM roles")}
    assert after == jobs                                   # re-attached, nothing restarted
    assert runs.events(run, "controller_resumed")
    assert not runs.events(run, "dead")
    runs.stop_and_audit(run)


def test_hung_trainer_is_the_only_casualty(run_factory):
    """Rollouts pulling weights from a trainer that hangs must not be taken for hung themselves."""
    run = run_factory("recovery.phase_timeouts.stepping=4", "recovery.phase_timeouts.publishing=4",
                      "recovery.phase_timeouts.waiting_for_data=4", "recovery.phase_timeouts.syncing_weights=4",
                      "recovery.phase_timeouts.generating=4", "recovery.phase_timeouts.idle=4")
    runs.wait_for(lambda: runs.committed(run) >= 5, 60, "5 steps", run)
    runs.inject(run, "trainer/0", "hang")
    runs.wait_for(lambda: recovered(run, "trainer/0"), 40, "hung trainer replaced", run)
    time.sleep(6)                                         # longer than every phase timeout
    assert {e["slot"] for e in runs.events(run, "dead")} == {"trainer/0"}
    runs.stop_and_audit(run)


def test_chaos_mode_injects_its_plan_mid_step_and_every_fault_is_recovered(run_factory):
    from slurm_rl.config import ChaosConfig
    from slurm_rl.controller import chaos

    sets = ("chaos.enabled=true", "chaos.mean_interval_steps=6", "chaos.seed=2", "chaos.kinds=[crash]",
            "chaos.roles=[rollout]", "chaos.start_after_steps=3")
    run = run_factory(*sets)
    plan = chaos.schedule(ChaosConfig(enabled=True, mean_interval_steps=6, seed=2, kinds=["crash"],
                                      roles=["rollout"], start_after_steps=3), 100000)
    runs.wait_for(lambda: len(runs.events(run, "fault_injected")) >= 3, 120, "three chaos faults", run)
    # chaos goes on meanwhile: wait for the first three faults themselves to be recovered
    runs.wait_for(lambda: runs.q(run, "SELECT COUNT(*) FROM faults WHERE id <= 3 AND t_recovered IS NOT NULL")[0][0]
                  == 3, 60, "the first three faults recovered", run)
    injected = runs.events(run, "fault_injected")[:3]
    for e, f in zip(injected, plan, strict=False):
        # step f.at_step was done before the fault, step f.at_step + 1 only after it (it came mid-step)
        done_before = runs.q(run, "SELECT MAX(step) m FROM steps WHERE t_end <= ?", (e["t"],))[0]["m"]
        assert done_before is not None and done_before >= f.at_step, (done_before, f)
    rep = runs.stop_and_audit(run)
    assert len(rep["faults"]) >= 3 and all(x["t_recovered"] for x in rep["faults"][:3])
