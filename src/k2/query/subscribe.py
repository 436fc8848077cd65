"""Subscriptions: one stream of a table's records that delivers history, then what Kafka holds beyond it, then live.

A subscription with `since` starts at the lake's newest snapshot S, whose per-partition next offsets are known
(k2.query.fresh.FreshReader.lake_boundary, the same boundary fresh reads use):

1. history: the lake's rows at S with timestamp >= since, in event order (timestamp, source_sequence, message_id),
   read in keyset pages (k2.query.market.read_page, as a replay reads them);
2. tail: the Kafka records from exactly S's next offsets on, in log order per partition (a symbol's records share a
   partition, so per symbol the order the source produced them);
3. live: the same consumer, once it has reached the log end it last fetched; it goes on as records arrive.

No gap and no duplicate at the seams, by offsets and message_id, not by time: the tail starts where S's recorded
offsets end, and a Kafka record is dropped when its message_id is in the lake at S (in its own (day, exchange)
partition, matching the subscription: it went out as history, or would have) or among the last `dedup_window`
message_ids delivered from Kafka (producer retries, reloads). Without `since` the subscription starts at the log
end (no history) with the same dedup against S.

Every batch carries a cursor: the filter it belongs to, S, `since`, the history position (a keyset cursor, or
done) and per partition the next offset with each topic's id. Resuming from it re-reads nothing delivered and skips
nothing: history continues after the keyset position at S, Kafka from the offsets. A topic whose id changed (a
broker that lost its log) or that is new is read from offset 0. On resume in the Kafka part, the message_ids of the
last `resume_window` messages before the cursor in each partition fill the dedup window again, so a duplicate of a
record delivered before the cursor is not sent again unless it lies further back in the log.

With a `live_hub` (k2.query.live_hub, one per process: the API's), a subscription that has caught up joins the
hub's shared consumer of each topic at exactly its next offsets and closes its own: the live records are fetched and
decoded once for every subscriber of the process. If a topic's feed is further ahead than it keeps, the subscription
reads on with its own consumer and joins at its next live batch. Without `since`, when the hub's feeds already read
every partition, the subscription starts where they are instead of probing the log end. A subscriber more than
`hub_buffer_records` behind the feed is dropped by it: the iterator raises FellBehind, and the last batch's cursor
resumes it exactly.

Records are chosen by their Kafka key before they are decoded (the producer keys by symbol): a subscription of one
symbol does not decode the rest of a busy topic.

Memory is bounded: a batch of at most `batch_rows` records, librdkafka's fetch queue (`queued.max.messages.kbytes`),
the dedup window, and the lake's message_ids of the (day, exchange) partitions the Kafka records fall on (at most
`lake_partitions` kept, matching rows only).
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

import numpy as np
import pyarrow as pa
import structlog
from cachetools import LRUCache
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from k2.lake.dedup import DAY_MICROS, IdSet, PartitionKey, partition_keys
from k2.lake.tables import table_identifier
from k2.query.cursor import pack, unpack
from k2.query.engine import PinnedView, QueryEngine, QueryError
from k2.query.filters import EVENT_SPECS, InvalidQueryError, positive, record_spec, select_rows, symbol_list, utc, where
from k2.query.fresh import FreshReader, Kafka, Partition, fetched_end, opened_reader
from k2.query.live_hub import Inbox, LiveHub
from k2.query.market import read_page
from k2.schema.arrow import empty_rows
from k2.schema.codecs import datetime_from_micros, micros_from_datetime
from k2.schema.fields import RecordSpec

log = structlog.get_logger(__name__)

Phase = Literal["history", "tail", "live"]

_VERSION = 1
# Each subscriber has its own consumer: librdkafka's prefetch (default 64 MiB per consumer) bounds its memory.
_FETCH_QUEUE_KBYTES = 8192
_PROBE_MESSAGES = 10_000
_PROBE_WAIT_SECONDS = 0.05


@dataclass(frozen=True)
class SubscribeOptions:
    """`batch_rows`: most records per batch; `poll_seconds`: longest wait for a record before an empty batch (so a
    caller can stop an idle subscription); `dedup_window`: message_ids delivered from Kafka kept for dedup (at least
    this many, at most twice); `resume_window`: messages read back per partition before a cursor's offsets to fill
    that window again on resume; `lake_partitions`: (day, exchange) partitions of the lake's ids kept;
    `topics_seconds`: how often new topics (a venue's first records) are looked for; `hub_buffer_records`: most
    records a live hub holds for the subscriber before dropping it."""

    batch_rows: int = 1000
    poll_seconds: float = 0.2
    dedup_window: int = 200_000
    resume_window: int = 10_000
    lake_partitions: int = 4
    topics_seconds: float = 5.0
    hub_buffer_records: int = 10_000


@dataclass(frozen=True)
class SubscriptionBatch:
    """Records of one step of a subscription (V2 columns; empty: nothing arrived within `poll_seconds`), and the
    cursor that resumes right after them. `phase`: history (the lake), tail (Kafka, catching up with the log end as
    of the subscription's start) or live (caught up: records as they arrive). `shared`: tables whose rows, in
    order, are `records`, the same objects for every subscriber of the filter on the live hub (to encode each once
    for all of them); empty when `records` is this subscription's own."""

    records: pa.Table
    cursor: str
    phase: Phase
    shared: tuple[pa.Table, ...] = ()


@dataclass(frozen=True)
class Position:
    """What a cursor holds (its text is opaque to callers)."""

    filter: str  # digest of kind, symbols and exchange: a cursor resumes only the subscription it came from
    snapshot_id: int | None  # S: the lake the history and the dedup read
    since: int | None  # microseconds UTC
    history_done: bool
    history_after: str | None  # keyset cursor of the last history row delivered
    offsets: dict[Partition, int] = field(default_factory=dict)  # next offset to deliver per partition
    topic_ids: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        topics: dict[str, list] = {}
        for (topic, partition), offset in sorted(self.offsets.items()):
            topics.setdefault(topic, [self.topic_ids.get(topic, ""), {}])[1][str(partition)] = offset
        raw = [
            _VERSION,
            self.filter,
            self.snapshot_id,
            self.since,
            self.history_done,
            self.history_after,
            topics,
        ]
        return pack(raw)

    @classmethod
    def decode(cls, text: str) -> Position:
        bad = InvalidQueryError("cursor is not one a K2 subscription issued: pass back the last cursor unchanged")
        try:
            version, digest, snapshot_id, since, done, after, topics = unpack(text)
            offsets = {
                (topic, int(partition)): int(offset)
                for topic, (_id, partitions) in topics.items()
                for partition, offset in partitions.items()
            }
            ids = {topic: str(topic_id) for topic, (topic_id, _partitions) in topics.items()}
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, AttributeError):
            raise bad from None
        typed = (
            version == _VERSION
            and isinstance(digest, str)
            and (snapshot_id is None or _is_int(snapshot_id))
            and (since is None or _is_int(since))
            and isinstance(done, bool)
            and (after is None or isinstance(after, str))
        )
        if not typed:
            raise bad
        return cls(digest, snapshot_id, since, done, after, offsets, ids)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def filter_digest(spec: RecordSpec, symbols: list[str] | None, exchange: str | None) -> str:
    """What a cursor remembers of the subscription's filter, so it cannot resume another one."""
    raw = json.dumps([spec.name, sorted(symbols) if symbols is not None else None, exchange])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def subscribe(
    engine: QueryEngine,
    kafka: Kafka,
    kind: str,
    symbols: str | Sequence[str] | None,
    *,
    exchange: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int | None = None,
    options: SubscribeOptions = SubscribeOptions(),  # frozen: one shared default is safe
    live_hub: LiveHub | None = None,
) -> Iterator[SubscriptionBatch]:
    """Batches of `kind` ("trades" or "quotes") for `symbols` (None: all) of `exchange` (None: all): the lake's rows
    from `since`, then Kafka's from the lake's end, then live; without `since`, live from the log end. `cursor`: a
    batch's cursor, to resume after it (with the same kind, symbols and exchange; `since` may be left out).

    Ends after `limit` records (the last batch's cursor right after the last of them), else never: close the
    iterator to stop (it closes its consumer). Arguments are checked when
    iteration starts: InvalidQueryError for bad ones or a cursor of another subscription or whose snapshot is gone.
    `live_hub`: the process's shared live consumers, joined once caught up; with it the iterator raises
    k2.query.live_hub.FellBehind when the caller takes batches too slowly for the live records.
    """
    spec = record_spec(kind, EVENT_SPECS)
    names = symbol_list(symbols)
    where(names, since, None, exchange)  # validate before touching Kafka
    positive(options.batch_rows, "batch_rows")
    if limit is not None:
        positive(limit, "limit")
    digest = filter_digest(spec, names, exchange)
    with opened_reader(kafka) as reader:
        consumer = _own_consumer(reader)
        stream: _Stream | None = None
        try:
            if cursor is None:
                position, consumer = _start(engine, reader, consumer, spec, digest, exchange, since, live_hub)
            else:
                position = _resume(reader, spec, digest, exchange, since, Position.decode(cursor))
            stream = _Stream(
                engine, reader, consumer, spec, names, exchange, position, options, limit, cursor is not None
            )
            stream.hub = live_hub
            for batch in itertools.chain(stream.history(), stream.kafka()):
                yield batch
                if stream.remaining == 0:
                    return
        finally:
            if stream is not None:
                stream.close()
            else:
                consumer.close()


_OWN_CONSUMER = {"queued.max.messages.kbytes": _FETCH_QUEUE_KBYTES}


def _own_consumer(reader: FreshReader) -> Consumer:
    return reader.consumer(**_OWN_CONSUMER)


def _start(
    engine: QueryEngine,
    reader: FreshReader,
    consumer: Consumer,
    spec: RecordSpec,
    digest: str,
    exchange: str | None,
    since: datetime | None,
    live_hub: LiveHub | None,
) -> tuple[Position, Consumer]:
    """Where a new subscription starts, and the consumer to go on with (`consumer`, or its replacement)."""
    boundary = reader.lake_boundary(engine, spec, consumer, exchange)
    if since is not None:
        start = Position(
            digest,
            boundary.snapshot_id,
            micros_from_datetime(utc(since, "since")),
            history_done=boundary.snapshot_id is None,
            history_after=None,
            offsets=boundary.start,
            topic_ids=boundary.topic_ids,
        )
        return start, consumer
    ends = _hub_positions(live_hub, list(boundary.start))
    if ends is None:
        ends, consumer = _log_ends(reader, consumer, list(boundary.start))
    return Position(digest, boundary.snapshot_id, None, True, None, ends, boundary.topic_ids), consumer


def _hub_positions(live_hub: LiveHub | None, keys: list[Partition]) -> dict[Partition, int] | None:
    """Where the hub's running feeds of every partition in `keys` are (the live position now), else None."""
    if live_hub is None or not keys:
        return None
    positions: dict[Partition, int] = {}
    for topic in {t for t, _p in keys}:
        feed = live_hub.positions(topic)
        if feed is None:
            return None
        positions.update({(topic, p): offset for p, offset in feed.items()})
    return positions if set(positions) == set(keys) else None


def _log_ends(
    reader: FreshReader, consumer: Consumer, keys: list[Partition], timeout: float = 10.0
) -> tuple[dict[Partition, int], Consumer]:
    """Where each partition's log ends, as a fetch answers it, and the consumer to go on with (replaced when its
    fetches starved). ListOffsets alone can fall short on the embedded broker (within the last batch produced,
    docs/stack-notes.md "Embedded broker"), so fetch from its answer once; the records read on the way are older than
    the subscription and dropped."""
    if not keys:
        return {}, consumer
    listed = {key: max(consumer.get_watermark_offsets(TopicPartition(*key), 10, False)[1], 0) for key in keys}
    consumer.incremental_assign([TopicPartition(t, p, offset) for (t, p), offset in listed.items()])
    watch = reader.watch()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if consumer.consume(_PROBE_MESSAGES, _PROBE_WAIT_SECONDS):
                watch.fed()
            elif watch.starved(consumer, listed):
                consumer, watch = reader.widened(consumer, watch, listed, **_OWN_CONSUMER)
            ends = {key: fetched_end(consumer, TopicPartition(*key)) for key in keys}
            if all(end != float("inf") for end in ends.values()):
                return {key: int(end) for key, end in ends.items()}, consumer
            if time.monotonic() >= deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "no fetch answered for the log end"))
    finally:
        consumer.incremental_unassign([TopicPartition(*key) for key in keys])


