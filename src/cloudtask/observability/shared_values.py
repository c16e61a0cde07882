"""Metrics of an api served by several processes (``cloudtask api --workers N``).

Each process counts what it answers, and a scrape reaches whichever process accepts it: with
values per process, every scrape showed one process's counts, and counters went back and forth
between scrapes. prometheus_client's multiprocess mode keeps each process's values in files of a
directory they share, and a scrape adds them up (counters and histograms summed, the up gauge
its maximum). The directory is made before the processes fork and removed when they have ended;
one left by a parent that was killed is removed by the next one to start.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name for it
PREFIX = "cloudtask-metrics-"  # then the parent's pid, so that a dead parent's can be found

_in_use = False


@contextlib.contextmanager
def shared_directory() -> Iterator[str]:
    """In the parent, before forking: a fresh directory, named in the environment."""
    _remove_orphaned()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphaned() -> None:
    """The directories of parents that were killed (SIGKILL leaves no time to remove them)."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def use_shared_values() -> None:
    """In a child, before its metrics exist: they keep their values in the shared directory."""
    global _in_use  # noqa: PLW0603 - one switch per process, thrown once at its start
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _in_use = True


def in_use() -> bool:
    return _in_use


def render() -> bytes:
    """Every process's values, added up."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
