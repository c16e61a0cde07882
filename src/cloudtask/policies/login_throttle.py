"""When a login is refused for too many failed attempts."""

from dataclasses import dataclass


@dataclass(frozen=True)
class LoginThrottle:
    """Failed logins per email within a fixed window that opens with the first failure."""

    max_failures: int = 10
    window_seconds: int = 15 * 60

    def is_blocked(self, failures: int) -> bool:
        return failures >= self.max_failures
