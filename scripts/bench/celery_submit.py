"""Submits the Celery half of the comparison, as a process of its own:
``python -m scripts.bench.celery_submit N``.

It first waits until the worker ran one task (so the timed part does not include the worker's
start), then publishes N ``bench.echo`` tasks from one thread, the way a Celery client does, and
prints one JSON line: when the first publish began, when the last ended, and its CPU time.
"""

import json
import resource
import sys
import time


def main() -> None:
    from scripts.bench.celery_app import echo  # noqa: PLC0415 - celery is the bench extra

    count = int(sys.argv[1])
    echo.delay({"warmup": True}).get(timeout=120)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.time()
    for n in range(count):
        echo.delay({"n": n})
    finished = time.time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - cpu_before
    print(
        json.dumps(
            {
                "started_at": started,
                "finished_at": finished,
                "published_per_s": count / (finished - started),
                "cpu_s": cpu_s,
                "cpu_pct": 100 * cpu_s / (finished - started),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
