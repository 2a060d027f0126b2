"""Final-answer extraction, math-verify rewards, user rewards and how their failures are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_rl.errors import BadInput
from slurm_rl.rl.reward import (
    RewardScorer,
    answers_match,
    final_answer,
    load_reward,
    math_reward,
    resolve_reward_spec,
)


@pytest.mark.parametrize(("completion", "expected"), [
    ("First 3 apples, then 4 more: 3 + 4 = 7", "7"),              # the last number, not the first
    ("so 40 + 2 = 42 #### 42", "42"),
    ("#### 1,000 and 3 more words 5", "1,000"),                     # after the last ####
    ("I think \\boxed{5}, no wait: \\boxed{\\frac{1}{2}} is it, 9", "\\frac{1}{2}"),  # the last \boxed wins
    ("x = -3.5", "-3.5"),
    ("no number", None),
    ("", None),
])
def test_final_answer(completion: str, expected: str | None) -> None:
    assert final_answer(completion) == expected


@pytest.mark.parametrize(("gold", "pred", "ok"), [
    ("7", "7.0", True), ("1000", "1,000", True), ("7", "77", False), ("-3", "3", False),
    ("\\frac{1}{2}", "0.5", True), ("\\frac{3}{4}", "\\dfrac{3}{4}", True), ("\\sqrt{2}", "\\sqrt 2", True),
    ("x^2+1", "1+x^2", True), ("18", "\\$18", True), ("\\frac{1}{2}", "\\frac{1}{3}", False),
])
def test_answers_are_verified_with_math_verify(gold: str, pred: str, ok: bool) -> None:
    assert answers_match(gold, pred) is ok


def test_math_reward_reads_the_final_answer() -> None:
    rec = {"id": "a", "prompt": "Tom has 3 and gets 4", "answer": "7"}
    assert math_reward("", "Tom has 3, gets 4, so 7", rec) == 1.0
    assert math_reward("", "7 is wrong, it is 3", rec) == 0.0        # never the first number of a chain
    assert math_reward("", "The answer is $\\boxed{7}$.", rec) == 1.0
    assert math_reward("", "nothing", rec) == 0.0
    assert math_reward("", "\\boxed{0.75}", {"answer": "\\frac{3}{4}"}) == 1.0


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "my_reward.py"
    p.write_text(body)
    return p


def test_a_user_reward_from_a_file_or_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "def score(prompt, completion, record):\n    return float(record['answer'] in completion)\n")
    fn = load_reward(resolve_reward_spec("my_reward.py:score", tmp_path))
    assert fn("p", "it is 7", {"answer": "7"}) == 1.0
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward("my_reward:score")("p", "8", {"answer": "7"}) == 0.0
    assert load_reward("math") is math_reward
    assert resolve_reward_spec("pkg.mod:f") == "pkg.mod:f"
    assert resolve_reward_spec("r/x.py:f", tmp_path) == f"{tmp_path}/r/x.py:f"


@pytest.mark.parametrize(("body", "spec", "match"), [
    (None, "no_such_module_xyz:f", r"cannot import no_such_module_xyz: ModuleNotFoundError"),
    ("raise RuntimeError('boom at import')\n", "FILE:f", r"cannot import .*RuntimeError: boom at import"),
    ("x = 1\n", "FILE:f", r"has no attribute 'f'"),
    ("f = 3\n", "FILE:f", r"is not a function"),
    ("def f(a):\n    return 1\n", "FILE:f", r"cannot be called as reward\(prompt, completion, record\)"),
    (None, "justaname", r"is not a reward"),
    (None, "missing.py:f", r"no file"),
])
def test_reward_that_cannot_load_is_bad_input(tmp_path: Path, body: str | None, spec: str, match: str) -> None:
    if body is not None:
        spec = spec.replace("FILE", str(_write(tmp_path, body)))
    with pytest.raises(BadInput, match=match) as e:
        load_reward(spec)
    assert e.value.exit_code == 2


def test_a_failing_reward_scores_zero_and_is_counted() -> None:
    def flaky(prompt: str, completion: str, record: dict) -> float:
        if record["id"] == "bad":
            raise KeyError("solution")
        return {"nan": float("nan"), "str": "1"}.get(record["id"], 0.5)  # type: ignore[return-value]

    s = RewardScorer(flaky)
    assert [s("p", "c", {"id": i}) for i in ("ok", "bad", "nan", "str", "bad")] == [0.5, 0.0, 0.0, 0.0, 0.0]
    assert s.failures == 4 and s.calls == 5
    errors = s.take_errors()
    assert [rid for rid, _ in errors] == ["bad", "nan", "str", "bad"]
    assert "KeyError" in errors[0][1] and "not a finite number" in errors[1][1]
    assert s.take_errors() == [] and s.failures == 4
