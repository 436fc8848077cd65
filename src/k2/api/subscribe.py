"""A subscription served over a WebSocket: the library's `subscribe` runs in a thread of its own and hands frames to
the connection through a buffer bounded in records.

While the subscription catches up (history, then the Kafka tail) the thread waits for room: the reader sets the
pace. Once it is live, records arrive at the market's pace and a subscriber must keep up: when a frame does not fit
in the buffer the subscriber is too slow, and the connection is closed with `SLOW_SUBSCRIBER` (4008) and the cursor
of the last frame sent, from which it can resume (catching up again at its own pace). Live records come from the
process's shared consumers (`ApiState.live_hub`, k2.query.live_hub); a subscription that falls more than
`subscribe_buffer_records` behind those is dropped by them and closed the same way.

A frame is NDJSON text: one JSON record per line (a trade, a quote, or a bar of k2.query.bar_stream), then
`{"cursor", "phase", "records"}`. A frame without records is sent when the phase changes (the first `live` one says
the subscriber has everything so far) and, at most once a second, when the cursor moved past records the filter left
out. Batches of one phase that queued while the previous frame was sent go out as one frame (up to the batch size).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import orjson
import pyarrow as pa
from confluent_kafka import KafkaException
from starlette.websockets import WebSocket

from k2.api.errors import ApiError
from k2.api.formats import ndjson_lines
from k2.api.state import ApiState
from k2.core import metrics
from k2.query.bar_stream import subscribe_bars
from k2.query.live_hub import FellBehind
from k2.query.subscribe import SubscribeOptions, SubscriptionBatch, subscribe

T = TypeVar("T")

SLOW_SUBSCRIBER = 4008
"""Close code for a live subscriber whose send buffer is full; the reason (and the last message) give its cursor."""

_CURSOR_ONLY_SECONDS = 1.0
# A closing connection's last message and close frame may wait this long for a slow client to take them.
_GOODBYE_SECONDS = 5.0
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason


@dataclass(frozen=True)
class Frame:
    lines: bytes  # the records' NDJSON lines
    cursor: str
    records: int
    phase: str


def frame_text(frames: list[Frame]) -> str:
    """One message for consecutive frames of one phase: their records' lines, then the last one's cursor."""
    last = frames[-1]
    trailer = {"cursor": last.cursor, "phase": last.phase, "records": sum(frame.records for frame in frames)}
    return (b"".join(frame.lines for frame in frames) + orjson.dumps(trailer)).decode()


class SharedLines:
    """NDJSON of the last `size` record tables encoded: the live hub hands the subscribers of one filter the same
    tables, so each is encoded once for all of them, however far apart in time they take it (a table per hub batch:
    1024 cover seconds of a busy symbol). Keyed by identity (the table is held, so its id is not reused)."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._recent: OrderedDict[int, tuple[pa.Table, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def lines(self, rows: pa.Table) -> bytes:
        with self._lock:
            hit = self._recent.get(id(rows))
        if hit is not None and hit[0] is rows:
            return hit[1]
        text = b"".join(ndjson_lines(rows))
        with self._lock:
            self._recent[id(rows)] = (rows, text)
            while len(self._recent) > self._size:
                self._recent.popitem(last=False)
        return text


_SHARED_LINES = SharedLines()


class SlowSubscriber(Exception):
    """The live subscriber fell more than the buffer behind; `cursor` resumes after the last frame it was sent."""

    def __init__(self, cursor: str | None) -> None:
        super().__init__("too slow")
        self.cursor = cursor

    def message(self) -> dict[str, object]:
        return {
            "error": {
                "code": "slow_subscriber",
                "message": "the subscriber fell too far behind the live records: resume from the cursor in details",
                "details": {"cursor": self.cursor},
            }
        }

    def reason(self) -> str:
        """The close reason: the cursor when it fits in a close frame, else where to find it."""
        if self.cursor is not None and len(self.cursor) <= _MAX_REASON_BYTES:
            return self.cursor
        return "too slow: resume from the cursor in the last message"


