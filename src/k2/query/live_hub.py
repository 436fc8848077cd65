"""One Kafka consumer per topic per process, shared by the live subscriptions of that process (k2.query.subscribe).

A subscription reads its history and its Kafka tail on its own; once it has caught up with the log end it joins the
hub at its exact next offsets and its own consumer is closed. The hub's feed of a topic fetches each record once,
keeps only the records some subscriber wants by the message key (the producer keys by symbol, so the other symbols
of a busy topic are never decoded), decodes those once per batch, and hands every subscriber the rows of its
symbols, with the offsets they came from, into its own bounded `Inbox`. The feed never waits for a subscriber: one
whose inbox is full is dropped and told (`FellBehind`), the others go on.

Joining is exact: a joiner's next offset on a partition the feed has already passed is served from the feed's ring
of recent messages (or the join is refused when the ring no longer reaches that far back, and the subscription keeps
its own consumer); on a partition the feed has not reached yet, the feed skips the records before it for that
subscriber. Several API processes each run their own hub: manual assignment, no group, no commit, so they need no
coordination with each other or with the sink.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from confluent_kafka import Consumer, Message, TopicPartition

from k2.bus.topics import TopicName
from k2.query.filters import row_mask
from k2.query.fresh import FreshReader, Partition
from k2.schema.arrow import empty_rows
from k2.schema.fields import RecordSpec

log = structlog.get_logger(__name__)

# The feed's fetch settings: one consumer per topic per process, so a larger prefetch than a subscription's own
_FETCH_QUEUE_KBYTES = 32_768
_FEED_BATCH = 5_000
_FEED_POLL_SECONDS = 0.1  # how soon a stopped feed notices


class FellBehind(Exception):
    """The subscriber's inbox overflowed: the hub dropped it. Its last batch's cursor resumes it exactly."""

    def __init__(self) -> None:
        super().__init__("the subscriber fell too far behind the live records")


@dataclass
class Chunk:
    """Rows of one topic for one subscriber, in log order per partition, with the partition and offset each came
    from; `ends`: per partition the next offset after every message this chunk covers (filtered ones included)."""

    rows: pa.Table
    partitions: np.ndarray
    offsets: np.ndarray
    ends: dict[Partition, int]
    topic: str

    def split(self, count: int) -> tuple[Chunk, Chunk]:
        """The first `count` rows and the rest; the first's ends stop before the rest's first row per partition."""
        rest = Chunk(self.rows.slice(count), self.partitions[count:], self.offsets[count:], self.ends, self.topic)
        first_ends = dict(self.ends)
        for partition in np.unique(rest.partitions).tolist():
            first_ends[(self.topic, partition)] = int(rest.offsets[rest.partitions == partition].min())
        first = Chunk(self.rows.slice(0, count), self.partitions[:count], self.offsets[:count], first_ends, self.topic)
        return first, rest


class Inbox:
    """One subscriber's rows from the hub, at most `limit` rows held (one chunk larger than that is let in alone):
    those of `symbols` (None: every symbol; chosen by message key, then checked on the rows), `exchange` and with a
    timestamp from `since`, selected once per batch for all subscribers of the same filter."""

    def __init__(
        self,
        symbols: Iterable[str] | None,
        limit: int,
        *,
        since: datetime | None = None,
        exchange: str | None = None,
    ) -> None:
        self.names = sorted(set(symbols)) if symbols is not None else None
        self.symbols = frozenset(s.encode() for s in self.names) if self.names is not None else None
        self.since, self.exchange = since, exchange
        self.limit = limit
        self._chunks: deque[Chunk] = deque()
        self._rows = 0
        self._changed = threading.Condition()
        self.fell_behind = False
        self.failure: BaseException | None = None

    def put(self, chunk: Chunk) -> bool:
        """Add `chunk` (a chunk without rows only moves the ends of the last one held); False when it does not fit:
        the subscriber is dropped."""
        with self._changed:
            if self.fell_behind:
                return False
            if not chunk.rows.num_rows and self._chunks and self._chunks[-1].topic == chunk.topic:
                self._chunks[-1].ends.update(chunk.ends)
                return True
            if self._chunks and self._rows + chunk.rows.num_rows > self.limit:
                self.fell_behind = True
                self._changed.notify_all()
                return False
            self._chunks.append(chunk)
            self._rows += chunk.rows.num_rows
            if chunk.rows.num_rows:
                self._changed.notify_all()
            return True

    def fail(self, error: BaseException) -> None:
        with self._changed:
            self.failure = error
            self._changed.notify_all()

    def take(self, room: int, timeout: float) -> list[Chunk]:
        """Chunks holding at most `room` rows: waits up to `timeout` for a row, then takes what is there (chunks
        without rows included, which move the cursor). Raises FellBehind once dropped, or the feed's failure."""
        with self._changed:
            self._changed.wait_for(lambda: self._rows or self.fell_behind or self.failure is not None, timeout)
            if self.fell_behind:
                raise FellBehind
            if self.failure is not None:
                raise self.failure
            taken: list[Chunk] = []
            while self._chunks and room > 0:
                chunk = self._chunks.popleft()
                if chunk.rows.num_rows > room:
                    chunk, rest = chunk.split(room)
                    self._chunks.appendleft(rest)
                self._rows -= chunk.rows.num_rows
                room -= chunk.rows.num_rows
                taken.append(chunk)
            return taken


