"""Fresh reads: the lake plus what Kafka holds beyond the lake's last commit, as one result.

The sink commits every few seconds (or 100k rows), so a lake-only query lags the market by up to a commit. Here the
lake's snapshot summaries say, per partition, the next offset the lake has not got (k2.lake.offsets); the records
from there to the end of the log are read straight from Kafka — manual assignment, no group join, no commit, so
the sink is not disturbed — decoded, filtered like the lake query, and merged with it.

Consistency rules:
- Offsets count only for the log's *current* topic id: a restarted broker renumbers from 0 under a new id, and old
  offsets would skip its fresh records (docs/stack-notes.md, "Embedded broker"). A log the lake knows nothing of is read
  from offset 0.
- The sink group's committed offset is used when higher (a commit of rows that were all duplicates moves the group
  but writes no snapshot). It is read *before* the table is loaded: the sink appends to Iceberg before it commits
  to Kafka, so whatever the group had committed then is in the snapshot loaded after.
- The lake part is read at the snapshot whose offsets were used (not the engine's possibly older view), so no
  record falls between the two. While the engine's view lags the table, each query pins that newer snapshot (the
  engine keeps 16 pins): a long-lived caller should `engine.refresh()` after commits.
- A record in both the lake and the tail is returned once, as the lake has it; duplicates within the tail
  (producer retries, reloads) once, the first read wins.
- `limit` applies after the merge, in event order: timestamp, source_sequence (nulls last), message_id.

"Caught up" is decided from the high watermark librdkafka caches from its own fetches — ListOffsets is wrong on the
embedded broker (docs/stack-notes.md, "Embedded broker") — and bounded by a time budget: past it, what was read so far
is returned and the Tail says `caught_up=False`.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Self

import duckdb
import fastavro
import pyarrow as pa
import structlog
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from k2.bus.batch_decode import BatchDecodeError, decode_batch
from k2.bus.clients import base_config, consumer_config, fetch_committed, topic_ids
from k2.bus.registry_client import RegistryClient, RegistryError
from k2.bus.serde import DecodeError, decode, schema_id_of
from k2.bus.stack import Endpoints
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.lake.offsets import next_offsets
from k2.query.engine import QueryEngine
from k2.query.filters import (
    EVENT_SPECS,
    event_order,
    positive,
    projection,
    record_spec,
    select_rows,
    symbol_list,
    where,
)
from k2.query.market import Symbols, events, latest
from k2.schema.arrow import empty_rows, records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.fields import RecordSpec

log = structlog.get_logger(__name__)

# Messages asked of librdkafka per consume() call; large enough that a 100k tail takes a handful of calls.
_CONSUME_BATCH = 10_000

# A Kafka broker holds a fetch at the end of a partition up to fetch.wait.max.ms (500 ms by default) waiting for data:
# a query should not wait for data that is not there, and a live record should be fetched soon after it lands. The
# embedded broker does not answer a waiting fetch as soon as a record lands (the longer the wait, the later a live
# record comes), and it answers an *empty* fetch when it cannot find the offset within the wait: on its in-memory log
# that search grows with the log (10-20 ms at 2.4 M messages, 20-50 ms at 6 M). So readers start short and widen the
# wait when their fetches starve (docs/stack-notes.md, "Embedded broker").
_FIRST_FETCH_WAIT_MS = 5
_MOST_FETCH_WAIT_MS = 5_000

# The columnar decoder costs ~4.5 ms per call whatever the size (a few numpy steps per field), fastavro ~0.1-0.2 ms per
# message: below this many messages (a live subscription's usual batch) decoding them one by one is quicker.
_BATCH_DECODE_FROM = 32

Partition = tuple[str, int]


@dataclass(frozen=True)
class FreshSource:
    """Where the not-yet-committed tail lives: the Kafka log and the registry holding its writer schemas.

    `poll_seconds` is how long one fetch may wait for records; `budget_seconds` bounds the whole tail read (what
    was read by then is returned, marked not caught up). `group` is the sink's consumer group (settings default).
    """

    bootstrap: str
    registry_url: str
    settings: Settings
    poll_seconds: float = 0.3
    budget_seconds: float = 10.0
    group: str | None = None

    @classmethod
    def from_endpoints(cls, endpoints: Endpoints, settings: Settings, **options: Any) -> FreshSource:
        """The source for a running stack (`with Stack(settings) as endpoints:`)."""
        return cls(endpoints.bootstrap, endpoints.registry_url, settings, **options)


@dataclass
class Tail:
    """Records of one table that Kafka holds beyond the lake's snapshot `snapshot_id`.

    `rows` are V2 columns (arrow_schema of the table), in log order per partition: every record, or with `symbols`
    those keyed by one of them (plus any without a key), the rest not decoded at all. `start`/`end` are the
    offsets read per partition, [start, end). `skipped` counts messages that do not decode (the sink dead-letters
    those, so the lake will not have them either).
    """

    rows: pa.Table
    snapshot_id: int | None
    start: dict[Partition, int] = field(default_factory=dict)
    end: dict[Partition, int] = field(default_factory=dict)
    topic_ids: dict[str, str] = field(default_factory=dict)
    caught_up: bool = True
    skipped: int = 0
    fetched: int = 0  # messages this read fetched from Kafka (the reader keeps what earlier reads fetched)


class FetchWait:
    """fetch.wait.max.ms of one reader's consumers: short at first, doubled each time a consumer's fetches starve
    at the current wait (never shortened: the log only grows until the broker restarts)."""

    def __init__(self, ms: int = _FIRST_FETCH_WAIT_MS) -> None:
        self.ms = ms
        self._lock = threading.Lock()

    def widen(self, starved_at: int) -> None:
        """Widen past `starved_at` ms, unless another consumer already did."""
        with self._lock:
            if self.ms <= starved_at < _MOST_FETCH_WAIT_MS:
                self.ms = min(max(starved_at * 2, 1), _MOST_FETCH_WAIT_MS)
                log.warning(
                    "fresh.fetch_wait_widened",
                    fetch_wait_ms=self.ms,
                    why="fetches came back empty with records past the position (the embedded broker on a long log:"
                    " live records now wait up to this long at the broker; Apache Kafka does not need it)",
                )


class Starvation:
    """Tells a consumer whose fetches come back empty although its partitions hold records past its position (a
    fetch wait too short for the broker): no message for a while, and a partition whose end, as the last fetch
    reported it, lies beyond the position (or no fetch has answered). `wait_ms`: the consumer's fetch wait."""

    def __init__(self, wait_ms: int) -> None:
        self.wait_ms = wait_ms
        self._quiet = max(0.25, 4 * wait_ms / 1000)  # a healthy fetch of records already there answers in ms
        self._fed_at = time.monotonic()

    def fed(self) -> None:
        self._fed_at = time.monotonic()

    def starved(self, consumer: Consumer, positions: dict[Partition, int]) -> bool:
        if time.monotonic() - self._fed_at < self._quiet:
            return False
        return any(offset < fetched_end(consumer, TopicPartition(*key)) for key, offset in positions.items())


