"""Synthetic word problems in GSM8K and MATH format, and writers for every format the readers take.

Short one-operation problems ("Ann has 3 apples. She gets 4 more. How many apples does Ann have
now?") with a worked solution and a final answer: in GSM8K records (`question`, `answer` ending
in `#### 7`) or MATH records (`problem`, `solution` with `\\boxed{7}`, `level`, `type`). Answers
can be kept to single digits, which is what a tiny policy learns from scratch in minutes; the
same generator with larger operands gives test data for the real-model configs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slurm_rl.errors import BadInput

NAMES = (("Ann", "She"), ("Ben", "He"), ("Cal", "He"), ("Dee", "She"))
THINGS = ("apples", "books", "cats", "coins")

# (question, worked solution) per operation; {r} is the result
_TEMPLATES = {
    "+": ("{name} has {a} {thing} and gets {b} more. How many {thing} now?",
          "{name} has {a} + {b} = {r} {thing}."),
    "-": ("{name} has {a} {thing} and gives {b} away. How many {thing} are left?",
          "{name} has {a} - {b} = {r} {thing} left."),
    "*": ("{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?",
          "{name} has {a} * {b} = {r} {thing}."),
}
STYLES = ("gsm8k", "math")


def word_problems(n: int, *, seed: int, style: str = "gsm8k", ops: Sequence[str] = ("+", "-"),
                  max_operand: int = 9, max_answer: int | None = 9, max_second: int | None = None
                  ) -> list[dict[str, Any]]:
    """`n` records of `style` (gsm8k or math); the same arguments give the same records."""
    return word_problem_splits(n, 0, seed=seed, style=style, ops=ops, max_operand=max_operand,
                               max_answer=max_answer, max_second=max_second)[0]


def word_problem_splits(n_train: int, n_eval: int, *, seed: int, style: str = "gsm8k",
                        ops: Sequence[str] = ("+", "-"), max_operand: int = 9, max_answer: int | None = 9,
                        max_second: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) records of `style` whose problems never share a text: every distinct problem
    (operation, operands, name, thing) is drawn once into a seeded order, the first `n_eval` are the
    eval split and the training records come from the rest (repeating when `n_train` is larger).
    Subtraction never goes below zero; `max_answer` leaves larger results out; `max_second` bounds
    the second operand alone (1: "gets 1 more", counting on, which a tiny policy learns from scratch
    in about a hundred GRPO steps). Ids: `wp-<seed>-<i>` (train) and `wp-<seed>-eval-<i>`."""
    if style not in STYLES:
        raise BadInput(f"word problems: unknown style {style!r}", hint=f"use one of {list(STYLES)}")
    bad = [op for op in ops if op not in _TEMPLATES]
    if bad or not ops:
        raise BadInput(f"word problems: unknown ops {bad or list(ops)}", hint=f"use some of {list(_TEMPLATES)}")
    cases = [(op, a, b, who, thing) for op in ops for a in range(1, max_operand + 1)
             for b in range(1, (max_second or max_operand) + 1) for who in NAMES for thing in THINGS
             if (r := _result(op, a, b)) >= 0 and (max_answer is None or r <= max_answer)]
    if len(cases) <= n_eval:
        raise BadInput(f"word problems: only {len(cases)} distinct problems with operands up to {max_operand} and "
                       f"answers up to {max_answer}; {n_eval} eval problems would leave none to train on",
                       hint="lower task.eval_size, or raise task.max_operand / task.max_answer")
    rng = random.Random(f"word-problems:{seed}")
    rng.shuffle(cases)
    held, pool = cases[:n_eval], cases[n_eval:]
    train = [_record(pool[i % len(pool)], style, f"wp-{seed}-{i}") for i in range(n_train)]
    return train, [_record(c, style, f"wp-{seed}-eval-{i}") for i, c in enumerate(held)]


def _record(case: tuple[str, int, int, tuple[str, str], str], style: str, rid: str) -> dict[str, Any]:
    op, a, b, (name, pron), thing = case
    q, sol = _TEMPLATES[op]
    r = _result(op, a, b)
    kw = dict(name=name, pron=pron, pron_l=pron.lower(), thing=thing, a=a, b=b, r=r)
    text, worked = q.format(**kw), sol.format(**kw)
    if style == "gsm8k":
        return {"id": rid, "question": text, "answer": f"{worked}\n#### {r}"}
    return {"id": rid, "problem": text, "solution": f"{worked} The answer is $\\boxed{{{r}}}$.",
            "level": "Level 1", "type": "Prealgebra"}


def _result(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def write_records(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSON Lines (`.jsonl`), Parquet (`.parquet`) or, for any other path, a
    Hugging Face datasets directory (`Dataset.save_to_disk`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(columns(records)), path)
    else:
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_dict(columns(records)).save_to_disk(str(path))
    return path


def columns(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Records as columns over the union of their keys (a missing field is None): pyarrow and datasets
    would otherwise take the columns of the first record alone."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: [r.get(k) for r in records] for k in keys}
