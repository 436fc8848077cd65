"""Binance depth diffs and REST depth snapshots → book_updates_v2 / book_snapshots_v2 record dicts.

One row per price level: a diff event's rows share its update ids (U, u) and event time; a snapshot's rows share
its lastUpdateId and the time it was received (the REST response carries no time), or, for a live stream, the venue
time the stream had reached when it came (vendor_data.timestamp_source "stream_event_time": then the snapshot and
the diffs are on one clock, the venue's). Levels keep the exact Decimals
the parsers in `book.py` made; quantity 0 in an update means the level was removed.

Ids: message_id = UUIDv5("binance", data type, symbol, "depth:<u>:<side>:<price>") for an update and
"snapshot:<lastUpdateId>:<side>:<price>" for a snapshot level (price as its 8-decimal text), so the same event or
snapshot read twice (a reconnect overlap, a replay) is stored once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from k2.core.batch import Reject
from k2.schema.codecs import message_ids_for
from k2.schema.fields import AssetClass, BookSide, BookSnapshotType, DataType
from k2.sources.binance.book import DepthDiff, DepthSnapshot, Level, depth_payload, parse_depth_diff
from k2.sources.binance.normalize import EXCHANGE, PayloadError, TimeUnit

_UPDATES = DataType.BOOK_UPDATES.value
_SNAPSHOTS = DataType.BOOK_SNAPSHOTS.value
_SIDES = (BookSide.BID.value, BookSide.ASK.value)


def _last_per_price(levels: Iterable[Level]) -> dict:
    # A price repeated within one event: the later entry is the level's quantity (Binance: "for the same price,
    # the latest update covers the previous one"), and one row per price keeps message_id unique.
    return dict(levels)


def book_update_records(
    diff: DepthDiff,
    *,
    stream: str | None = None,
    exchange: str = EXCHANGE,
    asset_class: str = AssetClass.CRYPTO.value,
) -> list[dict[str, Any]]:
    """The book_updates_v2 rows of one diff event, bids then asks, each side in the event's order."""
    mint = message_ids_for(exchange, _UPDATES, diff.symbol)
    vendor = {"stream": stream} if stream else {}
    rows = []
    for side, levels in zip(_SIDES, (diff.bids, diff.asks), strict=True):
        for price, quantity in _last_per_price(levels).items():
            rows.append(
                {
                    "message_id": mint(f"depth:{diff.last_update_id}:{side}:{price:f}"),
                    "symbol": diff.symbol,
                    "exchange": exchange,
                    "asset_class": asset_class,
                    "timestamp": diff.event_us,
                    "side": side,
                    "price": price,
                    "quantity": quantity,
                    "first_update_id": diff.first_update_id,
                    "last_update_id": diff.last_update_id,
                    "ingestion_timestamp": diff.receive_us,
                    "vendor_data": dict(vendor),
                }
            )
    return rows


def book_snapshot_records(
    snapshot: DepthSnapshot,
    *,
    limit: int | None = None,
    taken_us: int | None = None,
    snapshot_type: BookSnapshotType = BookSnapshotType.FULL,
    stream: str | None = None,
    source: str = "snapshot",
    exchange: str = EXCHANGE,
    asset_class: str = AssetClass.CRYPTO.value,
) -> list[dict[str, Any]]:
    """The book_snapshots_v2 rows of one REST depth snapshot (`limit`: the level count asked for, when known;
    `taken_us`: the venue time it stands for, when known, else its receive time is its timestamp; `stream`: the
    stream it came on, if any; `source`: the first part of the ids' source, which tells kinds of snapshot apart)."""
    mint = message_ids_for(exchange, _SNAPSHOTS, snapshot.symbol)
    vendor = {"timestamp_source": "receive_time" if taken_us is None else "stream_event_time"}
    if limit is not None:
        vendor["limit"] = str(limit)
    if stream is not None:
        vendor["stream"] = stream
    rows = []
    for side, levels in zip(_SIDES, (snapshot.bids, snapshot.asks), strict=True):
        for price, quantity in _last_per_price(levels).items():
            if not quantity:
                continue  # a snapshot lists resting levels only; a zero is no level
            rows.append(
                {
                    "message_id": mint(f"{source}:{snapshot.last_update_id}:{side}:{price:f}"),
                    "symbol": snapshot.symbol,
                    "exchange": exchange,
                    "asset_class": asset_class,
                    "timestamp": snapshot.receive_us if taken_us is None else taken_us,
                    "side": side,
                    "price": price,
                    "quantity": quantity,
                    "last_update_id": snapshot.last_update_id,
                    "ingestion_timestamp": snapshot.receive_us,
                    "vendor_data": dict(vendor),
                    "snapshot_type": snapshot_type.value,
                }
            )
    return rows


def normalize_depth_frame(
    raw: bytes,
    receive_us: int,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    origin: str = "binance-ws",
    position: int = 0,
) -> list[dict[str, Any]] | Reject | None:
    """One raw WebSocket frame → its book_updates_v2 rows, a Reject (raw bytes kept), or None (not a depth diff)."""
    try:
        found = depth_payload(raw)
        if found is None:
            return None
        stream, data = found
        return book_update_records(parse_depth_diff(data, receive_us, time_unit), stream=stream)
    except PayloadError as exc:
        return depth_reject(exc, raw, origin, position)


def depth_reject(exc: PayloadError, raw: bytes, origin: str, position: int) -> Reject:
    """A depth frame or snapshot that cannot be read, as the dead-letter record (`position`: frame or line)."""
    where = f"{origin} frame {position}: " if position else f"{origin}: "
    return Reject(reason=exc.reason, detail=where + exc.detail, raw=bytes(raw), origin=origin, position=position)
