"""The whole system on the real local Slurm cluster: one job per role, recovery of each fault kind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from click.testing import CliRunner

from slurm_rl.cli import cli
from tests import runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM = ("controller.host=127.0.0.1",)
LONG = "algorithm.steps=100000"


def squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return [x for x in out.split() if x]


def jobs_left(wait_s: float = 30, *, completing_ok: bool = True) -> list[str]:
    """Jobs still queued or running after a run was stopped. A job that was cancelled on a crashed
    node stays COMPLETING until Slurm declares the node down (its slurmd cannot confirm the kill):
    that is Slurm's own bookkeeping, not a job of ours still running, so it does not count unless
    `completing_ok` is False (no node was crashed). Waits up to `wait_s` for the jobs to end."""
    deadline = time.time() + wait_s
    while True:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
        left = [line.split()[0] for line in out.splitlines()
                if line.split() and (line.split()[1] != "COMPLETING" or not completing_ok)]
        if not left or time.time() > deadline:
            return left
        time.sleep(1)


@pytest.fixture
def slurm_run(tmp_path, slurm_cluster):
    slurm_cluster.reset()
    made = []

    def make(*sets, name="s", ready=True):
        run = _launch_slurm(tmp_path, name, *SLURM, *sets)
        made.append(run)
        if ready:
            runs.wait_ready(run, timeout=150)
        return run

    yield make
    for run in made:
        runs.cleanup(run)
    assert jobs_left() == []
    slurm_cluster.reset()


def _launch_slurm(tmp_path, name, *sets, config="configs/demo.yaml", fast=True):
    args = ["launch", config, "--backend", "slurm", "--name", name, "--detach",
            "--set", f"runs_dir={tmp_path}"]
    for s in (runs.FAST if fast else ()) + sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    from slurm_rl.rundir import RunDir

    return RunDir(tmp_path / name)


def recovered(run, slot):
    return runs.slot_events(run, "recovered", slot)


def test_demo_runs_on_slurm_one_job_per_role_on_distinct_nodes(slurm_run):
    run = slurm_run("algorithm.steps=20", name="demo", ready=False)
    rep = runs.wait_done(run, timeout=240)
    assert rep["state"] == "finished" and rep["steps"] == 20
    runs.assert_accounted(rep)
    jobs = runs.q(run, "SELECT slot, job_id, nodes, state FROM jobs")
    assert len({j["job_id"] for j in jobs}) == 4                      # one Slurm job per role replica
    assert len({j["nodes"] for j in jobs}) >= 3, [tuple(j) for j in jobs]
    assert jobs_left(completing_ok=False) == []                       # nothing left queued or running
    # the generated job scripts are in the run dir, readable, with our job names and --no-requeue
    scripts = sorted(run.slurm.glob("*.sbatch"))
    assert len(scripts) == 4
    text = scripts[0].read_text()
    assert "--no-requeue" in text and "slurm-rl/demo/" in text
    # the scheduler was polled in batches: squeue calls stay near one per poll, not one per job
    calls = rep["scheduler_calls"]
    assert calls.get("sbatch") == 4 and calls.get("squeue", 0) <= calls.get("sinfo", 0) + 2


def test_gsm8k_tiny_runs_on_slurm(tmp_path, slurm_cluster):
    # the real-data path (GSM8K records, chat template, math-verify, held-out eval) as Slurm jobs
    slurm_cluster.reset()
    run = _launch_slurm(tmp_path, "gsm", *SLURM, "algorithm.steps=20", config="configs/gsm8k-tiny.yaml", fast=False)
    try:
        rep = runs.wait_done(run, timeout=420)
        assert rep["state"] == "finished" and rep["steps"] == 20, rep["end_reason"]
        assert rep["backend"] == "slurm"
        # rollout/0 evaluates at each multiple of eval_every (10) from the version it starts with: 0,
        # or 10 when the trainer stepped on the other rollout's data while its engine was loading
        versions = [h["version"] for h in rep["eval"]["history"]]
        assert versions and versions[0] in (0, 10) and versions == sorted(set(versions)), rep["eval"]
        assert all(v % 10 == 0 for v in versions), rep["eval"]
        assert rep["trajectories"]["lost"] == 0 and rep["reward_errors"]["count"] == 0
        runs.assert_accounted(rep)
        jobs = runs.q(run, "SELECT job_id, nodes FROM jobs")
        assert len({j["job_id"] for j in jobs}) == 4 and len({j["nodes"] for j in jobs}) >= 3
    finally:
        runs.cleanup(run)
    assert jobs_left() == []
    slurm_cluster.reset()


def _fsdp_lab(tmp_path, name, *sets):
    return _launch_slurm(tmp_path, name, *sets, config="configs/fsdp-lab.yaml", fast=False)


def test_fsdp_lab_trainer_spans_two_nodes(tmp_path, slurm_cluster):
    slurm_cluster.reset()
    run = _fsdp_lab(tmp_path, "fsdp", "algorithm.steps=16")
    try:
        rep = runs.wait_done(run, timeout=420)
        assert rep["state"] == "finished" and rep["steps"] == 16, rep["end_reason"]
        assert rep["trainer"]["world_size"] == 2 and len(rep["trainer"]["nodes"]) == 2, rep["trainer"]
        assert rep["trajectories"]["lost"] == 0
        runs.assert_accounted(rep)
        (job,) = [j for j in runs.q(run, "SELECT slot, nodes FROM jobs") if j["slot"] == "trainer/0"]
        assert len(job["nodes"].split(",")) == 2 or "[" in job["nodes"], job["nodes"]   # one job, two nodes
    finally:
        runs.cleanup(run)
    assert jobs_left() == []
    slurm_cluster.reset()


def test_fsdp_lab_node_down_of_trainer_rank_1(tmp_path, slurm_cluster):
    slurm_cluster.reset()
    run = _fsdp_lab(tmp_path, "fsdp", "algorithm.steps=40")
    try:
        runs.wait_for(lambda: runs.committed(run) >= 6, 300, "six committed steps", run)
        res = CliRunner().invoke(cli, ["inject", str(run.path), "trainer/0", "--fault", "node-down", "--rank", "1"])
        assert res.exit_code == 0, res.output
        node = runs.events(run, "fault_injected")[-1]["node"]
        assert node, res.output
        sharing = [r["slot"] for r in runs.q(run, "SELECT slot, node FROM roles")
                   if r["node"] == node and r["slot"].startswith("rollout")]
        rep = runs.wait_done(run, timeout=600)
        assert rep["state"] == "finished" and rep["steps"] == 40, rep["end_reason"]
        assert rep["trajectories"]["lost"] == 0 and rep["restarts"]["full"] == 0
        assert rep["restarts"]["trainer"] == 1
        # no rollout restarted by the trainer's fault (only one that shared the lost node, if any)
        assert rep["restarts"]["rollout"] == len(sharing), (sharing, rep["restarts"])
        assert rep["trainer"]["world_size"] == 2 and len(rep["trainer"]["nodes"]) >= 3, rep["trainer"]
        runs.assert_accounted(rep)
    finally:
        runs.cleanup(run)
    assert jobs_left() == []
    slurm_cluster.reset()


def test_fsdp_lab_trainer_rank_crash_is_restored_on_the_trainer_shaped_standby(tmp_path, slurm_cluster):
    """spare.trainer_nodes=2 on the lab: a second 2-node job stands by with its shards built; the
    crash of trainer rank 1 hands its job to the trainer slot, and a new standby job is queued."""
    slurm_cluster.reset()
    run = _fsdp_lab(tmp_path, "fsdp", "algorithm.steps=40", "spare.replicas=0", "spare.trainer_nodes=2")
    try:
        runs.wait_for(lambda: runs.committed(run) >= 6 and runs.role(run, "trainer-spare/0")["state"] == "READY",
                      300, "six committed steps and a ready trainer-shaped standby", run)
        standby_job = runs.role(run, "trainer-spare/0")["job_id"]
        res = CliRunner().invoke(cli, ["inject", str(run.path), "trainer/0", "--fault", "crash", "--rank", "1"])
        assert res.exit_code == 0, res.output
        rep = runs.wait_done(run, timeout=600)
        assert rep["state"] == "finished" and rep["steps"] == 40, rep["end_reason"]
        assert rep["trajectories"]["lost"] == 0 and rep["restarts"]["full"] == 0
        assert rep["restarts"]["trainer"] == 1 and rep["restarts"]["rollout"] == 0
        promoted = runs.events(run, "trainer_restored")
        assert [(e["job_id"], json.loads(e["data"])["from"]) for e in promoted] == [(standby_job, "trainer-spare/0")]
        assert json.loads(runs.events(run, "trainer_restore")[-1]["data"])["staged"] == "yes"
        assert len(runs.slot_events(run, "submitted", "trainer-spare/0")) == 2      # the backfill
        assert rep["trainer"]["world_size"] == 2
        runs.assert_accounted(rep)
    finally:
        runs.cleanup(run)
    assert jobs_left() == []
    slurm_cluster.reset()


def test_rollout_node_crash_replaced_before_slurm_marks_the_node_down(slurm_run, slurm_cluster):
    run = slurm_run(LONG, "slurm.cpus_per_task=2", "spare.replicas=0")
    r1 = runs.role(run, "rollout/1")
    node = r1["node"]
    victims = [r["slot"] for r in runs.q(run, "SELECT slot, node FROM roles") if r["node"] == node]
    t = time.time()
    slurm_cluster.nodectl("crash", node)
    runs.wait_for(lambda: [e for e in runs.events(run, "dead") if e["slot"] == "rollout/1"], 30, "detection", run)
    dead = [e for e in runs.events(run, "dead") if e["slot"] == "rollout/1"][0]
    assert dead["t"] - t < 5.0, dead["msg"]             # Slurm needs ~10-19 s to call the node DOWN
    for s in victims:
        runs.wait_for(lambda s=s: runs.role(run, s)["state"] == "READY" and runs.role(run, s)["node"] != node,
                      150, f"{s} running again on another node", run)
    # READY comes first; the fault is closed ("recovered") once the replacement generates again
    runs.wait_for(lambda: recovered(run, "rollout/1"), 60, "rollout/1's fault recovered", run)
    if "trainer/0" not in victims:
        t_rec = recovered(run, "rollout/1")[0]["t"]
        during = runs.q(run, "SELECT COUNT(*) FROM steps WHERE t_end > ? AND t_end < ?", (t, t_rec))[0][0]
        assert during >= 1, "the trainer kept stepping while rollout/1 was replaced"
    sub = [json.loads(e["data"]) for e in runs.events(run, "submitted") if e["slot"] == "rollout/1"]
    assert node in sub[-1]["exclude"]                   # the replacement avoided the crashed node
    runs.stop_and_audit(run)


def test_trainer_crash_restored_from_standby_on_slurm(slurm_run):
    run = slurm_run(LONG, "slurm.cpus_per_task=2")
    runs.wait_for(lambda: runs.committed(run) >= 12, 90, "12 committed steps", run)
    before = runs.committed(run)
    t = runs.inject(run, "trainer/0", "crash")
    runs.wait_for(lambda: recovered(run, "trainer/0"), 60, "trainer restored", run)
    # the killed process ended the controller's liveness link: found before a heartbeat was missed
    # (heartbeat silence needs suspect_after_s = 1 s, the squeue poll comes every 2 s)
    dead = runs.slot_events(run, "dead", "trainer/0")[0]
    assert dead["t"] - t < 0.9, dict(dead)
    roll = json.loads(runs.events(run, "trainer_rollback")[0]["data"])
    assert roll["committed"] >= before
    assert runs.events(run, "trainer_restored")                       # promoted, not resubmitted
    restore = json.loads(runs.events(run, "trainer_restore")[-1]["data"])
    assert restore["staged"] == "yes", restore                        # the spare had built its trainer
    runs.wait_for(lambda: runs.committed(run) >= roll["committed"] + 5, 60, "training goes on", run)
    kept = [r["step"] for r in runs.q(run, "SELECT step FROM steps WHERE state != 'rolled_back' ORDER BY step")]
    assert kept == list(range(1, len(kept) + 1))
    runs.stop_and_audit(run)


def test_hang_and_exit_code_on_slurm(slurm_run):
    run = slurm_run(LONG, "slurm.cpus_per_task=2", "recovery.phase_timeouts.generating=5",
                    "recovery.phase_timeouts.idle=5", "recovery.phase_timeouts.syncing_weights=5")
    t = runs.inject(run, "rollout/0", "hang")
    runs.wait_for(lambda: recovered(run, "rollout/0"), 60, "hung rollout/0 replaced", run)
    dead = [e for e in runs.events(run, "dead") if e["slot"] == "rollout/0"][0]
    # the job's batch agent, outside the stopped step, sees the silent process stopped: dead after
    # two missed heartbeats, long before the 5-s phase timeout
    assert dead["t"] - t < 3.0 and "stopped (state T)" in dead["msg"], dict(dead)
    runs.wait_for(lambda: runs.role(run, "spare/0")["state"] == "READY", 120, "spare backfilled", run)
    runs.inject(run, "rollout/1", "exit:3")
    runs.wait_for(lambda: recovered(run, "rollout/1"), 60, "rollout/1 recovered", run)
    # the fast signals may declare it dead first; Slurm's exit code joins the record when polled
    runs.wait_for(lambda: [e for e in runs.events(run) if e["slot"] == "rollout/1"
                           and e["kind"] in ("dead", "job_ended") and "exit 3" in e["msg"]], 10, "exit 3 recorded", run)
    runs.stop_and_audit(run)


def test_drain_and_controller_restart_on_slurm(slurm_run, slurm_cluster):
    run = slurm_run(LONG, "slurm.cpus_per_task=2")
    node = runs.role(run, "trainer/0")["node"]
    runs.inject(run, "trainer/0", "drain")
    runs.wait_for(lambda: runs.events(run, "moved"), 90, "the trainer moved off the draining node", run)
    runs.wait_for(lambda: runs.role(run, "trainer/0")["state"] == "READY"
                  and runs.role(run, "trainer/0")["node"] != node, 60, "trainer on another node", run)
    assert not [e for e in runs.events(run, "dead") if e["slot"] == "trainer/0"]
    assert not runs.events(run, "trainer_rollback")                   # graceful: nothing to undo
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
    # the controller dies; the role jobs keep running; resume re-attaches to them
    jobs = {r["slot"]: r["job_id"] for r in runs.q(run, "SELECT slot, job_id FROM roles")}
    os.kill(runs.controller_pid(run), signal.SIGKILL)
    runs.wait_for(lambda: runs.controller_pid(run) is None, 10, "controller gone")
    time.sleep(2)
    assert set(jobs.values()) <= set(squeue_ids())
    res = CliRunner().invoke(cli, ["resume", str(run.path), "--detach"])
    assert res.exit_code == 0, res.output
    before = runs.committed(run)
    runs.wait_for(lambda: runs.committed(run) >= before + 5, 60, "training goes on after resume", run)
    assert {r["slot"]: r["job_id"] for r in runs.q(run, "SELECT slot, job_id FROM roles")} == jobs
    runs.stop_and_audit(run)


def test_slurm_preflight_errors(tmp_path, slurm_cluster):
    r = CliRunner()
    res = r.invoke(cli, ["launch", "configs/demo.yaml", "--backend", "slurm", "--set", f"runs_dir={tmp_path}",
                         "--set", "slurm.partition=nosuch"])
    assert res.exit_code == 2 and "nosuch" in res.output and "main" in res.output
    env = dict(os.environ, PATH="/usr/local/nonexistent")
    res = r.invoke(cli, ["launch", "configs/demo.yaml", "--backend", "slurm", "--set", f"runs_dir={tmp_path}"],
                   env=env)
    assert res.exit_code == 3 and "sbatch" in res.output
    assert not list(tmp_path.iterdir())                               # nothing created
