"""A replay session shared by the NDJSON and WebSocket routes: batches read in query threads, paced by `speed`.

`speed` 1 replays at the recorded pace, 10 ten times faster, 0 as fast as the reader takes it: before each record
the session waits until (its event time - the first record's) / speed has passed since the first was sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from k2.api.formats import records
from k2.api.params import encode_cursor
from k2.api.state import ApiState, snapshot_of
from k2.query.filters import record_spec
from k2.query.replay import ReplayBatch, replay
from k2.query.timetravel import AsOf

# Below this a wait is not worth a trip through the event loop; records due sooner go out together.
_MIN_SLEEP_SECONDS = 0.002


@dataclass
class ReplaySession:
    """One replay: check arguments and read the first batch with `open()`, then iterate `chunks()`; `end()` is the
    trailer to send last, whose `cursor` resumes right after the last record sent.
    """

    state: ApiState
    kind: str
    symbols: list[str] | None
    start: datetime | None
    end_time: datetime | None
    exchange: str | None
    after: str | None
    as_of: AsOf
    speed: float
    sent: int = 0
    snapshot_id: int | None = None
    cursor: str | None = None
    _batches: Iterator[ReplayBatch] | None = field(default=None, repr=False)
    _first: ReplayBatch | None = field(default=None, repr=False)

    async def open(self) -> None:
        """Pin the snapshot and read the first batch, so bad arguments fail before any record is sent."""
        table = record_spec(self.kind).name

        def first() -> tuple[int | None, Iterator[ReplayBatch], ReplayBatch | None]:
            with self.state.reading() as engine:
                snapshot = snapshot_of(engine, table, self.as_of)
                batches = replay(
                    engine,
                    self.kind,
                    self.symbols,
                    self.start,
                    self.end_time,
                    exchange=self.exchange,
                    after=self.after,
                    batch_rows=self.state.api.replay_batch_rows,
                    as_of=snapshot if snapshot is not None else self.as_of,
                )
                return snapshot, batches, next(batches, None)

        self.snapshot_id, self._batches, self._first = await self.state.run(first)
        if self.after is not None:
            self.cursor = encode_cursor(self.snapshot_id, self.after)

    async def _next_batch(self) -> ReplayBatch | None:
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        batches = self._batches
        if batches is None:
            return None
        return await self.state.run(lambda: next(batches, None))

    async def chunks(self) -> AsyncIterator[list[dict[str, Any]]]:
        """JSON-ready records in event order, in groups that are due at the same moment."""
        started: tuple[float, int] | None = None  # (wall clock, event microseconds) of the first record
        while (batch := await self._next_batch()) is not None:
            rows = records(batch.records)
            moments = batch.records.column("timestamp").cast(pa.int64()).to_pylist()
            due_now: list[dict[str, Any]] = []
            for row, moment in zip(rows, moments, strict=True):
                if started is None:
                    started = (time.monotonic(), moment)
                wait = 0.0
                if self.speed > 0:
                    wait = started[0] + (moment - started[1]) / 1e6 / self.speed - time.monotonic()
                if wait > _MIN_SLEEP_SECONDS:
                    if due_now:
                        self.sent += len(due_now)
                        yield due_now
                        due_now = []
                    await asyncio.sleep(wait)
                due_now.append(row)
            if due_now:
                self.sent += len(due_now)
                yield due_now
            self.cursor = encode_cursor(batch.snapshot_id, batch.cursor)

    def end(self) -> dict[str, Any]:
        """The trailer: `{"end_of_replay": {"cursor", "snapshot_id", "records"}}`."""
        return {"end_of_replay": {"cursor": self.cursor, "snapshot_id": self.snapshot_id, "records": self.sent}}