@dataclass
class _Member:
    inbox: Inbox
    starts: dict[int, int]  # partitions the feed has not reached the member's first offset on yet


@dataclass
class _Feed:
    """One topic's shared consumer and its thread."""

    topic: str
    spec: RecordSpec
    consumer: Consumer
    next_offsets: dict[int, int]
    ring_limit: int
    members: list[_Member] = field(default_factory=list)
    ring: deque[Message] = field(default_factory=deque)
    ring_from: dict[int, int] = field(default_factory=dict)  # per partition: the ring holds everything from here
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class LiveHub:
    """The shared live consumers of one process, one per topic, started by the first subscriber joining a topic and
    stopped when the last leaves. `ring_messages`: recent messages a feed keeps for joiners a little behind it."""

    def __init__(self, reader: FreshReader, *, ring_messages: int = 50_000) -> None:
        self.reader = reader
        self.ring_messages = ring_messages
        self._feeds: dict[str, _Feed] = {}
        self._lock = threading.Lock()

    def positions(self, topic: str) -> dict[int, int] | None:
        """The next offset per partition a running feed of `topic` will read (where "now" is), else None."""
        with self._lock:
            feed = self._feeds.get(topic)
        if feed is None:
            return None
        with feed.lock:
            return dict(feed.next_offsets)

    def subscribers(self, topic: str) -> int:
        """How many subscribers the feed of `topic` serves now (0: no feed)."""
        with self._lock:
            feed = self._feeds.get(topic)
        if feed is None:
            return 0
        with feed.lock:
            return len(feed.members)

    def join(self, inbox: Inbox, topic: str, offsets: dict[int, int]) -> bool:
        """Deliver `topic`'s records from `offsets` (next offset per partition, every partition of the topic) on into
        `inbox`. False when the feed is past an offset further back than its ring (read on alone, and join later)."""
        while True:
            with self._lock:
                feed = self._feeds.get(topic)
                if feed is None:
                    feed = self._start(topic, offsets)
            with feed.lock:
                if not feed.stop.is_set():  # else its last member left meanwhile: start another
                    return self._add(feed, inbox, offsets)

    def _add(self, feed: _Feed, inbox: Inbox, offsets: dict[int, int]) -> bool:
        """Join `feed` (its lock held)."""
        topic = feed.topic
        if set(offsets) != set(feed.next_offsets):
            return False
        if any(offsets[p] < min(feed.next_offsets[p], feed.ring_from[p]) for p in offsets):
            return False
        behind = {p for p in offsets if offsets[p] < feed.next_offsets[p]}
        if behind:
            wanted = [
                m
                for m in feed.ring
                if m.partition() in behind and m.offset() >= offsets[m.partition()] and _wants(inbox, m.key())
            ]
            rows, partitions, positions = _decoded(self.reader, feed.spec, wanted)
            take, chosen = _selected(rows, inbox, None)
            ends = {(topic, p): max(offsets[p], feed.next_offsets[p]) for p in offsets}
            inbox.put(Chunk(chosen, partitions[take], positions[take], ends, topic))
        starts = {p: o for p, o in offsets.items() if o > feed.next_offsets[p]}
        feed.members.append(_Member(inbox, starts))
        return True

    def leave(self, inbox: Inbox) -> None:
        """Deliver no more into `inbox`; a feed left without members stops."""
        stopped: list[_Feed] = []
        with self._lock:
            for topic, feed in list(self._feeds.items()):
                with feed.lock:
                    feed.members = [m for m in feed.members if m.inbox is not inbox]
                    if not feed.members:
                        feed.stop.set()
                        del self._feeds[topic]
                        stopped.append(feed)
        for feed in stopped:
            if feed.thread is not None and feed.thread is not threading.current_thread():
                feed.thread.join()

    def close(self) -> None:
        with self._lock:
            feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            feed.stop.set()
            if feed.thread is not None:
                feed.thread.join()

    def _start(self, topic: str, offsets: dict[int, int]) -> _Feed:
        consumer = self.reader.consumer(**{"queued.max.messages.kbytes": _FETCH_QUEUE_KBYTES})
        consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        feed = _Feed(topic, TopicName.parse(topic).spec, consumer, dict(offsets), self.ring_messages)
        feed.ring_from = dict(offsets)
        feed.thread = threading.Thread(target=self._run, args=(feed,), name=f"k2-live-{topic}", daemon=True)
        self._feeds[topic] = feed
        feed.thread.start()
        log.info("live_hub.feed_started", topic=topic)
        return feed

    def _run(self, feed: _Feed) -> None:
        watch = self.reader.watch()
        try:
            while not feed.stop.is_set():
                first = feed.consumer.poll(_FEED_POLL_SECONDS)
                if first is None:
                    positions = {(feed.topic, p): offset for p, offset in feed.next_offsets.items()}
                    if watch.starved(feed.consumer, positions):
                        config = {"queued.max.messages.kbytes": _FETCH_QUEUE_KBYTES}
                        feed.consumer, watch = self.reader.widened(feed.consumer, watch, positions, **config)
                    continue
                watch.fed()
                messages = [first, *feed.consumer.consume(_FEED_BATCH - 1, 0)]
                good = []
                for msg in messages:
                    if msg.error():
                        log.warning("live_hub.consume_error", topic=feed.topic, error=msg.error().str())
                    else:
                        good.append(msg)
                with feed.lock:
                    self._deliver(feed, good)
        except Exception as exc:  # a feed that cannot go on fails its members: each reports it
            log.exception("live_hub.feed_failed", topic=feed.topic)
            with feed.lock:
                for member in feed.members:
                    member.inbox.fail(exc)
        finally:
            feed.consumer.close()
            log.info("live_hub.feed_stopped", topic=feed.topic)

    def _deliver(self, feed: _Feed, messages: list[Message]) -> None:
        """Decode what the members want of `messages` once and put each member's share in its inbox."""
        ends: dict[Partition, int] = {}
        for msg in messages:
            ends[(feed.topic, msg.partition())] = msg.offset() + 1
        everyone = any(m.inbox.symbols is None for m in feed.members)
        keys = set().union(*(m.inbox.symbols for m in feed.members if m.inbox.symbols is not None))
        keys.add(None)  # not keyed by symbol (not K2's producer): decoded, and each subscriber's filter decides
        wanted = [m for m in messages if everyone or m.key() in keys]
        rows, partitions, offsets = _decoded(self.reader, feed.spec, wanted)
        at_key: dict[bytes | None, list[int]] = {}
        for at, msg in enumerate(wanted):
            at_key.setdefault(msg.key(), []).append(at)
        shared: dict[tuple, tuple[np.ndarray, pa.Table]] = {}
        dropped = []
        for member in feed.members:
            inbox = member.inbox
            group = (inbox.symbols, inbox.since, inbox.exchange)
            if group not in shared:
                shared[group] = _selected(rows, inbox, at_key)
            take, chosen = shared[group]
            if member.starts:  # only the records from its first offset on
                kept = offsets[take] >= [member.starts.get(int(p), 0) for p in partitions[take]]
                take, chosen = take[kept], chosen.filter(pa.array(kept))
                member.starts = {p: o for p, o in member.starts.items() if o > ends.get((feed.topic, p), 0)}
            chunk = Chunk(chosen, partitions[take], offsets[take], dict(ends), feed.topic)
            if not member.inbox.put(chunk):
                dropped.append(member)
        if dropped:
            log.info("live_hub.subscriber_fell_behind", topic=feed.topic, count=len(dropped))
            feed.members = [m for m in feed.members if m not in dropped]
        for key, end in ends.items():
            feed.next_offsets[key[1]] = end
        feed.ring.extend(messages)
        while len(feed.ring) > feed.ring_limit:
            old = feed.ring.popleft()
            feed.ring_from[old.partition()] = old.offset() + 1