@dataclass(frozen=True)
class Boundary:
    """Where the lake ends in the log: its newest snapshot, and per partition of the topics feeding the table the
    first offset that snapshot has not got (the group's committed offset when higher); topic ids per topic."""

    snapshot_id: int | None
    start: dict[Partition, int]
    topic_ids: dict[str, str]


def feeding_topics(names: Sequence[str], spec: RecordSpec, exchange: str | None = None) -> list[str]:
    """The market topics (market.<asset_class>.<data_type>.<exchange>) whose records land in `spec`'s table.

    With `exchange`, only that venue's topics: topic names carry the records' exchange, lower-cased (k2.bus.topics).
    """
    chosen = []
    for name in names:
        try:
            topic = TopicName.parse(name)
        except ValueError:
            continue  # DLQ and foreign topics
        if topic.data_type is spec.data_type and (exchange is None or topic.exchange == exchange.lower()):
            chosen.append(name)
    return sorted(chosen)


class FreshReader:
    """The long-lived parts of fresh reads — registry client, admin client — kept across queries.

    A reader per process (e.g. the API's) saves ~0.3 s per query over opening them each time (extension load, TLS
    context); the functions below accept either a FreshSource (opened and closed per call) or a FreshReader.
    Thread-safe; close it when done (or use `with`). `fetch_wait_ms`: the fetch wait its consumers start with
    (`fetch_wait` widens it when their fetches starve).
    """

    def __init__(
        self, source: FreshSource, *, kept_messages: int = 500_000, fetch_wait_ms: int = _FIRST_FETCH_WAIT_MS
    ) -> None:
        self.source = source
        self._admin = AdminClient(base_config(source.settings, source.bootstrap))
        self._registry = RegistryClient.for_settings(source.settings, source.registry_url)
        self._kept = _KeptTail(kept_messages)
        self._tail_consumer: Consumer | None = None  # guarded by the kept tail's lock
        self.fetch_wait = FetchWait(fetch_wait_ms)

    def tail(self, engine: QueryEngine, kind: str, *, exchange: str | None = None, symbols: Symbols = None) -> Tail:
        """Everything the topics feeding `kind`'s table hold beyond the lake's newest snapshot, decoded; with
        `symbols`, only their records are decoded (chosen by the message key: the producer keys by symbol).

        Raises confluent_kafka.KafkaException when the broker cannot be reached (check `source.bootstrap`).
        """
        spec = record_spec(kind, EVENT_SPECS)
        names = symbol_list(symbols)
        keys = {name.encode() for name in names} if names is not None else None
        with self._kept.lock:  # one tail read at a time: it extends what is kept, with the one tail consumer
            # kept across reads: a new consumer's connection and first fetch cost tens of ms per read
            consumer, self._tail_consumer = self._tail_consumer or self.consumer(), None  # back once this read ends
            try:
                boundary = self.lake_boundary(engine, spec, consumer, exchange)
                end = self._kept.fetch_from(boundary.start, boundary.topic_ids)
                fetched: list[Message] = []
                deadline = time.monotonic() + self.source.budget_seconds
                watch = self.watch()
                while True:
                    read, end, outcome = _consume(consumer, end, self.source, deadline, watch)
                    fetched += read
                    if outcome != "starved":
                        break
                    consumer, watch = self.widened(consumer, watch, end)
                consumer.unassign()  # no fetching between reads
            except BaseException:
                consumer.close()
                raise
            self._tail_consumer = consumer
            caught_up = outcome == "caught_up"
            messages = self._kept.extend(fetched, end).select(boundary.start, keys)
        rows, skipped = self.decode(spec, messages)
        if not caught_up:
            log.warning("fresh.budget_exhausted", table=spec.name, budget=self.source.budget_seconds, read=len(fetched))
        return Tail(
            rows, boundary.snapshot_id, boundary.start, end, boundary.topic_ids, caught_up, skipped, len(fetched)
        )

    def consumer(self, **config: Any) -> Consumer:
        """A consumer in the sink's group (to read its committed offsets) that is only ever assigned partitions:
        it never joins the group nor commits, so the sink is not disturbed; the reader's fetch wait, and `config`
        (librdkafka settings) on top. The caller closes it."""
        return Consumer({**self.consumer_config(), "fetch.wait.max.ms": self.fetch_wait.ms, **config})

    def watch(self) -> Starvation:
        """A starvation watch for a consumer opened now (at the reader's current fetch wait)."""
        return Starvation(self.fetch_wait.ms)

    def widened(
        self, consumer: Consumer, watch: Starvation, positions: dict[Partition, int], **config: Any
    ) -> tuple[Consumer, Starvation]:
        """`consumer`, whose fetches starved at `watch`'s wait, closed, and a new one (as `consumer(**config)`)
        with a wider wait, assigned at `positions`, with its own watch."""
        consumer.close()
        self.fetch_wait.widen(watch.wait_ms)
        replacement = self.consumer(**config)
        replacement.assign([TopicPartition(t, p, offset) for (t, p), offset in positions.items()])
        return replacement, self.watch()

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings of `consumer()`, for a caller that needs other fetch settings."""
        source, settings = self.source, self.source.settings
        return consumer_config(settings, source.bootstrap, source.group or settings.sink_group)

    def logs(self, spec: RecordSpec, exchange: str | None = None) -> dict[str, str]:
        """Topic -> topic id of the topics feeding `spec`'s table (those of `exchange` only, when given)."""
        topics = feeding_topics(list(self._admin.list_topics(timeout=10).topics), spec, exchange)
        return topic_ids(self._admin, topics)

    def partitions(self, topics: Iterable[str]) -> dict[str, list[int]]:
        """Partition numbers per topic, of those of `topics` that exist."""
        metadata = self._admin.list_topics(timeout=10)
        return {t: sorted(metadata.topics[t].partitions) for t in topics if t in metadata.topics}

    def lake_boundary(
        self, engine: QueryEngine, spec: RecordSpec, consumer: Consumer, exchange: str | None = None
    ) -> Boundary:
        """The table's newest snapshot and, per partition feeding it, the first offset that snapshot has not got
        (`consumer`: one from `consumer()`, for the group's committed offsets)."""
        ids = self.logs(spec, exchange)
        metadata = consumer.list_topics(timeout=10)
        partitions = [TopicPartition(t, p) for t in ids for p in sorted(metadata.topics[t].partitions)]
        # Group offsets first, the table second: anything the group had committed is in the snapshot loaded next.
        group = {(tp.topic, tp.partition): tp.offset for tp in fetch_committed(consumer, partitions)}
        table = engine.table(spec.name)
        snapshot_id = table.metadata.current_snapshot_id if table is not None else None
        lake_next = next_offsets(table, ids) if table is not None else {}
        start = {key: max(lake_next.get(key, 0), group.get(key, -1), 0) for key in group}
        return Boundary(snapshot_id, start, ids)

    def decode(self, spec: RecordSpec, messages: Sequence[Message]) -> tuple[pa.Table, int]:
        """V2 rows from framed Avro messages, in the messages' order (batch-decoded when written with the current
        schema and many); (rows, skipped)."""
        runs: list[tuple[int, list[bytes]]] = []  # consecutive messages of one writer schema
        skipped = 0
        for msg in messages:
            value = msg.value()
            try:
                schema_id = schema_id_of(value)
            except DecodeError:
                skipped += 1
                continue
            if runs and runs[-1][0] == schema_id:
                runs[-1][1].append(value)
            else:
                runs.append((schema_id, [value]))
        current = parsed_schema(spec)
        parts: list[pa.Table] = []
        for schema_id, values in runs:
            try:
                writer = fastavro.parse_schema(self._registry.schema_by_id(schema_id))
            except RegistryError as exc:
                log.warning("fresh.unknown_schema", schema_id=schema_id, error=str(exc))
                skipped += len(values)
                continue
            if writer == current and len(values) >= _BATCH_DECODE_FROM:
                try:
                    parts.append(decode_batch(spec, values))
                    continue
                except BatchDecodeError as exc:
                    log.info("fresh.batch_decode_fallback", table=spec.name, reason=str(exc))
            table, bad = _decode_each(spec, values, writer, current)
            parts.append(table)
            skipped += bad
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return empty_rows(spec), skipped
        return pa.concat_tables(parts), skipped

    def close(self) -> None:
        """Release the clients: the embedded broker stops at once only when none is connected."""
        with self._kept.lock:
            if self._tail_consumer is not None:
                self._tail_consumer.close()
                self._tail_consumer = None
        self._registry.close()
        self._admin = None  # type: ignore[assignment]  # librdkafka handle destroyed with the object

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _KeptPartition:
    """One partition's messages from offset `first` up to `next`, in offset order, all and per key."""

    topic_id: str
    first: int
    next: int
    every: list[Message] = field(default_factory=list)
    by_key: dict[bytes | None, list[Message]] = field(default_factory=dict)

    def trim(self, start: int) -> None:
        """Forget the messages before `start` (the lake has them now)."""
        if start <= self.first:
            return
        self.every = self.every[bisect_left(self.every, start, key=Message.offset) :]
        self.by_key = {
            key: kept[at:]
            for key, kept in self.by_key.items()
            if (at := bisect_left(kept, start, key=Message.offset)) < len(kept)
        }
        self.first = start