def _resume(
    reader: FreshReader,
    spec: RecordSpec,
    digest: str,
    exchange: str | None,
    since: datetime | None,
    position: Position,
) -> Position:
    if position.filter != digest:
        raise InvalidQueryError(
            "this cursor belongs to a subscription of another kind, symbols or exchange: resume with the same ones"
        )
    if since is not None and micros_from_datetime(utc(since, "since")) != position.since:
        raise InvalidQueryError("the cursor carries its own since: leave since out when resuming, or pass the same")
    ids = reader.logs(spec, exchange)
    # A log the cursor does not know (new topic, or a broker that lost its log) is read from its first offset.
    same_log = {topic for topic, topic_id in ids.items() if position.topic_ids.get(topic) == topic_id}
    kept = {key: offset for key, offset in position.offsets.items() if key[0] in same_log}
    return replace(position, offsets=kept, topic_ids=ids)


class _LakeIds:
    """The message_ids of the lake at S that match the subscription, per (day, exchange) partition, loaded when a
    Kafka record first falls on it (at most `kept` partitions held)."""

    def __init__(
        self, engine: QueryEngine, spec: RecordSpec, symbols: list[str] | None, since: datetime | None, kept: int
    ) -> None:
        self._engine = engine
        self._spec = spec
        self._symbols = symbols
        self._since = since
        self._ids: LRUCache[PartitionKey, IdSet] = LRUCache(maxsize=kept)

    def load(self, snapshot_id: int, key: PartitionKey) -> IdSet:
        if (known := self._ids.get(key)) is not None:
            return known
        day, exchange = key
        start = datetime_from_micros(day * DAY_MICROS)
        if self._since is not None:
            start = max(start, self._since)
        end = datetime_from_micros((day + 1) * DAY_MICROS)
        condition, params = where(self._symbols, start, end, exchange)
        query = f"SELECT message_id FROM {table_identifier(self._spec)} WHERE {condition}"
        ids = IdSet(_pinned(self._engine, snapshot_id).sql(query, params)["message_id"].combine_chunks())
        self._ids[key] = ids
        return ids


