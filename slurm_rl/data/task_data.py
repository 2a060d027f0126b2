"""A run's problems: the training and eval splits its `task:` section describes, validated.

Generated tasks (arithmetic, word problems) and datasets go through the same readers
(slurm_rl.data.records), so a generated set is checked exactly as a user's file is. Nothing
here writes: `launch` calls it before anything of the run exists (and `launch --check` alone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from slurm_rl.data.records import AnswerFormat, Fields, load_problems, to_problems
from slurm_rl.data.synthetic import word_problem_splits
from slurm_rl.errors import BadInput
from slurm_rl.rl.task import Problem, generate_arithmetic


@dataclass(frozen=True)
class TaskData:
    train: list[Problem]
    eval: list[Problem]


def _sample(problems: list[Problem], n: int | None, seed: int) -> list[Problem]:
    if n is None or n >= len(problems):
        return problems
    keep = sorted(random.Random(f"eval-sample:{seed}").sample(range(len(problems)), n))
    return [problems[i] for i in keep]


def load_task_data(task, seed: int) -> TaskData:
    """Both splits of `task` (a TaskConfig); `BadInput` naming file, line/row and field for a bad record."""
    seed = task.seed if task.seed is not None else seed
    fmt = AnswerFormat(task.format)
    if task.kind == "arithmetic":
        train = generate_arithmetic(task.num_problems, seed=seed, ops=task.ops, max_operand=task.max_operand,
                                    max_answer=task.max_answer)
        ev = generate_arithmetic(task.eval_size, seed=seed + 1_000_003, ops=task.ops, max_operand=task.max_operand,
                                 max_answer=task.max_answer) if task.eval_size else []
        return TaskData(train, [Problem(id=f"eval-{p.id}", prompt=p.prompt, answer=p.answer) for p in ev])
    if task.kind == "word-problems":
        style = "math" if fmt is AnswerFormat.MATH else "gsm8k"
        tr, ev = word_problem_splits(task.num_problems, task.eval_size or 0, seed=seed, style=style, ops=task.ops,
                                     max_operand=task.max_operand, max_answer=task.max_answer,
                                     max_second=task.max_second_operand)
        fmt = AnswerFormat(style)
        return TaskData(to_problems(((f"word-problems[{i}]", r) for i, r in enumerate(tr)), source="word-problems",
                                    fmt=fmt),
                        to_problems(((f"word-problems eval[{i}]", r) for i, r in enumerate(ev)),
                                    source="word-problems-eval", fmt=fmt) if ev else [])
    fields = Fields(prompt=task.fields.prompt, answer=task.fields.answer, id=task.fields.id)
    train = load_problems(task.path, fmt=fmt, fields=fields, split=task.split)
    if task.eval_path or task.eval_split:
        ev = load_problems(task.eval_path or task.path, fmt=fmt, fields=fields, split=task.eval_split)
        return TaskData(train, _sample(ev, task.eval_size, seed))
    if task.eval_size:
        if task.eval_size >= len(train):
            raise BadInput(f"task.eval_size {task.eval_size} would hold out all {len(train)} problems of {task.path}",
                           hint="lower task.eval_size, or give the eval split with task.eval_path")
        held = set(random.Random(f"holdout:{seed}").sample(range(len(train)), task.eval_size))
        return TaskData([p for i, p in enumerate(train) if i not in held],
                        [p for i, p in enumerate(train) if i in held])
    return TaskData(train, [])