class _KeptTail:
    """The Kafka tail beyond the lake as earlier fresh reads fetched it: a read fetches only what came since the last
    one, however far the sink is behind (at most `limit` messages kept: past that, nothing is kept)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self._partitions: dict[Partition, _KeptPartition] = {}

    def fetch_from(self, start: dict[Partition, int], ids: dict[str, str]) -> dict[Partition, int]:
        """Per partition, where to fetch from to have everything from `start` on."""
        fetch = {}
        for key, offset in start.items():
            kept = self._partitions.get(key)
            if kept is None or kept.topic_id != ids.get(key[0]) or not kept.first <= offset <= kept.next:
                kept = self._partitions[key] = _KeptPartition(ids.get(key[0], ""), offset, offset)
            kept.trim(offset)
            fetch[key] = kept.next
        return fetch

    def extend(self, messages: list[Message], end: dict[Partition, int]) -> _KeptTail:
        for msg in messages:
            kept = self._partitions[(msg.topic(), msg.partition())]
            kept.every.append(msg)
            kept.by_key.setdefault(msg.key(), []).append(msg)
        for key, offset in end.items():
            self._partitions[key].next = offset
        if sum(len(kept.every) for kept in self._partitions.values()) > self.limit:
            log.info("fresh.tail_not_kept", limit=self.limit)
            selected = _KeptTail(self.limit)
            selected._partitions, self._partitions = self._partitions, {}
            return selected  # answers this read, then is dropped
        return self

    def select(self, start: dict[Partition, int], keys: set[bytes] | None) -> list[Message]:
        """The kept messages of the partitions in `start` (from there on), in offset order per partition; with
        `keys`, only those with one of them or none."""
        chosen: list[Message] = []
        for key in start:
            kept = self._partitions[key]
            if keys is None:
                chosen += kept.every
                continue
            runs = [kept.by_key.get(k, []) for k in (*keys, None)]
            runs = [run for run in runs if run]
            chosen += runs[0] if len(runs) == 1 else sorted((m for run in runs for m in run), key=Message.offset)
        return chosen


Kafka = FreshSource | FreshReader
"""Where fresh reads get the tail: a FreshSource (clients opened per call) or a long-lived FreshReader."""


@contextmanager
def opened_reader(kafka: Kafka) -> Iterator[FreshReader]:
    if isinstance(kafka, FreshReader):
        yield kafka
        return
    with FreshReader(kafka) as reader:
        yield reader


def read_tail(
    engine: QueryEngine, kafka: Kafka, kind: str, *, exchange: str | None = None, symbols: Symbols = None
) -> Tail:
    """See FreshReader.tail."""
    with opened_reader(kafka) as reader:
        return reader.tail(engine, kind, exchange=exchange, symbols=symbols)


def _consume(
    consumer: Consumer, start: dict[Partition, int], source: FreshSource, deadline: float, watch: Starvation
) -> tuple[list[Message], dict[Partition, int], str]:
    """Read from `start` to the end of every partition until `deadline` (time.monotonic());
    (messages, next offset per partition, "caught_up" | "budget" | "starved": `watch` saw the fetches starve)."""
    if not start:
        return [], {}, "caught_up"
    tps = [TopicPartition(t, p, offset) for (t, p), offset in start.items()]
    consumer.assign(tps)
    position = dict(start)
    messages: list[Message] = []
    while (remaining := deadline - time.monotonic()) > 0:
        # consume(n, timeout) waits out its timeout unless n messages come: wait only for the first
        first = consumer.poll(min(source.poll_seconds, remaining))
        if first is not None:
            watch.fed()
        for msg in [first, *consumer.consume(_CONSUME_BATCH - 1, 0)] if first is not None else []:
            if msg.error():
                log.warning("fresh.consume_error", error=msg.error().str())
                continue
            position[(msg.topic(), msg.partition())] = msg.offset() + 1
            messages.append(msg)
        if all(position[(tp.topic, tp.partition)] >= fetched_end(consumer, tp) for tp in tps):
            return messages, position, "caught_up"
        if first is None and watch.starved(consumer, position):
            return messages, position, "starved"
    return messages, position, "budget"


def fetched_end(consumer: Consumer, tp: TopicPartition) -> float:
    """The partition's end as of librdkafka's last fetch; infinite until a fetch has answered (nothing known yet).

    cached=True is right on the embedded broker where a ListOffsets query is not (docs/stack-notes.md, "Embedded
    broker").
    """
    _low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
    return float("inf") if high is None or high < 0 else high


def _decode_each(spec: RecordSpec, values: list[bytes], writer: Any, reader: Any) -> tuple[pa.Table, int]:
    """Per-message decoding; a record that does not decode or fit the table is skipped alone."""
    records = []
    for value in values:
        try:
            records.append(decode(value, writer, reader))
        except DecodeError:
            continue
    try:
        return records_to_arrow(spec, records), len(values) - len(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError):
        pass
    good = []
    for record in records:
        try:
            records_to_arrow(spec, [record])
            good.append(record)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError):
            continue
    return records_to_arrow(spec, good), len(values) - len(good)


_MERGE_LOCK = threading.Lock()


@cache
def _merge_database() -> duckdb.DuckDBPyConnection:
    database = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    database.execute("SET GLOBAL TimeZone = 'UTC'")
    return database


def _merge_connection() -> duckdb.DuckDBPyConnection:
    """A connection of its own (registered tables are per connection) to one in-memory database: opening a database
    costs ~25 ms, a connection to it microseconds."""
    with _MERGE_LOCK:
        return _merge_database().cursor()


def _merge(lake: pa.Table, tail: pa.Table, select: str, clauses: str, params: list[Any]) -> pa.Table:
    """Lake rows plus tail rows whose message_id the lake (or an earlier tail row) has not got, then `clauses`."""
    con = _merge_connection()
    try:
        con.register("lake_rows", lake)
        con.register("tail_rows", tail.select(lake.column_names).cast(lake.schema))
        merged = (
            "SELECT * FROM (SELECT *, 0 AS _k2_src, 0 AS _k2_pos FROM lake_rows "
            "UNION ALL SELECT *, 1 AS _k2_src, row_number() OVER () AS _k2_pos FROM tail_rows) "
            "QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY _k2_src, _k2_pos) = 1"
        )
        query = f"SELECT {select} FROM ({merged}) {clauses}"
        return con.execute(query, params).to_arrow_table()
    finally:
        con.close()


def fresh_events(
    engine: QueryEngine,
    kafka: Kafka,
    kind: str,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    tail: Tail | None = None,
) -> pa.Table:
    """As k2.query.market.events, plus the records Kafka holds that the lake has not committed yet.

    Returns the table's V2 columns (or `columns`) in event order, each message_id once, at most `limit` rows
    counted after the merge. Raises InvalidQueryError for bad arguments (same checks as `events`). `tail`: one
    already read with `read_tail` for this kind, exchange and symbols (or all of them, to report `caught_up`), else
    it is read here.
    """
    spec = record_spec(kind, EVENT_SPECS)
    where(symbols, start, end, exchange)  # validate before touching Kafka
    select = projection(spec, columns)
    if limit is not None:
        positive(limit, "limit")
    if tail is None:
        tail = read_tail(engine, kafka, kind, exchange=exchange, symbols=symbols)
    # Reading the lake with the same limit is enough: a tail row whose lake twin lies beyond the first `limit`
    # lake rows sorts beyond them too (same key), so it cannot enter the result.
    lake = events(engine, kind, symbols, start, end, exchange=exchange, limit=limit, as_of=_pin(engine, spec, tail))
    rows = select_rows(tail.rows, symbols, start, end, exchange)
    clauses, params = f"ORDER BY {event_order()}", []
    if limit is not None:
        clauses += " LIMIT ?"
        params.append(limit)
    return _merge(lake, rows, select, clauses, params)


def fresh_latest(
    engine: QueryEngine,
    kafka: Kafka,
    kind: str,
    symbols: Symbols,
    n: int = 1,
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    tail: Tail | None = None,
) -> pa.Table:
    """As k2.query.market.latest, counting records Kafka holds beyond the lake: the newest `n` per
    (symbol, exchange), ordered by symbol, exchange, then event order (oldest first). `tail` as in fresh_events."""
    spec = record_spec(kind, EVENT_SPECS)
    where(symbols, start, end, exchange)
    select = projection(spec, columns)
    positive(n, "n")
    if tail is None:
        tail = read_tail(engine, kafka, kind, exchange=exchange, symbols=symbols)
    lake = latest(engine, kind, symbols, n, exchange=exchange, start=start, end=end, as_of=_pin(engine, spec, tail))
    rows = select_rows(tail.rows, symbols, start, end, exchange)
    clauses = (
        f"QUALIFY row_number() OVER (PARTITION BY symbol, exchange ORDER BY {event_order(descending=True)}) <= ? "
        f"ORDER BY symbol, exchange, {event_order()}"
    )
    return _merge(lake, rows, select, clauses, [n])


def _pin(engine: QueryEngine, spec: RecordSpec, tail: Tail) -> int | None:
    """The as_of that reads the lake at the snapshot the tail starts after (None: the engine's view is that one)."""
    if tail.snapshot_id is None or engine.snapshot_ids.get(spec.name) == tail.snapshot_id:
        return None
    return tail.snapshot_id
