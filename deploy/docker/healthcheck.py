"""The image's healthcheck: asks the running service's own health path, exits 0 if it answers 200.

One image runs every service, so the URL comes from the command line of PID 1 (``cloudtask worker
--port 9191`` → ``http://127.0.0.1:9191/health``); ``HEALTHCHECK_URL`` overrides it, for a service
bound to one address. A one-shot command (``migrate``) is healthy while it runs. The standard
library only: the slim image has no curl.
"""

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

SERVICES = {
    "api": (8080, "/actuator/health"),
    "dev": (8080, "/actuator/health"),
    "worker": (9091, "/health"),
    "results": (9092, "/health"),
    "scheduler": (9093, "/health"),
}


def health_url(argv: Sequence[str]) -> str | None:
    """The health URL of the service that ``argv`` runs, or None if it runs no service."""
    command = next((arg for arg in argv if arg in SERVICES or arg == "migrate"), None)
    if command not in SERVICES:
        return None
    port, path = SERVICES[command]
    for index, arg in enumerate(argv):
        if arg == "--port" and index + 1 < len(argv):
            port = int(argv[index + 1])
        elif arg.startswith("--port="):
            port = int(arg.removeprefix("--port="))
    return f"http://127.0.0.1:{port}{path}"


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL")
    if not url:
        with open("/proc/1/cmdline", "rb") as cmdline:
            url = health_url(cmdline.read().decode(errors="replace").split("\0"))
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - a fixed local URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)  # noqa: T201 - docker shows it
        return 1


if __name__ == "__main__":
    sys.exit(main())
