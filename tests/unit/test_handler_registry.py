"""Registering handlers: a job type follows the contract's rule, one handler per type."""

import pytest

from cloudtask.worker.registry import HandlerRegistry


def handler(payload: object) -> object:
    return payload


def other(payload: object) -> object:
    return payload


@pytest.mark.parametrize("job_type", ["a", "my.job_type-2", "x" * 64])
def test_a_type_of_the_contracts_shape_is_registered(job_type: str) -> None:
    registry = HandlerRegistry()
    registry.register(job_type, handler)
    registry.register(job_type, handler)  # the same function again changes nothing
    assert registry.get(job_type) is not None


@pytest.mark.parametrize("job_type", ["", "Upper", "has space", "x" * 65, "report\n"])
def test_a_type_the_api_would_refuse_is_refused_at_registration(job_type: str) -> None:
    with pytest.raises(ValueError, match="1-64 characters"):
        HandlerRegistry().register(job_type, handler)


def test_a_second_handler_for_one_type_is_refused() -> None:
    registry = HandlerRegistry()
    registry.register("report", handler)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("report", other)
