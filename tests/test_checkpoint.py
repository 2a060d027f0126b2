"""Checkpoints under damage: truncated, corrupted, half-written, on a full disk.

Units on `Checkpointer` (a restore skips a damaged checkpoint and says which; a failed save is a
result, never an exception in the trainer or a dead writer thread), then end to end: a trainer
restored from checkpoints after the newest one was corrupted, and a run whose checkpoint disk
fills up (a tiny tmpfs mounted over the run's checkpoints directory) keeps training.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from slurm_rl.checkpoint import Checkpointer
from slurm_rl.cli import cli
from tests import runs


def weights(seed: int, n: int = 1000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, generator=g), "b": torch.randn(7, generator=g)}


def opt_state(step: int) -> dict[str, object]:
    return {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.full((10,), float(step))}},
            "param_groups": [{"lr": 1e-3}]}


@pytest.fixture
def ck(tmp_path):
    c = Checkpointer(tmp_path / "ck", keep=5)
    for step in (10, 20, 30):
        res = c.save(step, weights(step), opt_state(step), {"wepoch": 0})
        assert res.path is not None and res.error == ""
    yield c
    c.close()


def d(c: Checkpointer, step: int) -> Path:
    return c.root / f"step-{step:06d}"


def newest(c: Checkpointer, at_most: int | None = None) -> tuple[int | None, list[str]]:
    best, skipped = c.newest_valid(at_most)
    return (best.step if best else None), skipped


# ----------------------------------------------------------------------------- restore side
def test_intact_checkpoints_roundtrip(ck):
    assert ck.steps() == [10, 20, 30]
    assert newest(ck) == (30, [])
    assert newest(ck, at_most=25) == (20, [])
    assert torch.equal(ck.load_weights(20)["w"], weights(20)["w"])
    assert float(ck.load_optimizer(20)["state"][0]["step"]) == 20.0
    assert ck.meta(30)["wepoch"] == 0


def test_truncated_weights_fall_back_to_the_previous_checkpoint(ck):
    f = d(ck, 30) / "weights.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    step, skipped = newest(ck)
    assert step == 20
    assert len(skipped) == 1 and "step 30" in skipped[0] and "truncated" in skipped[0]


def test_a_flipped_bit_is_found_by_the_checksum(ck):
    f = d(ck, 30) / "optimizer.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01                      # same size, one bit wrong
    f.write_bytes(bytes(data))
    step, skipped = newest(ck)
    assert step == 20 and "checksum" in skipped[0]


@pytest.mark.parametrize("damage", ["delete_weights", "delete_meta", "empty_meta", "truncated_meta",
                                    "meta_not_json", "meta_dir"])
def test_missing_or_unreadable_parts_fall_back(ck, damage):
    cd = d(ck, 30)
    if damage == "delete_weights":
        (cd / "weights.safetensors").unlink()
    elif damage == "delete_meta":
        (cd / "meta.json").unlink()
    elif damage == "empty_meta":
        (cd / "meta.json").write_text("")
    elif damage == "truncated_meta":
        m = (cd / "meta.json").read_text()
        (cd / "meta.json").write_text(m[: len(m) // 2])
    elif damage == "meta_not_json":
        (cd / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "meta_dir":
        (cd / "meta.json").unlink()
        (cd / "meta.json").mkdir()
    step, skipped = newest(ck)
    assert step == 20, skipped
    assert len(skipped) == 1 and skipped[0].startswith("step 30")


def test_several_damaged_checkpoints_are_all_reported_newest_first(ck):
    for step in (30, 20):
        f = d(ck, step) / "weights.safetensors"
        f.write_bytes(b"")
    step, skipped = newest(ck)
    assert step == 10
    assert [s.split(":")[0] for s in skipped] == ["step 30", "step 20"]


def test_nothing_usable_is_none_with_every_reason(ck):
    for step in ck.steps():
        (d(ck, step) / "optimizer.pt").write_bytes(b"x")
    step, skipped = newest(ck)
    assert step is None and len(skipped) == 3


def test_half_written_and_foreign_entries_are_ignored(tmp_path):
    root = tmp_path / "ck"
    root.mkdir()
    (root / "step-000050.tmp").mkdir()                 # a crash mid-write
    (root / "step-000050.tmp" / "weights.safetensors").write_bytes(b"partial")
    (root / "step-abc").mkdir()                        # not ours
    (root / "step-000060").write_text("a file, not a directory")
    c = Checkpointer(root, keep=3)
    try:
        assert not (root / "step-000050.tmp").exists()     # cleaned up on start
        assert c.steps() == []
        assert newest(c) == (None, [])
        assert c.save(70, weights(70), opt_state(70), {}).path is not None
        assert c.steps() == [70]
    finally:
        c.close()


# meta.json that is valid JSON of the wrong shape: what a bit flip in a key or a bracket makes of it
@pytest.mark.parametrize("meta", ["[]", "null", "7", '{"files": []}', '{"files": {"weights.safetensors": 5}}',
                                  '{"step": 30, "fiLes": {}}', '{"step": 30, "files": {}}'])
def test_meta_of_the_wrong_shape_is_a_damaged_checkpoint(ck, meta):
    (d(ck, 30) / "meta.json").write_text(meta)
    step, skipped = newest(ck)                         # must not raise
    assert step == 20 and len(skipped) == 1, skipped


def test_prune_keeps_the_newest(tmp_path):
    c = Checkpointer(tmp_path / "ck", keep=2)
    try:
        for step in (1, 2, 3, 4):
            c.save(step, weights(step), opt_state(step), {})
        assert c.steps() == [3, 4]
    finally:
        c.close()


# ----------------------------------------------------------------------------- full disk
def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system: room for a few small checkpoints, not for a big one."""
    path = tmp_path / "disk"
    _mount_tmpfs(path, "256k")
    yield path
    _umount(path)


