"""A checkpoint whose files verify but whose optimizer state does not load (issue 17).

Verification compares each file with the size and hash in meta.json; a file written to match (a
hostile optimizer.pt holding code, or one from a writer that pickled more than plain data) or
damaged with its meta made to agree verifies, and then `torch.load(weights_only=True)` refuses it
or fails. The restored trainer must fall back to an older checkpoint's optimizer state (or a fresh
one) with an event naming the checkpoint and why, not die on it again and again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import runs
from tests.rl.test_checkpoint_load_safe import _Payload, _rehash
from tests.test_checkpoint import _checkpoint_steps, _freeze_at_committed_checkpoint

pytest_slow = pytest.mark.slow


def _hostile(d: Path, marker: Path) -> None:
    torch.save({"optimizer": _Payload(marker), "version": 5}, d / "optimizer.pt")


def _truncated(d: Path, marker: Path) -> None:
    p = d / "optimizer.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _one_restore_then_stop(run) -> None:
    """The injected hang and crash are one fault each (of the same process): no further trainer
    fault, no crash loop, no full restart; then the run stops with nothing lost."""
    kinds = [f["kind"] for f in runs.q(run, "SELECT kind FROM faults WHERE slot='trainer/0' ORDER BY id")]
    assert kinds == ["hang", "crash"], kinds
    assert not runs.events(run, "full_restart")
    rep = runs.stop_and_audit(run)
    assert rep["restarts"]["trainer"] == 1, rep["restarts"]


# a checkpoint every 5 steps, 4 kept; a frozen trainer (SIGSTOP) is not judged hung before the crash follows
_FROZEN_AT_CHECKPOINTS = ("algorithm.steps=100000", "spare.replicas=0", "trainer.checkpoint_every=5",
                          "trainer.keep_checkpoints=4", "recovery.phase_timeouts.stepping=30",
                          "recovery.process_state=false")


def _crash_onto_a_damaged_checkpoint(run, damage, marker: Path, *, timeout: float) -> tuple[int, dict]:
    """Two committed checkpoints, then the trainer frozen at the newest committed one, that one's
    optimizer state damaged and rehashed (it verifies), the trainer crashed: once restored, the
    fallback event names it and the restore used an older optimizer state. (victim, restore data)."""
    runs.wait_ready(run)
    runs.wait_for(lambda: len([s for s in _checkpoint_steps(run) if s <= runs.committed(run)]) >= 2, 2 * timeout,
                  "two committed checkpoints", run)
    victim = _freeze_at_committed_checkpoint(run)
    d = run.checkpoints / f"step-{victim:06d}"
    damage(d, marker)
    _rehash(d)                                  # it verifies
    runs.inject(run, "trainer/0", "crash")
    runs.wait_for(lambda: runs.slot_events(run, "recovered", "trainer/0"), timeout, "trainer restored", run)
    fb = [e for e in runs.events(run, "checkpoint_fallback") if f"checkpoint {victim}" in e["msg"]]
    assert fb and "optimizer" in fb[0]["msg"], [tuple(e) for e in runs.events(run, "checkpoint_fallback")]
    restore = json.loads(runs.events(run, "trainer_restore")[-1]["data"])
    assert int(restore["optimizer_step"]) < victim, restore
    return victim, restore


@pytest_slow
@pytest.mark.parametrize("damage", [_hostile, _truncated], ids=["hostile", "truncated"])
def test_an_unloadable_optimizer_state_falls_back_to_an_older_checkpoint(tmp_path, damage):
    """No spare, one rollout: the rollout becomes the trainer with the weights it holds and the
    optimizer state of the newest checkpoint at or below the committed step, which verifies but does
    not load: it takes the one before it, says so, and trains on (one trainer fault, not a loop)."""
    run = runs.launch(tmp_path, *_FROZEN_AT_CHECKPOINTS, "rollout.replicas=1", name="cku")
    marker = tmp_path / "ran"
    try:
        victim, restore = _crash_onto_a_damaged_checkpoint(run, damage, marker, timeout=60)
        resumed = int(restore["step"])
        runs.wait_for(lambda: runs.committed(run) >= resumed + 10, 90, "10 more steps", run)
        _one_restore_then_stop(run)
    finally:
        runs.cleanup(run)
    assert not marker.exists()
    assert runs.run_processes(run) == []


@pytest_slow
def test_a_full_restart_onto_an_unloadable_optimizer_state_trains_on_and_replaces_it(tmp_path):
    """Full-restart policy: the controller restarts from the newest checkpoint at or below the
    committed step (its hashes are fine); the new trainer takes its weights, an older optimizer
    state, and writes that step's checkpoint again, so a second restart would find one that loads."""
    from slurm_rl.checkpoint import load_plain

    run = runs.launch(tmp_path, "algorithm.steps=100000", "recovery.policy=full-restart", "spare.replicas=0",
                      "rollout.replicas=1", "trainer.checkpoint_every=5", "trainer.keep_checkpoints=4",
                      "recovery.max_full_restarts=4", "recovery.phase_timeouts.stepping=30",
                      "recovery.process_state=false", name="ckr")
    marker = tmp_path / "ran"
    try:
        runs.wait_ready(run)
        runs.wait_for(lambda: len([s for s in _checkpoint_steps(run) if s <= runs.committed(run)]) >= 2, 90,
                      "two committed checkpoints", run)
        # every one from the newest committed up: whichever the restart takes does not load
        victim = _freeze_at_committed_checkpoint(run)
        for step in [s for s in _checkpoint_steps(run) if s >= victim]:
            d = run.checkpoints / f"step-{step:06d}"
            _hostile(d, marker)
            _rehash(d)
        runs.inject(run, "trainer/0", "crash")
        runs.wait_for(lambda: runs.events(run, "full_restart"), 30, "the full restart", run)
        start = int(json.loads(runs.events(run, "full_restart")[0]["data"])["step"])
        assert start >= victim
        runs.wait_for(lambda: runs.meta(run, "run_state") != "running" or runs.committed(run) >= start + 10, 120,
                      "10 steps after the restart", run)
        assert runs.meta(run, "run_state") == "running", runs.meta(run, "end_reason")
        assert len(runs.events(run, "full_restart")) == 1
        fb = [e for e in runs.events(run, "checkpoint_fallback") if f"checkpoint {start} does not load" in e["msg"]]
        assert fb, [tuple(e) for e in runs.events(run, "checkpoint_fallback")]
        # written again by the restored trainer (or pruned by later saves): none left that does not load
        for step in _checkpoint_steps(run):
            load_plain(run.checkpoints / f"step-{step:06d}" / "optimizer.pt")
        runs.stop_and_audit(run)
    finally:
        runs.cleanup(run)
    assert not marker.exists()
    assert runs.run_processes(run) == []


