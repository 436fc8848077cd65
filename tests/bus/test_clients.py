"""Kafka client helpers: what a worker waits out while the cluster changes under it, and what it does not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException

from k2.bus import clients
from k2.bus.clients import retry_transient
from k2.bus.producer import RecordProducer


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


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (KafkaError._AUTHENTICATION, "refused K2's SASL login"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "refused K2's SASL login"),
        (KafkaError._SSL, "failed the TLS handshake"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "lacks an ACL"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, "lacks an ACL"),
    ],
)
def test_a_refusal_or_denial_is_one_line_naming_what_to_check(code: int, says: str) -> None:
    error = clients.access_error(KafkaError(code, "sasl.password=hunter2 rejected"), "broker:9093")
    assert error is not None
    message = str(error)
    assert message.startswith("Kafka at broker:9093 ") and says in message
    assert "\n" not in message and "hunter2" not in message


def test_a_transient_error_is_no_access_error() -> None:
    assert clients.access_error(KafkaError(KafkaError._TRANSPORT, "broker down")) is None
    assert clients.access_error(KafkaError(KafkaError.NOT_COORDINATOR, "moving")) is None


def test_a_producer_denied_its_producer_id_reports_the_denial_in_one_line() -> None:
    # A user without the cluster ACL an idempotent producer needs: librdkafka's fatal error surfaces in flush().
    producer = RecordProducer({"bootstrap.servers": "127.0.0.1:9"}, registry=None)  # type: ignore[arg-type]
    fatal = KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED, "Failed to acquire idempotence PID", fatal=True)

    def flush(_timeout: float) -> int:
        raise KafkaException(fatal)

    producer._producer = type("Denied", (), {"flush": staticmethod(flush)})()  # type: ignore[assignment]
    with pytest.raises(clients.KafkaAccessError, match=r"denied the request \(CLUSTER_AUTHORIZATION_FAILED\)"):
        producer.flush(1.0)
