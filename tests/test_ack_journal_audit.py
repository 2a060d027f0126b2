"""The loss audit reads the rollouts' ack journals: a cut final line is not an ack; bad bytes never crash it."""

from slurm_rl.report import acked_group_ids
from slurm_rl.rundir import RunDir


def _run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "r")
    run.acks.mkdir(parents=True)
    return run


def test_a_truncated_final_line_is_not_an_ack(tmp_path):
    run = _run(tmp_path)
    (run.acks / "1.2.log").write_bytes(b"g-1\ng-2\ng-3")       # crash while writing g-3's line
    assert acked_group_ids(run) == {"g-1", "g-2"}


def test_non_utf8_bytes_cost_only_their_line(tmp_path):
    run = _run(tmp_path)
    (run.acks / "1.2.log").write_bytes(b"g-1\n\xff\xfe\ng-2\n")
    (run.acks / "1.3.log").write_bytes(b"g-9\n")
    assert acked_group_ids(run) == {"g-1", "g-2", "g-9"}
