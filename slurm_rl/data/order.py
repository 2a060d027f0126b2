"""The order prompts are handed out in: epoch after epoch over the problems, each epoch a fresh
permutation drawn from (seed, epoch), or the file order when shuffling is off.

The store keeps one counter of prompts handed out (`cursor`) and asks `problem_at(cursor)`;
because a position's problem depends only on (seed, epoch, position), a restarted controller
continues the same order from its stored cursor.
"""

from __future__ import annotations

import random
from functools import lru_cache


@lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """A permutation of range(n) for one epoch (the same arguments always give the same one)."""
    order = list(range(n))
    random.Random(f"slurm-rl-epoch:{seed}:{epoch}").shuffle(order)
    return tuple(order)


def problem_at(cursor: int, n: int, *, shuffle: bool, seed: int) -> int:
    """The index of the problem handed out `cursor`-th (0-based) from n problems."""
    if n < 1:
        raise ValueError("no problems to hand out")
    epoch, pos = divmod(cursor, n)
    return epoch_permutation(n, seed, epoch)[pos] if shuffle else pos
