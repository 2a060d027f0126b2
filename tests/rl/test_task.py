"""The arithmetic task, the JSONL problem files and the exact-answer reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_rl.data.records import load_problems
from slurm_rl.errors import BadInput
from slurm_rl.rl.task import (
    Problem,
    encode_prompts,
    extract_answer,
    format_prompt,
    generate_arithmetic,
    gold_answer,
    reward,
    write_jsonl,
)


def test_generated_answers_are_correct_and_reproducible() -> None:
    probs = generate_arithmetic(200, seed=3, ops=("+", "-", "*"), max_operand=12)
    assert probs == generate_arithmetic(200, seed=3, ops=("+", "-", "*"), max_operand=12)
    assert probs != generate_arithmetic(200, seed=4, ops=("+", "-", "*"), max_operand=12)
    for p in probs:
        assert p.prompt.endswith("=")
        assert int(p.answer) == eval(p.prompt[:-1])  # noqa: S307 - our own digits-and-ops text
    assert len({p.id for p in probs}) == 200


def test_max_answer_and_modulo() -> None:
    small = generate_arithmetic(300, seed=0, max_answer=9)
    assert all(0 <= int(p.answer) <= 9 for p in small)
    assert {p.answer for p in small} == {str(i) for i in range(10)}
    mod = generate_arithmetic(50, seed=0, modulo=10)
    for p in mod:
        a, b = p.prompt[1:].split(")")[0].split("+")
        assert p.prompt == f"({a}+{b})%10=" and int(p.answer) == (int(a) + int(b)) % 10
    with pytest.raises(BadInput, match="max_answer"):
        generate_arithmetic(5, seed=0, min_operand=5, max_answer=3)
    with pytest.raises(BadInput, match="unknown ops"):
        generate_arithmetic(5, seed=0, ops=("/",))


def test_jsonl_roundtrip_keeps_extra_fields(tmp_path: Path) -> None:
    probs = generate_arithmetic(5, seed=1) + [Problem(id="x", prompt="2*3=", answer="6", meta={"level": 2})]
    path = write_jsonl(probs, tmp_path / "sub" / "p.jsonl")
    assert load_problems(path) == probs
    assert json.loads(path.read_text().splitlines()[-1]) == {"level": 2, "id": "x", "prompt": "2*3=", "answer": "6"}


def test_gsm8k_shaped_file(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(
        json.dumps({"question": "Tom has 40 apples and buys 2. How many?", "answer": "40 + 2 = 42\n#### 42"})
        + "\n\n"
        + json.dumps({"prompt": "1+1=", "answer": 2})
        + "\n"
    )
    p1, p2 = load_problems(path)
    assert (p1.id, p2.id) == ("gsm8k:1", "gsm8k:3")  # default id: file stem and line
    assert p2.answer == "2"
    assert reward("So she has #### 42", p1.answer) == 1.0
    assert reward("42", p1.answer) == 1.0
    assert reward("40 + 2 = 42", p1.answer) == 0.0  # first number is 40
    assert reward("2", p2.answer) == 1.0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": "4"\n', r"p\.jsonl:2: not valid JSON"),
        ('{"prompt": "1+1="}\n', r"p\.jsonl:1: missing key 'answer'"),
        ('\n{"answer": "2"}\n', r"p\.jsonl:2: missing key 'prompt'"),
        ('["1+1=", "2"]\n', r"p\.jsonl:1: expected a JSON object"),
        ('{"prompt": "", "answer": "2"}\n', r"p\.jsonl:1: field 'prompt' \(the prompt\) must be"),
        ('{"prompt": "a", "answer": [2]}\n', r"p\.jsonl:1: field 'answer' \(the answer\) must be"),
        ('{"id": 1, "prompt": "a", "answer": 1}\n{"id": 1, "prompt": "b", "answer": 2}\n', r"p\.jsonl:2: duplicate id"),
        ("", r"p\.jsonl: no problems in it"),
        ("\n  \n", r"p\.jsonl: no problems in it"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(BadInput, match=match) as e:
        load_problems(path)
    assert e.value.exit_code == 2


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        load_problems(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("7", "7", 1.0),
        ("7+", "7", 1.0),  # the first number is the answer; what follows is not read
        (" 7", "7", 1.0),
        ("+7", "7", 1.0),
        ("7.0", "7", 1.0),
        ("77", "7", 0.0),
        ("-7", "7", 0.0),
        ("7.5", "7", 0.0),
        ("", "7", 0.0),
        ("=+ ", "7", 0.0),  # format without the number earns nothing
        ("3 then 7", "7", 0.0),
        ("-3", "-3", 1.0),
        ("1,000", "1000", 1.0),
        ("work... #### 1,000", "#### 1000", 1.0),
        ("#### 12 and 13", "12", 1.0),
        ("12 #### 13", "12", 0.0),  # a marker decides: the last one wins
        ("Paris\nmore", "Paris", 1.0),  # non-numeric gold: exact first line
        ("paris", "Paris", 0.0),
    ],
)
def test_reward_rule(completion: str, answer: str, expected: float) -> None:
    assert reward(completion, answer) == expected


def test_answer_helpers() -> None:
    assert gold_answer("a\n#### 5 ") == "5"
    assert extract_answer("x 12 y 13") == "12"
    assert extract_answer("none") is None


def test_prompt_formatting(tiny_model: Path) -> None:
    from slurm_rl.rl.model import load_tokenizer

    p = Problem(id="a", prompt="3+4=", answer="7")
    assert format_prompt(p) == "3+4="
    assert format_prompt(p, "Q: {prompt}") == "Q: 3+4="
    tok = load_tokenizer(tiny_model)
    (ids,) = encode_prompts(tok, [p])
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == "3+4="
