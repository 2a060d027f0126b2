"""Parsers on real recorded Slurm output (tests/slurm/data) and on hand-made edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_rl.slurm import parse
from slurm_rl.slurm.parse import SlurmOutputError
from slurm_rl.states import JobState, NodeHealth

DATA = Path(__file__).parent / "data"


def read(name: str) -> str:
    return (DATA / name).read_text()


def by_case(records):
    """Recorded jobs are named slurm-rl/rec/<case>/0; ids change when re-recorded, names do not."""
    out = {}
    for r in records:
        out.setdefault(r.name.split("/")[2], []).append(r)
    return out


# ------------------------------------------------------------------------------------ node lists
@pytest.mark.parametrize("text, expected", [
    ("n[1-3,5]", ("n1", "n2", "n3", "n5")),
    ("gpu-[01-04]", ("gpu-01", "gpu-02", "gpu-03", "gpu-04")),
    ("a1,b[2-3]", ("a1", "b2", "b3")),
    ("n4", ("n4",)),
    ("n[8-10]", ("n8", "n9", "n10")),
    ("r[1-2]-n[01-02]", ("r1-n01", "r1-n02", "r2-n01", "r2-n02")),
    ("n[1-2],n2,n3", ("n1", "n2", "n3")),
    ("node[001-003,010]", ("node001", "node002", "node003", "node010")),
    ("", ()), ("None assigned", ()), ("(null)", ()),
])
def test_expand_nodelist(text, expected):
    assert parse.expand_nodelist(text) == expected


@pytest.mark.parametrize("bad", ["n[1-3", "n1-3]", "n[a-b]", "n[5-1]", "n[1-99999999]", "n[]"])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(SlurmOutputError):
        parse.expand_nodelist(bad)


# ------------------------------------------------------------------------------------ exit codes
@pytest.mark.parametrize("text, code, sig", [
    ("3:0", 3, None), ("0:9", None, 9), ("0:0", 0, None), ("0:15", None, 15), ("2:9", 2, 9),
    ("", None, None), ("garbage", None, None),
])
def test_parse_exit_code(text, code, sig):
    info = parse.parse_exit_code(text)
    assert (info.exit_code, info.signal) == (code, sig)


@pytest.mark.parametrize("text, code, sig", [("768", 3, None), ("9", None, 9), ("0", 0, None),
                                             ("15", None, 15), ("", None, None), ("N/A", None, None)])
def test_parse_wait_status(text, code, sig):
    info = parse.parse_wait_status(text)
    assert (info.exit_code, info.signal) == (code, sig)


@pytest.mark.parametrize("text, state", [
    ("RUNNING", JobState.RUNNING), ("CANCELLED by 0", JobState.CANCELLED), ("CANCELLED+", JobState.CANCELLED),
    ("NODE_FAIL", JobState.NODE_FAIL), ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY), ("PD", JobState.PENDING),
    ("CG", JobState.COMPLETING), ("REQUEUE_HOLD", JobState.REQUEUED), ("STOPPED", JobState.SUSPENDED),
    ("SOMETHING_NEW", JobState.UNKNOWN), ("", JobState.UNKNOWN),
])
def test_parse_job_state(text, state):
    assert parse.parse_job_state(text) is state


@pytest.mark.parametrize("state, health", [
    ("idle", NodeHealth.OK), ("mixed", NodeHealth.OK), ("allocated", NodeHealth.OK), ("idle~", NodeHealth.OK),
    ("mix-", NodeHealth.OK), ("completing", NodeHealth.OK), ("idle#", NodeHealth.OK),
    ("drain", NodeHealth.DRAIN), ("drained", NodeHealth.DRAIN), ("draining", NodeHealth.DRAIN),
    ("drng", NodeHealth.DRAIN), ("mixed+drain", NodeHealth.DRAIN), ("idle+drain", NodeHealth.DRAIN),
    ("down", NodeHealth.DOWN), ("down*", NodeHealth.DOWN), ("fail", NodeHealth.DOWN),
    ("failing", NodeHealth.DOWN), ("mixed*", NodeHealth.DOWN), ("drained*", NodeHealth.DOWN),
    ("down+drain", NodeHealth.DOWN), ("mixed+not_responding", NodeHealth.DOWN), ("DOWN+DRAIN", NodeHealth.DOWN),
    ("unknown", NodeHealth.UNKNOWN), ("future", NodeHealth.UNKNOWN), ("", NodeHealth.UNKNOWN),
    ("brand_new_state", NodeHealth.UNKNOWN),
])
def test_node_health(state, health):
    assert parse.node_health(state) is health


# ------------------------------------------------------------------------------------ squeue
def test_squeue_recorded_running_and_finished():
    cases = by_case(parse.parse_squeue(read("squeue_mixed.txt")))
    running = cases["running"][0].to_status()
    assert running.state is JobState.RUNNING and running.nodes == ("n1",)
    assert running.exit_code is None and running.signal is None   # exit status only once ended
    exit3 = cases["exit3"][0].to_status()
    assert (exit3.state, exit3.exit_code, exit3.signal) == (JobState.FAILED, 3, None)
    kill9 = cases["kill9"][0].to_status()
    assert (kill9.state, kill9.exit_code, kill9.signal) == (JobState.FAILED, None, 9)
    done = cases["completed"][0].to_status()
    assert (done.state, done.exit_code) == (JobState.COMPLETED, 0)
    cancelled = cases["cancelled"][0]
    assert cancelled.state is JobState.CANCELLED and cancelled.exit.signal == 15   # squeue's raw SIGTERM...
    # ...is Slurm's doing, not the role's
    assert (cancelled.to_status().exit_code, cancelled.to_status().signal) == (None, None)
    pending = cases["pending"][0].to_status()
    assert pending.state is JobState.PENDING and pending.nodes == () and "ReqNodeNotAvail" in pending.reason


def test_squeue_recorded_het_job_ids():
    het = by_case(parse.parse_squeue(read("squeue_mixed.txt")))["het"]
    ids = sorted(r.job_id for r in het)
    leader = ids[0].split("+")[0]
    assert ids == [f"{leader}+0", f"{leader}+1"]
    assert {r.raw_id for r in het if r.job_id.endswith("+0")} == {leader}
    statuses = parse.statuses(het)
    assert statuses[leader].job_id == f"{leader}+0"   # asking for the leader's id finds component 0


def test_squeue_recorded_node_fail_timeout_requeue():
    cases = by_case(parse.parse_squeue(read("squeue_final.txt")))
    nf = cases["nodefail"][0].to_status()
    assert nf.state is JobState.NODE_FAIL and nf.reason == "NodeDown" and nf.nodes == ("n4",)
    to = cases["timeout"][0].to_status()
    assert to.state is JobState.TIMEOUT and to.reason == "TimeLimit"
    assert cases["requeued"][0].state is JobState.PENDING   # a --requeue job went back to the queue
    assert by_case(parse.parse_squeue(read("squeue_requeued.txt")))["requeued"][0].state is JobState.PENDING


def test_squeue_truncated_line_is_skipped_not_indexerror():
    text = read("squeue_mixed.txt")
    truncated = text + "99|99|RUNN"                      # output cut mid-line
    assert len(parse.parse_squeue(truncated)) == len(parse.parse_squeue(text))


def test_squeue_garbage_raises_backend_error():
    with pytest.raises(SlurmOutputError, match="squeue"):
        parse.parse_squeue("JOBID PARTITION NAME USER ST\n  12 main foo root R\n")


def test_squeue_empty():
    assert parse.parse_squeue("") == []


# ------------------------------------------------------------------------------------ sacct
def test_sacct_recorded_final_states():
    cases = by_case(parse.parse_sacct(read("sacct_final.txt")))
    st = {k: v[0].to_status() for k, v in cases.items() if len(v) == 1}
    assert (st["exit3"].state, st["exit3"].exit_code, st["exit3"].signal) == (JobState.FAILED, 3, None)
    assert (st["kill9"].state, st["kill9"].exit_code, st["kill9"].signal) == (JobState.FAILED, None, 9)
    assert (st["completed"].state, st["completed"].exit_code) == (JobState.COMPLETED, 0)
    assert st["cancelled"].state is JobState.CANCELLED and "by 0" in st["cancelled"].reason
    assert st["timeout"].state is JobState.TIMEOUT
    assert st["nodefail"].state is JobState.NODE_FAIL and st["nodefail"].nodes == ("n4",)
    assert (st["nodefail"].exit_code, st["nodefail"].signal) == (None, None)   # not the role's 0:0
    assert st["pending"].state is JobState.PENDING and st["pending"].nodes == ()
    assert st["running"].exit_code is None    # 0:0 of a running job means nothing yet
    assert sorted(r.job_id.split("+")[1] for r in cases["het"]) == ["0", "1"]


def test_sacct_steps_are_skipped():
    with_steps = parse.parse_sacct(read("sacct_with_steps.txt"))
    allocations = parse.parse_sacct(read("sacct_final.txt"))
    assert sorted(r.job_id for r in with_steps) == sorted(r.job_id for r in allocations)
    assert all("." not in r.job_id for r in with_steps)


def test_sacct_out_of_memory_handwritten():
    # Hand-written sample (see data/README.md): the lab has no cgroups, so no real OOM kill.
    (rec,) = parse.parse_sacct(read("sacct_oom_handwritten.txt"))
    st = rec.to_status()
    assert st.state is JobState.OUT_OF_MEMORY and st.state.terminal and st.nodes == ("gpu-03",)
    assert st.signal == 125                  # what task/cgroup clusters record for the OOM kill


def test_sacct_columns_found_by_name_and_pipe_in_name():
    text = "State|JobID|ExitCode|JobName\nFAILED|12|3:0|weird|name\n"
    (rec,) = parse.parse_sacct(text)
    assert (rec.job_id, rec.state, rec.exit.exit_code, rec.name) == ("12", JobState.FAILED, 3, "weird|name")


def test_sacct_without_header_is_a_clear_error():
    with pytest.raises(SlurmOutputError, match="JobID"):
        parse.parse_sacct("12|12|FAILED|3:0|n1|None|x\n")


def test_sacct_truncated_last_line_skipped():
    text = read("sacct_final.txt")
    assert len(parse.parse_sacct(text + "77|77|RUNN")) == len(parse.parse_sacct(text))


# ------------------------------------------------------------------------------------ sinfo
def nodes_of(name: str) -> dict[str, parse.SinfoRecord]:
    return {r.name: r for r in parse.parse_sinfo(read(name))}


def test_sinfo_recorded_drain():
    nodes = nodes_of("sinfo_drain.txt")
    assert nodes["n1"].health is NodeHealth.OK
    assert nodes["n2"].health is NodeHealth.DRAIN and nodes["n2"].state == "allocated+drain"
    assert nodes["n2"].reason == "slurm-rl test: drain with a job"
    assert nodes["n3"].reason == "maintenance | disk"          # a "|" inside the free-text reason
    drained = nodes_of("sinfo_drained.txt")["n3"]
    assert (drained.health, drained.state_long) == (NodeHealth.DRAIN, "drained")


def test_sinfo_recorded_crash_not_responding_then_down():
    early = nodes_of("sinfo_not_responding.txt")["n4"]
    assert early.health is NodeHealth.DOWN and early.state_long.endswith("*")
    down = nodes_of("sinfo_down.txt")["n4"]
    st = down.to_status()
    assert (st.health, st.reason) == (NodeHealth.DOWN, "Not responding")
    assert st.state == "down+not_responding"


def test_sinfo_node_in_two_partitions_once_and_bad_lines():
    text = "n1|idle|idle|none\nn1|idle|idle|none\nn2|mixed+drain|draining|x\ngarbage\nn3|idl"
    recs = parse.parse_sinfo(text)
    assert [r.name for r in recs] == ["n1", "n2"]
    with pytest.raises(SlurmOutputError, match="sinfo"):
        parse.parse_sinfo("PARTITION AVAIL TIMELIMIT NODES STATE NODELIST\n")


def test_partitions_and_sbatch_id():
    names, default = parse.parse_partitions(read("sinfo_partitions.txt"))
    assert default in names and names
    assert parse.parse_partitions("cpu\ngpu*\ncpu\n") == (["cpu", "gpu"], "gpu")
    assert parse.parse_partitions("a\nb\n") == (["a", "b"], None)
    assert parse.parse_sbatch_job_id("123\n") == "123"
    assert parse.parse_sbatch_job_id("123;cluster2\n") == "123"
    with pytest.raises(SlurmOutputError):
        parse.parse_sbatch_job_id("Submitted batch job 123")


def test_join_nodes_sorted_unique():
    assert parse.join_nodes(["n3", "n1", "n3", " "]) == "n1,n3"


def test_squeue_and_sacct_agree_on_finished_jobs():
    # the watcher takes a final state from squeue while slurmctld holds the job, from sacct after:
    # both must tell the controller the same thing
    sq = {k: v[0].to_status() for k, v in by_case(parse.parse_squeue(read("squeue_final.txt"))).items()}
    sa = {k: v[0].to_status() for k, v in by_case(parse.parse_sacct(read("sacct_final.txt"))).items()}
    finished = [k for k in sq if sq[k].state.terminal and k != "het"]
    assert {"exit3", "kill9", "completed", "cancelled", "timeout", "nodefail"} <= set(finished)
    for k in finished:
        a, b = sq[k], sa[k]
        assert (a.state, a.exit_code, a.signal, a.nodes) == (b.state, b.exit_code, b.signal, b.nodes), k
