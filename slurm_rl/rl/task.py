"""Verifiable arithmetic prompts, the `Problem` record, and the exact-answer reward.

A problem file is JSON Lines, one object per line, in GSM8K shape:

    {"prompt": "3+4=", "answer": "7", "id": "arith-0-0"}

`prompt` (or GSM8K's own `question`, MATH's `problem`) and `answer` (or `solution`) are
required; `id` is optional (the default is `<file stem>:<line>`); any other field is kept in
`Problem.meta` and written back. An answer may carry GSM8K's worked solution or MATH's
`\\boxed{}` one: `Problem.answer` is then the gold answer alone and the full text is kept as
`meta["solution"]` (readers of every format: slurm_rl.data.records).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from slurm_rl.errors import BadInput

# A number as people and GSM8K write it: optional minus, digits with thousands commas,
# optional decimals. "1,234.5" -> 1234.5.
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKER = "####"
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True, slots=True)
class Problem:
    """One prompt with its verifiable answer. `meta` holds any extra JSONL fields."""

    id: str
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSONL record: extra fields first, then id, prompt, answer."""
        return {**self.meta, "id": self.id, "prompt": self.prompt, "answer": self.answer}


def generate_arithmetic(
    n: int,
    *,
    seed: int,
    ops: Sequence[str] = ("+",),
    min_operand: int = 0,
    max_operand: int = 9,
    max_answer: int | None = None,
    modulo: int | None = None,
) -> list[Problem]:
    """`n` problems `a<op>b=` with operands in [min_operand, max_operand], from `seed`.

    `max_answer` redraws pairs whose answer is larger (e.g. 9 keeps answers single digit);
    `modulo` asks for `(a<op>b)%m=` instead. The same arguments always give the same list.
    """
    if n < 1:
        raise BadInput(f"arithmetic task: n={n} must be at least 1")
    bad = [op for op in ops if op not in _OPS]
    if bad or not ops:
        raise BadInput(f"arithmetic task: unknown ops {bad or list(ops)}", hint=f"use some of {list(_OPS)}")
    if min_operand > max_operand:
        raise BadInput(f"arithmetic task: min_operand={min_operand} > max_operand={max_operand}")
    pairs = [
        (a, op, b)
        for op in ops
        for a in range(min_operand, max_operand + 1)
        for b in range(min_operand, max_operand + 1)
        if max_answer is None or _apply(a, op, b, modulo) <= max_answer
    ]
    if not pairs:
        raise BadInput(f"arithmetic task: no operand pair has an answer <= max_answer={max_answer}")
    rng = random.Random(seed)
    problems = []
    for i in range(n):
        a, op, b = rng.choice(pairs)
        text = f"{a}{op}{b}=" if modulo is None else f"({a}{op}{b})%{modulo}="
        problems.append(Problem(id=f"arith-{seed}-{i}", prompt=text, answer=str(_apply(a, op, b, modulo))))
    return problems


def _apply(a: int, op: str, b: int, modulo: int | None) -> int:
    v = _OPS[op](a, b)
    return v % modulo if modulo else v


def write_jsonl(problems: Iterable[Problem], path: Path) -> Path:
    """Write problems as JSON Lines (one object per line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
    return path


def gold_answer(answer: str) -> str:
    """The gold answer string: the text after the last `####` if present, stripped."""
    return answer.rsplit(_MARKER, 1)[-1].strip()


def extract_answer(completion_text: str) -> str | None:
    """The answer a completion gives: the first number after the last `####` if the
    completion has one, else the first number in it; None when it has no number."""
    text = completion_text.rsplit(_MARKER, 1)[-1]
    m = _NUMBER.search(text)
    return m.group(0) if m else None


def _as_number(s: str) -> Decimal | None:
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def reward(completion_text: str, answer: str) -> float:
    """1.0 if the completion states exactly the gold answer, else 0.0.

    Rule: gold = `gold_answer(answer)`. If gold is a number, the completion's answer is
    `extract_answer(completion_text)` (first number after the last `####`, else the first
    number) and must be numerically equal (`7` == `7.0` == `+7`, `1,000` == `1000`; `77`,
    `-7` and `7.5` are wrong for 7). If gold is not a number, the completion text after the
    last `####`, cut at its first newline and stripped, must equal it exactly. Nothing is
    given for format alone.
    """
    gold = gold_answer(answer)
    gold_num = _as_number(gold)
    if gold_num is None:
        text = completion_text.rsplit(_MARKER, 1)[-1].strip().split("\n", 1)[0].strip()
        return 1.0 if text == gold else 0.0
    said = extract_answer(completion_text)
    if said is None:
        return 0.0
    said_num = _as_number(said)
    return 1.0 if said_num is not None and said_num == gold_num else 0.0


def format_prompt(problem: Problem, template: str = "{prompt}") -> str:
    """The text the policy sees: `template` with `{prompt}` filled in (identity by default,
    which is what the tiny model trains on; a real instruct model wants e.g.
    "Question: {prompt}\\nAnswer:"). Only `{prompt}` is replaced: other braces (`\\boxed{}`) stay."""
    return template.replace("{prompt}", problem.prompt)


def encode_prompts(tokenizer: Any, problems: Sequence[Problem], template: str = "{prompt}") -> list[list[int]]:
    """Token ids of each formatted prompt, with the tokenizer's special tokens (BOS)."""
    return [list(tokenizer(format_prompt(p, template))["input_ids"]) for p in problems]
