"""The metrics sink: JSONL and TensorBoard event files read back, wandb offline, failures contained,
and no torch in the process (the controller calls it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from slurm_rl.config import load_config
from slurm_rl.metrics import MetricsSink


def _cfg(*sets: str):
    return load_config(None, list(sets), name="m")


def _scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb))
    ea.Reload()
    return {tag: [(e.step, round(e.value, 6)) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_steps_and_evals_reach_jsonl_and_tensorboard(tmp_path: Path) -> None:
    with MetricsSink(tmp_path, _cfg()) as sink:
        sink.log(1, {"reward_mean": 0.25, "loss": -0.5, "note": "not a number"})
        sink.log(2, {"reward_mean": 0.5, "loss": float("nan")})
        sink.log_eval({"version": "0", "wepoch": "0", "pass_at_1": "0.125", "reward_mean": "0.2", "n": "32"})
        sink.log(2, {"reward_mean": 0.75})                       # a step redone after a trainer restore
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("eval", 0), ("train", 2)]
    assert rows[0]["reward_mean"] == 0.25 and "note" not in rows[0] and "loss" not in rows[1]
    assert rows[2] == {**rows[2], "pass_at_1": 0.125, "n": 32.0} and "version" not in rows[2]
    s = _scalars(tmp_path / "tb")
    assert s["train/reward_mean"] == [(1, 0.25), (2, 0.5), (2, 0.75)]
    assert s["train/loss"] == [(1, -0.5)]
    assert s["eval/pass_at_1"] == [(0, 0.125)] and s["eval/reward_mean"] == [(0, 0.2)]


def test_a_resumed_sink_appends(tmp_path: Path) -> None:
    for step in (1, 2):
        with MetricsSink(tmp_path, _cfg()) as sink:
            sink.log(step, {"reward_mean": step / 10})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    # one event file per sink: two opened within one second are read back in either order
    assert sorted(_scalars(tmp_path / "tb")["train/reward_mean"]) == [(1, 0.1), (2, 0.2)]


def test_backends_can_be_switched_off(tmp_path: Path) -> None:
    with MetricsSink(tmp_path, _cfg("logging.tensorboard=false", "logging.jsonl=false")) as sink:
        sink.log(1, {"x": 1.0})
    assert not (tmp_path / "tb").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_a_failing_backend_is_switched_off_and_the_rest_go_on(tmp_path: Path) -> None:
    sink = MetricsSink(tmp_path, _cfg())
    sink._jsonl.close()                                         # e.g. the disk went away under it
    sink.log(1, {"x": 1.0})                                     # no exception
    sink.log(2, {"x": 2.0})
    sink.close()
    assert _scalars(tmp_path / "tb")["train/x"] == [(1, 1.0), (2, 2.0)]
    assert MetricsSink(tmp_path / "missing-dir", _cfg())._jsonl is None   # cannot open: off, no exception


def test_wandb_offline_needs_no_network(tmp_path: Path) -> None:
    with MetricsSink(tmp_path, _cfg("logging.wandb=true", "logging.wandb_mode=offline")) as sink:
        assert sink._wandb is not None
        sink.log(1, {"reward_mean": 0.5})
        sink.log_eval({"version": "0", "pass_at_1": "0.1"})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_the_sink_does_not_import_torch(tmp_path: Path) -> None:
    code = ("import sys\nfrom slurm_rl.config import load_config\nfrom slurm_rl.metrics import MetricsSink\n"
            f"s = MetricsSink({str(tmp_path)!r}, load_config(None, name='m'))\ns.log(1, {{'x': 1.0}})\ns.close()\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