@pytest_slow
def test_a_two_rank_trainer_falls_back_past_optimizer_shards_that_do_not_load(tmp_path):
    """The sharded trainer's restore (a collective): the ranks pull their parts of the committed
    version from the rollouts, then the newest checkpoint's optimizer state, which verifies but is
    refused on every rank; all ranks agree to take the one before it, say so, and train on."""
    from slurm_rl.checkpoint import load_plain

    run = runs.launch(tmp_path, *_FROZEN_AT_CHECKPOINTS, "trainer.ranks_per_node=2", name="cks")
    marker = tmp_path / "ran"
    try:
        victim, restore = _crash_onto_a_damaged_checkpoint(run, _hostile, marker, timeout=120)
        d = run.checkpoints / f"step-{victim:06d}"
        assert restore["weights"].startswith("live holders"), restore
        resumed = int(restore["step"])
        runs.wait_for(lambda: runs.committed(run) >= resumed + 6, 120, "6 more steps", run)
        if resumed == victim:
            # the resume step's checkpoint was the unusable one: written again, it loads now
            runs.wait_for(lambda: load_plain(d / "optimizer.pt").get("layout") == "dcp", 60, "rewritten", run)
        _one_restore_then_stop(run)
    finally:
        runs.cleanup(run)
    assert not marker.exists()
