"""The threads of sync handlers: a call never waits for a thread, idle threads are reused."""

import threading
import time

import pytest

from cloudtask.worker.threads import HandlerThreads


def _threads_named(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(f"{name}-"))


def test_calls_return_their_results_and_raise_their_exceptions() -> None:
    threads = HandlerThreads(keep_idle=2, name="t-results")
    assert threads.submit(lambda a, b: a + b, 2, b=3).result(5) == 5

    def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        threads.submit(broken).result(5)
    threads.shutdown()


def test_a_call_that_never_returns_delays_no_other() -> None:
    threads = HandlerThreads(keep_idle=1, name="t-stuck")
    release = threading.Event()
    stuck = [threads.submit(release.wait, 30) for _ in range(3)]
    started = time.monotonic()
    assert [threads.submit(lambda n=n: n).result(5) for n in range(3)] == [0, 1, 2]
    assert time.monotonic() - started < 5
    assert not any(call.done() for call in stuck)
    release.set()
    assert all(call.result(5) for call in stuck)
    threads.shutdown()


def test_many_calls_run_at_once_however_few_threads_are_kept() -> None:
    threads = HandlerThreads(keep_idle=1, name="t-many")
    everyone = threading.Barrier(8, timeout=5)
    calls = [threads.submit(everyone.wait) for _ in range(8)]
    assert sorted(call.result(10) for call in calls) == list(range(8))
    threads.shutdown()


def test_an_idle_thread_takes_the_next_call_and_the_extra_ones_end() -> None:
    threads = HandlerThreads(keep_idle=1, name="t-idle", idle_seconds=0.2)

    def name() -> str:
        return threading.current_thread().name

    first = threads.submit(name).result(5)
    assert [threads.submit(name).result(5) for _ in range(5)] == [first] * 5
    release = threading.Event()
    calls = [threads.submit(release.wait, 5) for _ in range(4)]
    assert _threads_named("t-idle") >= 4
    release.set()
    for call in calls:
        call.result(5)
    deadline = time.monotonic() + 5
    while _threads_named("t-idle") > 0:  # one kept while idle, then it too ends
        assert time.monotonic() < deadline, threading.enumerate()
        time.sleep(0.05)
    threads.shutdown()


def test_after_shutdown_idle_threads_end_and_no_call_is_taken() -> None:
    threads = HandlerThreads(keep_idle=4, name="t-shut")
    for n in range(4):
        threads.submit(lambda n=n: n).result(5)
    threads.shutdown()
    deadline = time.monotonic() + 5
    while _threads_named("t-shut") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(RuntimeError):
        threads.submit(lambda: None)