class FrameBuffer:
    """Frames between the subscription's thread and the connection, at most `limit` records (one frame larger than
    the limit is let through alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[Frame] = deque()
        self._records = 0
        self._changed = asyncio.Condition()
        self._closed = False

    async def put(self, frame: Frame, *, wait: bool) -> bool:
        """Add `frame`; without room, wait for it (`wait`) or return False. False also once closed."""
        async with self._changed:
            while not self._closed and self._frames and self._records + frame.records > self.limit:
                if not wait:
                    return False
                await self._changed.wait()
            if self._closed:
                return False
            self._frames.append(frame)
            self._records += frame.records
            self._changed.notify_all()
            return True

    async def get(self, records: int = 1) -> list[Frame]:
        """The oldest frame, waiting for one, with those after it of the same phase while they total at most
        `records` (never after a frame without records: it says the phase changed); [] once closed and empty."""
        async with self._changed:
            while not self._frames and not self._closed:
                await self._changed.wait()
            taken: list[Frame] = []
            total = 0
            while self._frames and (
                not taken
                or (
                    taken[0].records > 0
                    and self._frames[0].phase == taken[0].phase
                    and total + self._frames[0].records <= records
                )
            ):
                frame = self._frames.popleft()
                taken.append(frame)
                total += frame.records
            self._records -= total
            self._changed.notify_all()
            return taken

    async def close(self, *, discard: bool = False) -> None:
        """No more frames; `get` still hands out those held, unless `discard`."""
        async with self._changed:
            self._closed = True
            if discard:
                self._frames.clear()
                self._records = 0
            self._changed.notify_all()


class SubscriptionSession:
    """One WebSocket subscriber: `run(websocket)` sends frames until the client leaves or an error ends it, raising
    SlowSubscriber or the error (ApiError, InvalidQueryError, ...) for the route to report."""

    def __init__(
        self,
        state: ApiState,
        kind: str,
        symbols: list[str] | None,
        exchange: str | None,
        since: datetime | None,
        cursor: str | None,
        interval: str | None = None,
    ) -> None:
        self.state = state
        self.kind, self.symbols, self.exchange, self.since = kind, symbols, exchange, since
        self.interval = interval  # of bars (kind "bars")
        self.cursor = cursor  # of the last frame sent
        self.sent = 0
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._slow = False
        self._buffer = FrameBuffer(state.api.subscribe_buffer_records)

    async def run(self, websocket: WebSocket) -> None:
        engine = self.state.require_engine()
        reader = self.state.fresh_reader()
        hub = self.state.live_hub()
        loop = asyncio.get_running_loop()
        options = SubscribeOptions(
            batch_rows=self.state.api.replay_batch_rows,
            hub_buffer_records=self.state.api.subscribe_buffer_records,
        )
        if self.kind == "bars":
            batches = subscribe_bars(
                engine,
                reader,
                self.symbols,
                self.interval or "",
                exchange=self.exchange,
                since=self.since,
                cursor=self.cursor,
                options=options,
                live_hub=hub,
            )
        else:
            batches = subscribe(
                engine,
                reader,
                self.kind,
                self.symbols,
                exchange=self.exchange,
                since=self.since,
                cursor=self.cursor,
                options=options,
                live_hub=hub,
            )
        gave_up = asyncio.Event()
        thread = threading.Thread(
            target=self._produce, args=(batches, loop, gave_up), name="k2-api-subscribe", daemon=True
        )
        thread.start()
        leaving = asyncio.create_task(_client_leaves(websocket))
        giving_up = asyncio.create_task(gave_up.wait())
        try:
            while True:
                # Frames that queued up while the last message went out leave as one: a busy symbol's many small
                # live batches cost one send (and one compression) per subscriber, not one each.
                got, frames = await _unless(self._buffer.get(records=self.state.api.replay_batch_rows), leaving)
                if not got or not frames:
                    break
                # A send waits while the client's connection is full: a slow subscriber may be given up meanwhile.
                sent, _ = await _unless(websocket.send_text(frame_text(frames)), leaving, giving_up)
                if not sent:
                    break
                records = sum(frame.records for frame in frames)
                self.cursor = frames[-1].cursor
                self.sent += records
                metrics.API_SUBSCRIPTION_RECORDS.labels(frames[-1].phase).inc(records)
            if self._slow:
                raise SlowSubscriber(self.cursor)
            if self._failure is not None:
                raise self._failure
        finally:
            leaving.cancel()
            giving_up.cancel()
            self._stop.set()
            await self._buffer.close()
            await asyncio.to_thread(thread.join, _GOODBYE_SECONDS)

    def _produce(
        self, batches: Iterator[SubscriptionBatch], loop: asyncio.AbstractEventLoop, gave_up: asyncio.Event
    ) -> None:
        """The thread: frames from the subscription into the buffer until stopped, too slow, or failed."""
        last_phase, last_cursor, last_frame_at = None, self.cursor, 0.0
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                rows = batch.records.num_rows
                changed = batch.phase != last_phase
                moved = batch.cursor != last_cursor and time.monotonic() - last_frame_at >= _CURSOR_ONLY_SECONDS
                if not (rows or changed or moved):
                    continue
                lines = b"".join(map(_SHARED_LINES.lines, batch.shared or (batch.records,)))
                frame = Frame(lines, batch.cursor, rows, batch.phase)
                put = self._buffer.put(frame, wait=batch.phase != "live")
                if not asyncio.run_coroutine_threadsafe(put, loop).result():
                    self._give_up(loop, gave_up)
                    return
                last_phase, last_cursor, last_frame_at = batch.phase, batch.cursor, time.monotonic()
        except FellBehind:  # the live hub dropped it: as slow as a full send buffer
            self._give_up(loop, gave_up)
        except KafkaException as exc:
            self._failure = ApiError(503, f"Kafka could not be read: {exc}", code="kafka_unavailable")
        except Exception as exc:
            self._failure = exc
        finally:
            batches.close()
            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._buffer.close(), loop)

    def _give_up(self, loop: asyncio.AbstractEventLoop, gave_up: asyncio.Event) -> None:
        """Too slow for the live records (unless stopping anyway): what the buffer holds will not be sent, so the
        cursor stays before it."""
        self._slow = not self._stop.is_set()
        if self._slow:
            asyncio.run_coroutine_threadsafe(self._buffer.close(discard=True), loop)
            loop.call_soon_threadsafe(gave_up.set)


async def _client_leaves(websocket: WebSocket) -> None:
    """Returns when the client closes the connection (anything it sends is ignored)."""
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    except (OSError, RuntimeError):
        return  # the connection is gone


async def _unless(work: Awaitable[T], *stops: asyncio.Future[None]) -> tuple[bool, T | None]:
    """(True, the result of `work`), or (False, None) when one of `stops` finished first (`work` is cancelled)."""
    task = asyncio.ensure_future(work)
    done, _pending = await asyncio.wait({task, *stops}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return True, task.result()
    task.cancel()
    return False, None


async def say_goodbye(websocket: WebSocket, message: dict[str, object], code: int, reason: str = "") -> None:
    """Send a last message and close with `code`, giving a slow client `_GOODBYE_SECONDS` to take them."""

    async def goodbye() -> None:
        await websocket.send_text(orjson.dumps(message).decode())
        await websocket.close(code, reason)

    try:
        await asyncio.wait_for(goodbye(), _GOODBYE_SECONDS)
    except (TimeoutError, OSError, RuntimeError):
        return  # the client is gone or stuck: nobody to tell
