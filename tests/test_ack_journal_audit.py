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


def _journal(run: RunDir):
    from types import SimpleNamespace

    from slurm_rl.roles.rollout import AckJournal

    return AckJournal(SimpleNamespace(run=run, job_id="7"))   # type: ignore[arg-type]


def test_a_disk_that_fills_mid_line_leaves_no_partial_line_and_says_so(tmp_path, monkeypatch):
    """ENOSPC shows as a short write first (os.write returns fewer bytes), then as an error. A partial
    line must not stay: the next ack would be glued to it, a group id no store has (a false `lost`)."""
    import errno
    import os

    import pytest

    from slurm_rl.roles import rollout

    run = _run(tmp_path)
    j = _journal(run)
    j.write(["g-1"])
    real = os.write
    calls = []

    def filling(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[:3])                    # the disk fills after 3 bytes
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rollout.os, "write", filling)
    with pytest.raises(rollout.AckJournalError, match="ack journal.*No space left"):
        j.write(["g-2", "g-3"])
    monkeypatch.setattr(rollout.os, "write", real)
    j.write(["g-4"])                                     # space again (a retry, or the audit after)
    assert acked_group_ids(run) == {"g-1", "g-4"}


def test_a_failed_journal_write_is_the_rollouts_fault_not_a_silent_crash(tmp_path, monkeypatch):
    """The groups were stored before the controller's answer (the ack); the rollout stops with an
    error naming the journal (the worker reports it as the role's failure: a fault, recovered)."""
    import errno

    import pytest

    from slurm_rl import protocol as P
    from slurm_rl.roles import rollout

    run = _run(tmp_path)
    j = _journal(run)

    def enospc(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rollout.os, "write", enospc)
    rt = type("RT", (), {"call": lambda self, msg, **kw: P.Reply(accepted=["g-1"]), "ident": None})()
    with pytest.raises(rollout.AckJournalError, match=str(run.acks)):
        rollout._hand_in(rt, j, [])
