"""Picking the best worker when several are equally good: by the injected ``rng``, never by name.

Breaking ties by worker id sent every request to the same one of two equal idle workers (at 32
concurrent connections, 5362 requests against 0): equal workers must share the load.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from services.router.core.model import WorkerSnapshot

Key = tuple[float, ...]

DIGITS = 9
"""Figures are compared rounded to this many decimals (nanoseconds for times), so that floating-point
noise (0.1 * 3 against 0.3) is a tie rather than a win."""


def least(
    workers: Sequence[WorkerSnapshot], key: Callable[[WorkerSnapshot], Key], rng: random.Random
) -> tuple[WorkerSnapshot, Key] | None:
    """The worker with the smallest ``key``, and its key; None without workers.

    Among workers that tie, ``rng`` draws one, from them in worker-id order (so the pick does not
    depend on the order candidates came in). ``rng`` is drawn from only on a tie: a clear winner
    leaves its state alone.
    """
    if not workers:
        return None
    scored = [(tuple([round(x, DIGITS) for x in k]), k, w) for w in workers for k in (key(w),)]
    best = min(rounded for rounded, _, _ in scored)
    equal = sorted((t for t in scored if t[0] == best), key=lambda t: t[2].worker_id)
    _, raw, chosen = equal[0] if len(equal) == 1 else rng.choice(equal)
    return chosen, raw
