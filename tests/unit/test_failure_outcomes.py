"""How a handler's exception becomes the job's error."""

from cloudtask.errors import PermanentFailure
from cloudtask.worker.execution import failure


def test_an_exception_is_its_message() -> None:
    outcome = failure(ValueError("kaboom"))
    assert (outcome.kind, outcome.error) == ("failed", "kaboom")
    assert outcome.retryable


def test_an_exception_without_a_message_is_named_by_its_class() -> None:
    assert failure(ValueError()).error == "ValueError"
    assert failure(TimeoutError("")).error == "TimeoutError"


def test_a_permanent_failure_is_its_message_alone_and_not_retried() -> None:
    outcome = failure(PermanentFailure("payload needs a url"))
    assert (outcome.error, outcome.retryable) == ("payload needs a url", False)
