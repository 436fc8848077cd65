"""Binance partial book depth streams (`<symbol>@depth<levels>`, `<symbol>@depth<levels>@100ms`) → book_snapshots_v2.

Each frame is the top `levels` (5, 10 or 20) bids and asks as of an update id, pushed every 1000 ms or 100 ms:
`{"lastUpdateId": N, "bids": [[price, qty], ...], "asks": [...]}` (spot "Partial Book Depth Streams"). The payload
names neither symbol nor time, so the symbol comes from the combined stream's name (a raw `/ws` frame cannot be
placed and is left to the normalizer, which passes it by) and the timestamp is the receive time
(vendor_data.timestamp_source "receive_time").

A frame is stored as book_snapshots_v2 rows with snapshot_type "partial" (vendor_data: stream, limit = the level
count): queryable, but never a book's starting point, since a partial book lacks every deeper level. The frame is
read with the REST snapshot's parser and written with `normalize_book.book_snapshot_records`; the ids' source is
`partial<levels>:<lastUpdateId>:<side>:<price>`, so a frame sent twice (a reconnect overlap, both update speeds of
one depth) is stored once, and no partial row takes the id of a full snapshot's level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from k2.core.batch import Reject
from k2.schema.fields import BookSnapshotType
from k2.sources.binance.book import parse_depth_snapshot
from k2.sources.binance.normalize import PayloadError
from k2.sources.binance.normalize_book import book_snapshot_records, depth_reject

PARTIAL_LEVELS = (5, 10, 20)
PARTIAL_CHANNELS = tuple(f"depth{levels}{speed}" for levels in PARTIAL_LEVELS for speed in ("", "@100ms"))
_STREAM = re.compile(r"(?P<symbol>[a-z0-9]+)@depth(?P<levels>5|10|20)(?:@100ms)?")
_FRAME_HEAD = re.compile(rb'\{\s*"stream"\s*:\s*"[a-z0-9]+@depth(?:5|10|20)(?:@100ms)?"')


@dataclass(frozen=True, slots=True)
class PartialStream:
    """What a partial book stream's name says: the symbol (upper case, as the venue lists it) and the level count."""

    name: str
    symbol: str
    levels: int


def partial_stream(name: str) -> PartialStream | None:
    """`btcusdt@depth20@100ms` → PartialStream("btcusdt@depth20@100ms", "BTCUSDT", 20); None for any other stream."""
    match = _STREAM.fullmatch(name)
    if match is None:
        return None
    return PartialStream(name, match["symbol"].upper(), int(match["levels"]))


def is_partial_frame(raw: bytes) -> bool:
    """Whether a combined frame's bytes name a partial book stream (a cheap look at its head, before parsing: a
    frame cut short still goes to `partial_book_records`, which rejects it)."""
    return _FRAME_HEAD.match(raw, 0, 120) is not None


def partial_book_records(raw: bytes, receive_us: int, *, origin: str, position: int) -> list[dict[str, Any]] | Reject:
    """One combined partial-book frame → its book_snapshots_v2 rows (bids then asks, best first), or one Reject."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return depth_reject(PayloadError("malformed_json", f"frame is not JSON ({exc})"), raw, origin, position)
    try:
        if type(message) is not dict or type(message.get("data")) is not dict:
            raise PayloadError("malformed_frame", "combined-stream frame without a data object")
        stream = partial_stream(message.get("stream") or "")
        if stream is None:
            raise PayloadError("malformed_frame", f"not a partial book stream: {message.get('stream')!r}")
        snapshot = parse_depth_snapshot(message["data"], stream.symbol, receive_us)
        for side, levels in (("bids", snapshot.bids), ("asks", snapshot.asks)):
            if len(levels) > stream.levels:
                raise PayloadError(
                    f"bad_field:{side}", f"{stream.name} carries {len(levels)} {side}, more than its {stream.levels}"
                )
    except PayloadError as exc:
        return depth_reject(exc, raw, origin, position)
    return book_snapshot_records(
        snapshot,
        limit=stream.levels,
        snapshot_type=BookSnapshotType.PARTIAL,
        stream=stream.name,
        source=f"partial{stream.levels}",
    )
