"""Exponential backoff with full jitter between a job's attempts."""

import random
from collections.abc import Callable


def compute_backoff(
    attempt: int,
    *,
    base: float = 2.0,
    cap: float = 3600.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    The ceiling doubles with each attempt (``base``, ``2*base``, ``4*base`` …) up to ``cap``;
    the wait is drawn uniformly below it ("full jitter"), which spreads a burst of failures out
    instead of retrying them in lockstep. It is never less than a tenth of the ceiling, so a
    retry is never immediate.
    """
    exponent = min(max(attempt - 1, 0), 62)
    ceiling = min(cap, base * (2.0**exponent))
    return ceiling * (0.1 + 0.9 * rand())