def _pinned(engine: QueryEngine, snapshot_id: int) -> QueryEngine | PinnedView:
    try:
        return engine.at(snapshot_id)
    except QueryError:
        raise InvalidQueryError(
            f"the lake snapshot {snapshot_id} this subscription reads is gone (expired by maintenance):"
            " subscribe again with since"
        ) from None


class _RecentIds:
    """The message_ids delivered from Kafka lately: at least the last `size`, at most twice that (two generations).

    Python sets: a live batch is a handful of records, and a set answers those faster than a hashed Arrow index.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._current or message_id in self._previous

    def add(self, message_id: str) -> None:
        if len(self._current) >= self._size:
            self._previous, self._current = self._current, set()
        self._current.add(message_id)


class _Stream:
    """The running subscription: its position moves with every batch it yields."""

    def __init__(
        self,
        engine: QueryEngine,
        reader: FreshReader,
        consumer: Consumer,
        spec: RecordSpec,
        symbols: list[str] | None,
        exchange: str | None,
        position: Position,
        options: SubscribeOptions,
        limit: int | None,
        resumed: bool,
    ) -> None:
        self.engine, self.reader, self.spec = engine, reader, spec
        self.consumer: Consumer | None = consumer  # None while the live records come from the hub
        self.watch = reader.watch()
        self.hub: LiveHub | None = None
        self.inbox: Inbox | None = None
        self.keys = {s.encode() for s in symbols} if symbols is not None else None
        self.caught_up = False
        self.symbols, self.exchange, self.position, self.options = symbols, exchange, position, options
        self.since = datetime_from_micros(position.since) if position.since is not None else None
        self.lake_ids = _LakeIds(engine, spec, symbols, self.since, options.lake_partitions)
        self.recent = _RecentIds(options.dedup_window)
        self.remaining = limit
        self.resumed_in_kafka = resumed and position.history_done

    def room(self) -> int:
        """Most records the next batch may hold."""
        return self.options.batch_rows if self.remaining is None else min(self.options.batch_rows, self.remaining)

    def _delivered(self, rows: pa.Table) -> None:
        if self.remaining is not None:
            self.remaining -= rows.num_rows

    def history(self) -> Iterator[SubscriptionBatch]:
        """The lake's rows at S in event order, a keyset page per batch (one snapshot throughout, as a replay)."""
        if self.position.history_done or self.position.snapshot_id is None:
            return
        reader = _pinned(self.engine, self.position.snapshot_id)
        while self.remaining != 0:
            page = read_page(
                reader,
                self.spec.name,
                self.symbols,
                self.since,
                None,
                exchange=self.exchange,
                after=self.position.history_after,
                limit=self.room(),
            )
            if page.cursor is None:
                break
            self.position = replace(self.position, history_after=page.cursor)
            self._delivered(page.rows)
            yield SubscriptionBatch(page.rows, self.position.encode(), "history")
            if not page.has_more:
                break
        if self.remaining != 0:
            self.position = replace(self.position, history_done=True)

    def close(self) -> None:
        if self.inbox is not None and self.hub is not None:
            self.hub.leave(self.inbox)
            self.inbox = None
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def kafka(self) -> Iterator[SubscriptionBatch]:
        if self.resumed_in_kafka:
            self._recall(self.position.offsets)
        offsets: dict[Partition, int] = {}
        self._assign_new(offsets)
        looked_for_topics = time.monotonic()
        while True:
            shared: tuple[pa.Table, ...] = ()
            if self.inbox is not None:
                rows, shared = self._from_hub(offsets)
            else:
                rows = self._from_consumer(offsets)
            self._delivered(rows)
            self.position = replace(self.position, offsets=dict(offsets))
            if not self.caught_up and self.consumer is not None:
                self.caught_up = all(
                    offsets[key] >= fetched_end(self.consumer, TopicPartition(*key)) for key in offsets
                )
            yield SubscriptionBatch(rows, self.position.encode(), "live" if self.caught_up else "tail", shared)
            if self.caught_up and self.hub is not None and self.inbox is None:
                self._join_hub(offsets)
            if time.monotonic() - looked_for_topics >= self.options.topics_seconds:
                looked_for_topics = time.monotonic()
                self._assign_new(offsets)

    def _from_consumer(self, offsets: dict[Partition, int]) -> pa.Table:
        """The next records of the subscription's own consumer; `offsets` moves past every message read."""
        good: list[Message] = []
        messages = self._next_messages()
        if not messages and self.watch.starved(self.consumer, offsets):
            self._widen(offsets)
        for msg in messages:
            if msg.error():
                log.warning("subscribe.consume_error", error=msg.error().str())
                continue
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
            if self.keys is None or msg.key() is None or msg.key() in self.keys:
                good.append(msg)  # a record of another symbol is not decoded at all
        rows, _skipped = self.reader.decode(self.spec, good)
        return self._unseen(select_rows(rows, self.symbols, self.since, None, self.exchange))

    def _from_hub(self, offsets: dict[Partition, int]) -> tuple[pa.Table, tuple[pa.Table, ...]]:
        """The next records the hub decoded for this subscription, and the hub's tables they are when none was a
        duplicate; `offsets` moves to the ends of what it covered."""
        assert self.inbox is not None
        chunks = self.inbox.take(self.room(), self.options.poll_seconds)
        for chunk in chunks:
            offsets.update(chunk.ends)
        parts = tuple(chunk.rows for chunk in chunks if chunk.rows.num_rows)
        if not parts:
            return empty_rows(self.spec), ()
        whole = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        unseen = self._unseen(whole)  # the hub applied the filter
        return unseen, parts if unseen is whole else ()

    def _join_hub(self, offsets: dict[Partition, int]) -> None:
        """Take the live records from the hub from exactly `offsets` on, and close the own consumer; when a feed is
        too far ahead, stay on the own consumer (tried again after the next batch)."""
        assert self.hub is not None
        inbox = Inbox(self.symbols, self.options.hub_buffer_records, since=self.since, exchange=self.exchange)
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, partition), offset in offsets.items():
            by_topic.setdefault(topic, {})[partition] = offset
        for topic, start in by_topic.items():
            if not self.hub.join(inbox, topic, start):
                self.hub.leave(inbox)
                return
        self.inbox = inbox
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def _leave_hub(self, offsets: dict[Partition, int]) -> None:
        """Back to an own consumer from `offsets` (a new topic the hub cannot serve from its start)."""
        if self.inbox is not None and self.hub is not None:
            self.hub.leave(self.inbox)
        self.inbox = None
        self.caught_up = False
        self.consumer = _own_consumer(self.reader)
        self.watch = self.reader.watch()
        self.consumer.incremental_assign([TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def _recall(self, offsets: dict[Partition, int], timeout: float = 10.0) -> None:
        """Put the message_ids of up to `resume_window` messages before `offsets` in each partition into the dedup
        window: what a resumed subscription may have delivered before its cursor."""
        window = self.options.resume_window
        starts = {key: max(0, offset - window) for key, offset in offsets.items() if offset > 0 and window > 0}
        if not starts:
            return
        assigned = [TopicPartition(t, p, start) for (t, p), start in starts.items()]
        assert self.consumer is not None
        self.consumer.incremental_assign(assigned)
        try:
            reached = dict(starts)
            deadline = time.monotonic() + timeout
            while any(reached[key] < offsets[key] for key in starts) and time.monotonic() < deadline:
                before = []
                messages = self.consumer.consume(self.options.batch_rows, self.options.poll_seconds)
                if messages:
                    self.watch.fed()
                elif self.watch.starved(self.consumer, reached):
                    self._widen(reached)
                for msg in messages:
                    if msg.error():
                        continue
                    key = (msg.topic(), msg.partition())
                    reached[key] = max(reached[key], msg.offset() + 1)
                    if msg.offset() < offsets[key]:
                        before.append(msg)
                rows, _skipped = self.reader.decode(self.spec, before)
                for message_id in rows["message_id"].to_pylist():
                    self.recent.add(message_id)
        finally:
            self.consumer.incremental_unassign(assigned)

    def _assign_new(self, offsets: dict[Partition, int]) -> None:
        """Assign each partition of the feeding topics not in `offsets` yet: at the position's offset when it has
        one (the start), else from 0 (a topic or partition created since); `offsets` gains them. On the hub, its feed
        of a new topic is joined at those offsets, or the subscription goes back to its own consumer."""
        ids = self.reader.logs(self.spec, self.exchange)
        listed = self.reader.partitions(ids)
        new = [(t, p) for t, partitions in listed.items() for p in partitions if (t, p) not in offsets]
        if not new:
            return
        for key in new:
            offsets[key] = self.position.offsets.get(key, 0)
        self.position = replace(self.position, offsets=dict(offsets), topic_ids={**self.position.topic_ids, **ids})
        if self.consumer is not None:
            self.consumer.incremental_assign([TopicPartition(t, p, offsets[(t, p)]) for t, p in new])
            return
        assert self.inbox is not None and self.hub is not None
        for topic in {t for t, _p in new}:
            start = {p: o for (t, p), o in offsets.items() if t == topic}
            if not self.hub.join(self.inbox, topic, start):
                self._leave_hub(offsets)
                return

    def _widen(self, positions: dict[Partition, int]) -> None:
        """The own consumer's fetches starve (a broker that needs a longer fetch wait): reopen it at `positions`."""
        assert self.consumer is not None
        self.consumer, self.watch = self.reader.widened(self.consumer, self.watch, positions, **_OWN_CONSUMER)

    def _next_messages(self) -> list[Message]:
        """Up to `room()` messages: waits for the first (poll_seconds at most), then takes what is already there."""
        assert self.consumer is not None
        first = self.consumer.poll(self.options.poll_seconds)
        if first is None:
            return []
        self.watch.fed()
        more = self.room() - 1
        return [first, *self.consumer.consume(more, 0)] if more else [first]

    def _unseen(self, rows: pa.Table) -> pa.Table:
        """The Kafka records (of the subscription's filter) not delivered yet, by the lake at S or from Kafka."""
        if not rows.num_rows:
            return rows
        ids = rows["message_id"].to_pylist()
        seen: set[str] = set()
        fresh = np.zeros(len(ids), dtype=bool)
        for at, message_id in enumerate(ids):
            fresh[at] = message_id not in seen and message_id not in self.recent
            seen.add(message_id)
        if self.position.snapshot_id is not None and fresh.any():
            keys = partition_keys(rows)
            days, exchanges = keys["_day"].to_numpy(), keys["exchange"].to_pylist()
            for key in dict.fromkeys(zip(days.tolist(), exchanges, strict=True)):
                in_partition = (days == key[0]) & np.array([e == key[1] for e in exchanges])
                at = np.flatnonzero(in_partition & fresh)
                if len(at):
                    lake = self.lake_ids.load(self.position.snapshot_id, key)
                    fresh[at[lake.contains(pa.array([ids[i] for i in at], pa.string()))]] = False
        for at in np.flatnonzero(fresh):
            self.recent.add(ids[at])
        return rows if fresh.all() else rows.filter(pa.array(fresh))