def _selected(
    rows: pa.Table, inbox: Inbox, at_key: dict[bytes | None, list[int]] | None
) -> tuple[np.ndarray, pa.Table]:
    """The positions in `rows` of those `inbox` wants, and those rows. `at_key`: positions per message key, to
    start from its symbols' records (None: from every row)."""
    if at_key is None or inbox.symbols is None:
        candidates = np.arange(rows.num_rows)
    else:
        found = (i for key in (*inbox.symbols, None) for i in at_key.get(key, ()))
        candidates = np.sort(np.fromiter(found, dtype=np.int64))
    subset = rows.take(pa.array(candidates)) if len(candidates) != rows.num_rows else rows
    mask = row_mask(subset, inbox.names, inbox.since, None, inbox.exchange)
    keep = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    if len(keep) == len(candidates):
        return candidates, subset
    return candidates[keep], subset.take(pa.array(keep))


def _wants(inbox: Inbox, key: bytes | None) -> bool:
    return inbox.symbols is None or key is None or key in inbox.symbols


def _decoded(reader: FreshReader, spec: RecordSpec, messages: list[Message]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The messages' rows, with the partition and offset of each: a message that does not decode is left out (the
    sink dead-letters it; the whole batch decodes as one in the usual case)."""
    if not messages:
        return empty_rows(spec), np.empty(0, np.int64), np.empty(0, np.int64)
    rows, skipped = reader.decode(spec, messages)
    kept = messages
    if skipped:  # which ones: decode them one by one
        kept, parts = [], []
        for msg in messages:
            one, bad = reader.decode(spec, [msg])
            if not bad:
                kept.append(msg)
                parts.append(one)
        rows = pa.concat_tables(parts) if parts else empty_rows(spec)
    partitions = np.fromiter((m.partition() for m in kept), dtype=np.int64, count=len(kept))
    offsets = np.fromiter((m.offset() for m in kept), dtype=np.int64, count=len(kept))
    return rows, partitions, offsets
