"""When a login is refused for too many failed attempts."""

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoginThrottle:
    """Failed logins per email within any ``window_seconds``: the times of the last
    ``max_failures`` failures are kept, and an attempt is refused while that many fall within
    the window before it. (A window that opened with the first failure and reset when it ended
    let twice the limit through around its end.)"""

    max_failures: int = 10
    window_seconds: int = 15 * 60

    def recent(self, times: Iterable[float], now: float) -> list[float]:
        """The failure times within the window before ``now``, oldest first, the last
        ``max_failures`` of them (no more are needed to decide)."""
        return sorted(t for t in times if t > now - self.window_seconds)[-self.max_failures :]

    def is_blocked(self, failures: int) -> bool:
        return failures >= self.max_failures

    def retry_after(self, recent: list[float], now: float) -> float:
        """Seconds until one of ``recent`` (blocking) leaves the window, and an attempt is let
        through again."""
        return recent[-self.max_failures] + self.window_seconds - now
