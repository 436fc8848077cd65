"""Kafka client helpers: what a worker waits out while the cluster changes under it, and what it does not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from k2.bus import clients
from k2.bus.clients import retry_transient


@pytest.fixture(autouse=True)
def no_sleeping(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(clients.time, "sleep", slept.append)
    return slept


def failing(codes: list[int], result: str = "ids") -> tuple[list[int], Callable[[], str]]:
    """A call that raises a KafkaException per code in `codes`, in order, then returns `result`."""
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= len(codes):
            raise KafkaException(KafkaError(codes[len(calls) - 1], "Timed out waiting for controller"))
        return result

    return calls, call


def test_a_killed_controller_or_coordinator_is_waited_out(no_sleeping: list[float]) -> None:
    calls, call = failing([KafkaError._TIMED_OUT, KafkaError.NOT_COORDINATOR, KafkaError._TRANSPORT])
    assert retry_transient(call, "describe_topics", patience=60) == "ids"
    assert len(calls) == 4
    assert no_sleeping == [0.5, 1.0, 2.0]


def test_other_errors_are_raised_at_once() -> None:
    calls, call = failing([KafkaError.TOPIC_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        retry_transient(call, "describe_topics", patience=60)
    assert len(calls) == 1


def test_patience_runs_out(no_sleeping: list[float]) -> None:
    calls, call = failing([KafkaError._TIMED_OUT] * 100)
    with pytest.raises(KafkaException):
        retry_transient(call, "committed offsets", patience=0.1)
    assert len(calls) == 1  # the first back-off (0.5 s) is already beyond 0.1 s of patience