def test_a_full_disk_fails_the_save_not_the_caller(small_disk):
    c = Checkpointer(small_disk, keep=5)
    try:
        assert c.save(1, weights(1, 100), opt_state(1), {}).path is not None      # small: fits
        res = c.save(2, weights(2, 200_000), opt_state(2), {})                    # 800 KB: does not
        assert res.path is None and "space" in res.error.lower(), res
        assert c.steps() == [1] and newest(c) == (1, [])                          # the old one is intact
        assert not list(small_disk.glob("*.tmp"))                                 # and no debris left
    finally:
        c.close()


def test_async_saves_report_a_full_disk_and_go_on_when_space_returns(small_disk):
    c = Checkpointer(small_disk, keep=1)
    try:
        c.save_async(5, weights(5, 200_000), opt_state(5), {})
        c.wait(timeout_s=5)
        assert c.pending == 0, "the writer thread never finished the failed save"
        res = c.done.get(timeout=1)
        assert res.step == 5 and res.path is None and res.error
        c.save_async(6, weights(6, 100), opt_state(6), {})       # small enough: the writer must still be there
        c.wait(timeout_s=5)
        res = c.done.get(timeout=1)
        assert res.step == 6 and res.path is not None
    finally:
        c.close()


# ----------------------------------------------------------------------------- end to end
pytest_slow = pytest.mark.slow


def _checkpoint_steps(run) -> list[int]:
    # in place only: not one being written (.tmp), moved aside (.old) or set aside (.undone)
    return sorted(int(p.name.split("-")[1]) for p in run.checkpoints.glob("step-*")
                  if p.is_dir() and p.name.split("-")[1].isdigit())


