"""Rewards: the final answer of a completion verified against the gold one, and user rewards.

A reward is a function `reward(prompt: str, completion: str, record: dict) -> float`:
`prompt` is the text the policy saw (template and chat template applied), `completion` the
generated text, `record` the problem as loaded (`id`, `prompt`, `answer` = the gold answer,
`solution` when the gold was read out of a worked solution, and every other field of the
source record). `task.reward` names it:

  math               (default for datasets) the final answer, verified with math-verify
  exact              (default for the arithmetic demo) slurm_rl.rl.task.reward's exact rule
  pkg.module:func    a function importable in the role processes (installed or on PYTHONPATH)
  path/to/file.py:func  a function in a file (the path is resolved when the run is prepared)

The final answer of a completion is, in order: the contents of its last `\\boxed{...}`, else
the first number after its last `####`, else its last number; never the first number of a
chain of thought. A reward that raises, or returns something that is not a finite number,
counts as 0 for that sample and as a reward error (`RewardScorer`); the rollout reports every
error as an event with the record ids.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from slurm_rl.data.records import last_boxed
from slurm_rl.errors import BadInput

RewardFn = Callable[[str, str, dict[str, Any]], float]

BUILTIN = ("math", "exact")
# A number as people write it: optional sign, digits with thousands commas, optional decimals,
# or a bare fraction a/b.
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?")
_MARKER = "####"


def final_answer(completion: str) -> str | None:
    """The answer a completion ends on: last `\\boxed{}`, else after the last `####`, else the
    last number; None when it gives none."""
    boxed = last_boxed(completion)
    if boxed:
        return boxed
    if _MARKER in completion:
        after = completion.rsplit(_MARKER, 1)[1]
        m = _NUMBER.search(after)
        if m:
            return m.group(0)
        line = after.strip().split("\n", 1)[0].strip()
        return line or None
    nums = _NUMBER.findall(completion)
    return nums[-1] if nums else None


def _plain_number(s: str) -> Decimal | None:
    t = s.strip().replace(",", "").removeprefix("\\$").removeprefix("$").strip()
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)", t):
        return None
    try:
        return Decimal(t)
    except InvalidOperation:
        return None


def _timeout() -> int | None:
    # math-verify bounds parsing with SIGALRM, which only the main thread may set
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parsed(text: str) -> Any:
    from math_verify import parse

    return parse("\\boxed{" + text + "}", parsing_timeout=_timeout())


def answers_match(gold: str, predicted: str) -> bool:
    """Is `predicted` the gold answer? Plain numbers compare exactly (`1,000` == `1000.0`);
    anything else (latex, fractions, expressions, sets) is math-verify's call."""
    g, p = _plain_number(gold), _plain_number(predicted)
    if g is not None and p is not None:
        return g == p
    from math_verify import verify

    gp, pp = _parsed(gold), _parsed(predicted)
    if not gp or not pp:
        return gold.strip() == predicted.strip()
    return bool(verify(gp, pp, timeout_seconds=_timeout()))


def math_reward(prompt: str, completion: str, record: dict[str, Any]) -> float:
    """1.0 when the completion's final answer is the record's gold answer (`record["answer"]`)."""
    said = final_answer(completion)
    return 1.0 if said is not None and answers_match(str(record["answer"]), said) else 0.0


def exact_reward(prompt: str, completion: str, record: dict[str, Any]) -> float:
    """The demo's exact rule (slurm_rl.rl.task.reward): the number right after the prompt."""
    from slurm_rl.rl.task import reward

    return reward(completion, str(record["answer"]))


def resolve_reward_spec(spec: str, base: Path | None = None) -> str:
    """A spec with a file path made absolute (the role processes run in the run directory)."""
    if spec in BUILTIN or ":" not in spec:
        return spec
    target, _, func = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        return f"{(Path(base or Path.cwd()) / Path(target).expanduser()).resolve()}:{func}"
    return spec


def load_reward(spec: str) -> RewardFn:
    """The reward function `spec` names; `BadInput` (exit 2) saying why when it cannot be loaded."""
    if spec == "math":
        return math_reward
    if spec == "exact":
        return exact_reward
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise BadInput(f"task.reward {spec!r} is not a reward", hint="use 'math', 'exact', 'package.module:function' "
                       "or 'path/to/file.py:function'")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise BadInput(f"task.reward {spec!r}: no file {path}")
            mod_name = f"slurm_rl_user_reward_{abs(hash(str(path)))}"
            mod_spec = importlib.util.spec_from_file_location(mod_name, path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except BadInput:
        raise
    except Exception as e:         # ImportError, or whatever the module raises while importing
        raise BadInput(f"task.reward {spec!r}: cannot import {target}: {type(e).__name__}: {e}",
                       hint="the module must import in the role processes: install it, put it on PYTHONPATH, "
                            "or name a file as path/to/file.py:function") from None
    fn = getattr(module, name, None)
    if fn is None:
        raise BadInput(f"task.reward {spec!r}: {target} has no attribute {name!r}")
    if not callable(fn):
        raise BadInput(f"task.reward {spec!r}: {target}.{name} is not a function")
    try:
        inspect.signature(fn).bind("prompt", "completion", {})
    except TypeError:
        raise BadInput(f"task.reward {spec!r}: {name}{inspect.signature(fn)} cannot be called as "
                       "reward(prompt, completion, record)") from None
    except ValueError:
        pass                       # a builtin without a signature: trust it
    return fn


@dataclass
class RewardScorer:
    """Calls a reward and never lets it fail silently: an exception or a non-finite or non-number
    result scores 0 and is kept in `errors` as (record id, message) until `take_errors`."""

    fn: RewardFn
    errors: list[tuple[str, str]] = field(default_factory=list)
    calls: int = 0
    failures: int = 0              # every error ever, taken or not

    def __call__(self, prompt: str, completion: str, record: dict[str, Any]) -> float:
        self.calls += 1
        try:
            value = self.fn(prompt, completion, record)
        except Exception as e:
            self.failures += 1
            self.errors.append((str(record.get("id")), f"{type(e).__name__}: {e}"[:300]))
            return 0.0
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            self.failures += 1
            self.errors.append((str(record.get("id")), f"returned {value!r}, not a finite number"[:300]))
            return 0.0
        return float(value)

    def take_errors(self) -> list[tuple[str, str]]:
        out, self.errors = self.errors, []
        return out
