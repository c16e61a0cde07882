"""Retry backoff: exponential ceilings, full jitter, a floor and a cap."""

import math
import random

import pytest

from cloudtask.policies.backoff import compute_backoff

ALMOST_ONE = math.nextafter(1.0, 0.0)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (11, 2048.0)]
)
def test_each_attempt_waits_between_a_tenth_of_its_ceiling_and_the_ceiling(
    attempt: int, ceiling: float
) -> None:
    assert compute_backoff(attempt, rand=lambda: 0.0) == pytest.approx(ceiling / 10)
    highest = compute_backoff(attempt, rand=lambda: ALMOST_ONE)
    assert highest == pytest.approx(ceiling)
    assert highest <= ceiling


def test_the_base_sets_the_first_ceiling() -> None:
    assert compute_backoff(1, base=0.5, rand=lambda: ALMOST_ONE) == pytest.approx(0.5)
    assert compute_backoff(3, base=0.5, rand=lambda: ALMOST_ONE) == pytest.approx(2.0)


def test_the_ceiling_stops_growing_at_the_cap() -> None:
    assert compute_backoff(12, rand=lambda: ALMOST_ONE) == pytest.approx(3600)
    assert compute_backoff(30, cap=60, rand=lambda: 0.0) == pytest.approx(6)
    assert compute_backoff(30, cap=60, rand=lambda: ALMOST_ONE) == pytest.approx(60)


def test_a_wait_is_never_below_a_tenth_of_its_ceiling() -> None:
    generator = random.Random(7)
    for attempt in range(1, 40):
        ceiling = min(3600.0, 2.0 * 2 ** (attempt - 1))
        for _ in range(50):
            wait = compute_backoff(attempt, rand=generator.random)
            assert ceiling / 10 <= wait <= ceiling


@pytest.mark.parametrize("attempt", [64, 1025, 10**6, 10**18, 2**80])
def test_huge_attempt_numbers_wait_at_most_the_cap_without_overflowing(attempt: int) -> None:
    for rand in (0.0, 0.5, ALMOST_ONE):
        wait = compute_backoff(attempt, rand=lambda r=rand: r)
        assert math.isfinite(wait)
        assert 360 <= wait <= 3600


@pytest.mark.parametrize("attempt", [0, -1, -(10**9)])
def test_an_attempt_below_one_waits_like_the_first(attempt: int) -> None:
    assert compute_backoff(attempt, rand=lambda: ALMOST_ONE) == pytest.approx(2.0)
    assert compute_backoff(attempt, rand=lambda: 0.0) == pytest.approx(0.2)


def test_jitter_spreads_retries_of_the_same_attempt() -> None:
    generator = random.Random(1)
    waits = {compute_backoff(6, rand=generator.random) for _ in range(20)}
    assert len(waits) == 20
