"""CloudTask's own exceptions. Driver errors are translated into these at each back end's boundary.

A docstring is the exception's default message.
"""


class CloudTaskError(Exception):
    """Something went wrong in CloudTask."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class BrokerUnavailable(CloudTaskError):
    """The message broker cannot be reached."""


class KVUnavailable(CloudTaskError):
    """The key-value store cannot be reached."""


class DatabaseUnavailable(CloudTaskError):
    """The database cannot be reached."""


class DatabaseRefused(CloudTaskError):
    """The database could not be reached, or turned the connection away; the message is the
    driver's own reason, in one line, without the URL (which may hold a password)."""


class AlreadyExists(CloudTaskError):
    """It already exists."""


class NotFound(CloudTaskError):
    """It was not found."""


class UnknownUser(CloudTaskError):
    """The user does not exist (any more)."""


class InvalidState(CloudTaskError):
    """The operation is not allowed in the current state."""


class PermanentFailure(CloudTaskError):
    """The job cannot succeed, so it is not retried.

    Raise it from a handler when retrying would not help (bad input, a refused request); any other
    exception fails the attempt and leaves the job's remaining attempts to retry it.
    """
