"""`read_ahead`: the producer's view of a source, parsed one or two batches ahead in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from k2.ingest.pipeline import read_ahead
from tests.waiting import wait_until


def numbers(count: int, made: list[int], fail_at: int | None = None) -> Iterator[int]:
    for n in range(count):
        if n == fail_at:
            raise ValueError(f"bad row in batch {n}")
        made.append(n)
        yield n


def test_batches_arrive_in_order_and_all_of_them() -> None:
    made: list[int] = []

    assert list(read_ahead(numbers(100, made), depth=2)) == list(range(100))  # type: ignore[arg-type]
    assert made == list(range(100))


def test_a_source_error_reaches_the_caller_after_the_batches_before_it() -> None:
    got = []
    with pytest.raises(ValueError, match="bad row in batch 3"):
        for batch in read_ahead(numbers(10, [], fail_at=3)):  # type: ignore[arg-type]
            got.append(batch)

    assert got == [0, 1, 2]


def test_the_source_runs_at_most_depth_ahead_and_stops_when_the_caller_does() -> None:
    made: list[int] = []
    ahead = read_ahead(numbers(1_000, made), depth=2)  # type: ignore[arg-type]

    assert next(ahead) == 0
    # batch 0 taken; 1 and 2 queued; 3 made and waiting for room: the thread then blocks, so made stays at 4
    wait_until(lambda: len(made) >= 4, 10, "the read-ahead thread to fill its queue")
    assert made == [0, 1, 2, 3]
    ahead.close()  # the caller stops early (e.g. the broker refused a batch)
    assert not any(t.name == "k2-read-ahead" for t in threading.enumerate())
    assert len(made) == 4
