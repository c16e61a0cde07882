"""Metrics of an api served by several processes (``cloudtask api --workers N``).

Each process counts what it answers, and a scrape reaches whichever process accepts it: with
values per process, every scrape showed one process's counts, and counters went back and forth
between scrapes. prometheus_client's multiprocess mode keeps each process's values in files of a
directory they share, and a scrape adds them up (counters and histograms summed, the up gauge
its maximum). The directory is made before the processes fork and removed when they have ended.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's name for it

_in_use = False


@contextlib.contextmanager
def shared_directory() -> Iterator[str]:
    """In the parent, before forking: a fresh directory, named in the environment."""
    path = tempfile.mkdtemp(prefix="cloudtask-metrics-")
    os.environ[ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


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