def _freeze_at_committed_checkpoint(run) -> int:
    """SIGSTOP the trainer (stopped when inject returns: no newer checkpoint appears; run with
    recovery.process_state=false, so it is not declared dead before the crash that follows), let
    what it sent before be heard, and return the newest checkpoint at or below the committed step:
    the one a restore looks at first (one written just before the stop may lie above it)."""
    runs.inject(run, "trainer/0", "hang")
    time.sleep(0.5)
    c = runs.committed(run)
    return max(s for s in _checkpoint_steps(run) if s <= c)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), max(1, len(data) // 8)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest_slow
def test_trainer_restores_past_a_corrupted_newest_checkpoint(tmp_path):
    """No spare and one rollout: the rollout becomes the trainer, restores its optimizer state from
    checkpoints, finds the newest corrupted, says so, uses the previous one, and training goes on."""
    run = runs.launch(tmp_path, "algorithm.steps=100000", "spare.replicas=0", "rollout.replicas=1",
                      "trainer.checkpoint_every=5", "trainer.keep_checkpoints=4",
                      "recovery.phase_timeouts.stepping=30", "recovery.process_state=false", name="ckc")
    try:
        runs.wait_ready(run)
        runs.wait_for(lambda: len([s for s in _checkpoint_steps(run) if s <= runs.committed(run)]) >= 2, 90,
                      "two committed checkpoints", run)
        victim = _freeze_at_committed_checkpoint(run)
        _corrupt(run.checkpoints / f"step-{victim:06d}" / "optimizer.pt")
        runs.inject(run, "trainer/0", "crash")
        runs.wait_for(lambda: [e for e in runs.events(run, "recovered") if e["slot"] == "trainer/0"], 60,
                      "trainer restored", run)
        fb = runs.events(run, "checkpoint_fallback")
        assert fb and f"step {victim}" in fb[0]["msg"] and "checksum" in fb[0]["msg"], [tuple(e) for e in fb]
        restore = runs.events(run, "trainer_restore")[-1]
        assert int(json.loads(restore["data"])["optimizer_step"]) < victim
        resumed = int(json.loads(restore["data"])["step"])
        runs.wait_for(lambda: runs.committed(run) >= resumed + 10, 90, "10 more steps", run)
        res = CliRunner().invoke(cli, ["stop", str(run.path)])
        assert res.exit_code == 0, res.output
        rep = runs.wait_done(run)
        runs.assert_accounted(rep)
        runs.assert_no_prompt_done_twice(run)
    finally:
        runs.cleanup(run)
    assert runs.run_processes(run) == []


@pytest_slow
def test_full_restart_past_a_corrupted_newest_checkpoint(tmp_path):
    """Full-restart policy: weights AND optimizer must come from checkpoints. The newest one is
    corrupted, so the run must restart from the one before it and train on."""
    run = runs.launch(tmp_path, "algorithm.steps=100000", "recovery.policy=full-restart", "spare.replicas=0",
                      "rollout.replicas=1", "trainer.checkpoint_every=5", "trainer.keep_checkpoints=4",
                      "recovery.max_full_restarts=4", "recovery.phase_timeouts.stepping=30",
                      "recovery.process_state=false", name="ckf")
    try:
        runs.wait_ready(run)
        runs.wait_for(lambda: len(_checkpoint_steps(run)) >= 3, 90, "three checkpoints", run)
        # every one from the newest committed up is damaged, so whichever the restart looks at
        # first must fail verification
        victim = _freeze_at_committed_checkpoint(run)
        for step in [s for s in _checkpoint_steps(run) if s >= victim]:
            _corrupt(run.checkpoints / f"step-{step:06d}" / "weights.safetensors")
        runs.inject(run, "trainer/0", "crash")
        runs.wait_for(lambda: runs.events(run, "full_restart"), 30, "the full restart", run)
        restart = runs.events(run, "full_restart")[0]
        assert int(json.loads(restart["data"])["step"]) < victim, restart["msg"]
        runs.wait_for(lambda: runs.meta(run, "run_state") != "running" or runs.committed(run) >= victim + 5, 150,
                      "training past the corrupted checkpoint", run)
        assert runs.meta(run, "run_state") == "running", runs.meta(run, "end_reason")
        assert runs.events(run, "checkpoint_fallback")
    finally:
        runs.cleanup(run)
    assert runs.run_processes(run) == []


@pytest_slow
def test_full_checkpoint_disk_in_a_live_run(tmp_path):
    """A tiny tmpfs over the run's checkpoints dir: saves fail with an event, training goes on;
    once the disk is back, checkpoints are written again."""
    run = runs.launch(tmp_path, "algorithm.steps=100000", "trainer.checkpoint_every=5", name="ckd")
    mounted = False
    try:
        runs.wait_ready(run)
        runs.wait_for(lambda: runs.events(run, "checkpoint"), 60, "a first checkpoint", run)
        _mount_tmpfs(run.checkpoints, "200k")         # smaller than one checkpoint (~500 KB)
        mounted = True
        c0 = runs.committed(run)
        runs.wait_for(lambda: runs.events(run, "checkpoint_failed"), 30, "a checkpoint_failed event", run)
        runs.wait_for(lambda: runs.committed(run) >= c0 + 20, 60, "20 more steps on a full disk", run)
        n_ok = len(runs.events(run, "checkpoint"))
        _umount(run.checkpoints)
        mounted = False
        runs.wait_for(lambda: len(runs.events(run, "checkpoint")) > n_ok, 30, "checkpoints again", run)
        assert all(r["state"] == "READY" for r in runs.q(run, "SELECT state FROM roles"))
        assert not runs.events(run, "dead")
        res = CliRunner().invoke(cli, ["stop", str(run.path)])
        assert res.exit_code == 0, res.output
        runs.assert_accounted(runs.wait_done(run))
    finally:
        if mounted:
            _umount(run.checkpoints)
        runs.cleanup(run)
    assert runs.run_processes(run) == []


def test_the_controller_verifies_checkpoints_without_importing_torch(tmp_path):
    """Importing torch costs a process ~200 MB; the controller only hashes files and reads meta.
    (The soak found the controller jumping from 54 to 258 MiB at its first checkpoint fallback.)"""
    import subprocess
    import sys

    code = ("import sys\n"
            "import slurm_rl.controller.__main__, slurm_rl.controller.loop\n"
            "from slurm_rl import checkpoint\n"
            f"checkpoint.newest_valid(__import__('pathlib').Path({str(tmp_path)!r}), None)\n"
            "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
