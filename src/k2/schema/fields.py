"""The V2 record definitions, written once.

Avro (k2.schema.avro), Arrow (k2.schema.arrow) and Iceberg (k2.schema.iceberg) forms are all derived from the
`RecordSpec`s below; docs/data-dictionary.md describes the same fields. Change a field here and every form follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Prices and quantities: DECIMAL(18,8) everywhere. 10 integer digits is enough for any traded price or lot.
PRICE_PRECISION = 18
PRICE_SCALE = 8

AVRO_NAMESPACE = "io.k2.market.v2"


class AssetClass(StrEnum):
    EQUITIES = "equities"
    CRYPTO = "crypto"
    FUTURES = "futures"
    OPTIONS = "options"


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    SELL_SHORT = "SELL_SHORT"
    UNKNOWN = "UNKNOWN"


class DataType(StrEnum):
    """The kind of record; used in topic names (market.{asset_class}.{data_type}.{exchange})."""

    TRADES = "trades"
    QUOTES = "quotes"
    REFERENCE_DATA = "reference_data"
    BARS = "bars"
    GAPS = "gaps"
    BOOK_UPDATES = "book_updates"
    BOOK_SNAPSHOTS = "book_snapshots"
    BOOK_DEPTH = "book_depth"


class BookSide(StrEnum):
    """The side of an order book a price level is on."""

    BID = "BID"
    ASK = "ASK"


class BookSnapshotType(StrEnum):
    """What a book_snapshots_v2 snapshot is, and so whether a book can start from it."""

    FULL = "full"  # the venue's own snapshot (Binance GET /api/v3/depth), as deep as the limit asked for
    CHECKPOINT = "checkpoint"  # K2's copy of a book it kept in sync, written every K2_BOOK_CHECKPOINT_SECONDS
    PARTIAL = "partial"  # the top levels of a partial book stream (@depth5/10/20): not a whole book


class Kind(StrEnum):
    """Logical field kinds; each maps to one Avro, Arrow and Iceberg type."""

    STRING = "string"
    LONG = "long"
    BOOLEAN = "boolean"
    DECIMAL = "decimal"  # decimal(18,8)
    TIMESTAMP = "timestamp"  # microseconds since epoch, UTC
    DATE = "date"  # days since epoch
    STRING_LIST = "string_list"
    STRING_MAP = "string_map"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    doc: str
    required: bool = True
    enum: type[StrEnum] | None = None  # Avro enum; Arrow/Iceberg store the symbol as a string


@dataclass(frozen=True)
class RecordSpec:
    name: str  # also the Avro record name and the Iceberg table name
    data_type: DataType
    fields: tuple[FieldSpec, ...]
    doc: str

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


def _core_head(id_field: str, id_doc: str) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec(
            "message_id",
            Kind.STRING,
            "Deterministic UUIDv5 over exchange, data type, symbol and the source's own id; the dedup key.",
        ),
        FieldSpec(id_field, Kind.STRING, id_doc),
        FieldSpec("symbol", Kind.STRING, "Instrument symbol as the venue lists it, e.g. BHP, BTCUSDT."),
        FieldSpec("exchange", Kind.STRING, "Venue code, lower case, e.g. asx, binance."),
        FieldSpec("asset_class", Kind.STRING, "equities | crypto | futures | options.", enum=AssetClass),
        FieldSpec("timestamp", Kind.TIMESTAMP, "Event time at the venue, microseconds UTC."),
    )


def _core_tail() -> tuple[FieldSpec, ...]:
    return (
        FieldSpec(
            "source_sequence",
            Kind.LONG,
            "The source's own sequence number (venue id, or row order per symbol per trading day).",
            required=False,
        ),
        FieldSpec("ingestion_timestamp", Kind.TIMESTAMP, "When K2 read the record, microseconds UTC."),
        FieldSpec(
            "platform_sequence",
            Kind.LONG,
            "Assigned by K2, increasing along the source stream: the line number in a file (ASX, data.binance.vision,"
            " a capture), the frame's number in a Binance stream's arrival order; null on trades filled from REST.",
            required=False,
        ),
        FieldSpec(
            "vendor_data",
            Kind.STRING_MAP,
            "Source-specific fields kept verbatim as strings (venue, qualifier, flags, ...).",
            required=False,
        ),
    )


TRADES_V2 = RecordSpec(
    name="trades_v2",
    data_type=DataType.TRADES,
    doc="One executed trade.",
    fields=(
        *_core_head("trade_id", "The venue's trade id, or K2's id for sources without one."),
        FieldSpec("price", Kind.DECIMAL, "Trade price, decimal(18,8), in `currency`."),
        FieldSpec("quantity", Kind.DECIMAL, "Traded quantity, decimal(18,8)."),
        FieldSpec("currency", Kind.STRING, "ISO currency (or quote asset for crypto) of `price`."),
        FieldSpec("side", Kind.STRING, "Aggressor side: BUY | SELL | SELL_SHORT | UNKNOWN.", enum=Side),
        FieldSpec("trade_conditions", Kind.STRING_LIST, "Venue condition codes, as strings."),
        *_core_tail(),
    ),
)

QUOTES_V2 = RecordSpec(
    name="quotes_v2",
    data_type=DataType.QUOTES,
    doc="One top-of-book quote update; a side with no order is null.",
    fields=(
        *_core_head("quote_id", "The venue's update id, or K2's id for sources without one."),
        FieldSpec("bid_price", Kind.DECIMAL, "Best bid, decimal(18,8); null when no bid.", required=False),
        FieldSpec("bid_quantity", Kind.DECIMAL, "Quantity at the best bid; null when no bid.", required=False),
        FieldSpec("ask_price", Kind.DECIMAL, "Best ask, decimal(18,8); null when no ask.", required=False),
        FieldSpec("ask_quantity", Kind.DECIMAL, "Quantity at the best ask; null when no ask.", required=False),
        FieldSpec("currency", Kind.STRING, "ISO currency (or quote asset for crypto) of the prices."),
        *_core_tail(),
    ),
)

REFERENCE_DATA_V2 = RecordSpec(
    name="reference_data_v2",
    data_type=DataType.REFERENCE_DATA,
    doc="Instrument reference data and corporate events (vendor_data.record_type says which).",
    fields=(
        FieldSpec("message_id", Kind.STRING, "Deterministic UUIDv5; the dedup key."),
        FieldSpec("company_id", Kind.STRING, "The source's instrument/company id, e.g. ASX 7078."),
        FieldSpec("symbol", Kind.STRING, "Instrument symbol."),
        FieldSpec("exchange", Kind.STRING, "Venue code, lower case."),
        FieldSpec("asset_class", Kind.STRING, "equities | crypto | futures | options.", enum=AssetClass),
        FieldSpec("isin", Kind.STRING, "ISIN, when the source has one.", required=False),
        FieldSpec("company_name", Kind.STRING, "Issuer / instrument name.", required=False),
        FieldSpec("listing_date", Kind.DATE, "First listed date (venue local date).", required=False),
        FieldSpec("delisting_date", Kind.DATE, "Last listed date; null while listed.", required=False),
        FieldSpec("is_active", Kind.BOOLEAN, "Listed on the record's effective date."),
        FieldSpec("timestamp", Kind.TIMESTAMP, "Effective time of the record, microseconds UTC."),
        FieldSpec("ingestion_timestamp", Kind.TIMESTAMP, "When K2 read the record, microseconds UTC."),
        FieldSpec(
            "vendor_data",
            Kind.STRING_MAP,
            "record_type (company | dividend | ...) and the source's other fields, as strings.",
            required=False,
        ),
    ),
)

BARS_V2 = RecordSpec(
    name="bars_v2",
    data_type=DataType.BARS,
    doc="One OHLCV bar (candle) as the venue published it, e.g. a Binance kline; one row per symbol, interval, open.",
    fields=(
        FieldSpec(
            "message_id",
            Kind.STRING,
            "Deterministic UUIDv5 over exchange, data type, symbol, interval and open time; the dedup key.",
        ),
        FieldSpec("symbol", Kind.STRING, "Instrument symbol as the venue lists it, e.g. BTCUSDT."),
        FieldSpec("exchange", Kind.STRING, "Venue code, lower case, e.g. binance."),
        FieldSpec("asset_class", Kind.STRING, "equities | crypto | futures | options.", enum=AssetClass),
        FieldSpec("interval", Kind.STRING, "Bar length as the venue names it: 1s, 1m, 1h, 1d, 1w, 1mo, ..."),
        FieldSpec("timestamp", Kind.TIMESTAMP, "Bar open time, microseconds UTC."),
        FieldSpec("close_time", Kind.TIMESTAMP, "Bar close time (last microsecond inside the bar), UTC."),
        FieldSpec("open", Kind.DECIMAL, "First trade price in the bar, decimal(18,8)."),
        FieldSpec("high", Kind.DECIMAL, "Highest trade price in the bar."),
        FieldSpec("low", Kind.DECIMAL, "Lowest trade price in the bar."),
        FieldSpec("close", Kind.DECIMAL, "Last trade price in the bar."),
        FieldSpec("volume", Kind.DECIMAL, "Traded quantity (base asset; contracts for coin-margined futures)."),
        FieldSpec("quote_volume", Kind.DECIMAL, "Traded value (quote asset; base asset for coin-margined futures)."),
        FieldSpec("trade_count", Kind.LONG, "Number of trades in the bar."),
        FieldSpec("taker_buy_base_volume", Kind.DECIMAL, "Part of `volume` bought by takers.", required=False),
        FieldSpec("taker_buy_quote_volume", Kind.DECIMAL, "Part of `quote_volume` bought by takers.", required=False),
        FieldSpec("ingestion_timestamp", Kind.TIMESTAMP, "When K2 read the record, microseconds UTC."),
        FieldSpec(
            "vendor_data",
            Kind.STRING_MAP,
            "Source-specific fields kept verbatim as strings (currency, source file, ...).",
            required=False,
        ),
    ),
)

STREAM_GAPS = RecordSpec(
    name="stream_gaps",
    data_type=DataType.GAPS,
    doc="A hole found in a live stream and what became of it, the audit trail of 'no gaps': ids that skipped"
    " (REST fills them), or quotes a lost connection may have cost (reason disconnect; never refillable).",
    fields=(
        FieldSpec("message_id", Kind.STRING, "UUIDv5 over exchange, symbol, channel and first missing id."),
        FieldSpec("symbol", Kind.STRING, "Instrument symbol."),
        FieldSpec("exchange", Kind.STRING, "Venue code, lower case."),
        FieldSpec("asset_class", Kind.STRING, "equities | crypto | futures | options.", enum=AssetClass),
        FieldSpec("channel", Kind.STRING, "The stream's channel, e.g. aggTrade, trade, bookTicker."),
        FieldSpec(
            "first_missing",
            Kind.LONG,
            "First id that did not arrive (disconnect: the update id after the last quote; 0 if none came before).",
        ),
        FieldSpec(
            "last_missing",
            Kind.LONG,
            "Last id that did not arrive (disconnect: the update id before the next quote, first_missing - 1 when"
            " none came; bookTicker update ids skip, so any id in between may be a lost update, none is sure to be).",
        ),
        FieldSpec("missing_count", Kind.LONG, "last_missing - first_missing + 1 (disconnect: an upper bound)."),
        FieldSpec("filled_count", Kind.LONG, "How many of them were fetched from REST and landed."),
        FieldSpec("status", Kind.STRING, "filled | partial | unrecoverable."),
        FieldSpec("timestamp", Kind.TIMESTAMP, "When the gap was detected, microseconds UTC."),
        FieldSpec("detail", Kind.STRING, "Why a gap could not be filled, when it could not.", required=False),
        # Added later, optional: tables made before them read them as null.
        FieldSpec("stream", Kind.STRING, "The stream that missed data, e.g. btcusdt@bookTicker.", required=False),
        FieldSpec(
            "reason",
            Kind.STRING,
            "id_gap: the stream's ids skipped; disconnect: the connection dropped and the stream (bookTicker, which"
            " REST cannot backfill) lost what was sent until it was back; sequence_break: a depth stream's update ids"
            " did not continue the local book's, which is rebuilt from the next snapshot.",
            required=False,
        ),
        FieldSpec(
            "missing_from",
            Kind.TIMESTAMP,
            "disconnect: the time of the stream's last quote before the drop; data after it may be missing.",
            required=False,
        ),
        FieldSpec(
            "missing_to",
            Kind.TIMESTAMP,
            "disconnect: the time of the stream's first quote after it; null if none came before the stream stopped.",
            required=False,
        ),
    ),
)


def _book_level(timestamp_doc: str) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec("symbol", Kind.STRING, "Instrument symbol as the venue lists it, e.g. BTCUSDT."),
        FieldSpec("exchange", Kind.STRING, "Venue code, lower case, e.g. binance."),
        FieldSpec("asset_class", Kind.STRING, "equities | crypto | futures | options.", enum=AssetClass),
        FieldSpec("timestamp", Kind.TIMESTAMP, timestamp_doc),
        FieldSpec("side", Kind.STRING, "Book side of the level: BID | ASK.", enum=BookSide),
        FieldSpec("price", Kind.DECIMAL, "Price of the level, decimal(18,8)."),
    )


BOOK_UPDATES_V2 = RecordSpec(
    name="book_updates_v2",
    data_type=DataType.BOOK_UPDATES,
    doc=(
        "One price level changed by an order-book diff event (Binance depthUpdate): the new absolute quantity at"
        " that price. One row per level per event; the event's rows share its update ids."
    ),
    fields=(
        FieldSpec(
            "message_id",
            Kind.STRING,
            "Deterministic UUIDv5 over exchange, data type, symbol, the event's last update id, side and price.",
        ),
        *_book_level("Event time of the diff at the venue, microseconds UTC."),
        FieldSpec("quantity", Kind.DECIMAL, "Quantity now at the price, decimal(18,8); 0 removes the level."),
        FieldSpec("first_update_id", Kind.LONG, "First venue update id the event covers (Binance U)."),
        FieldSpec(
            "last_update_id",
            Kind.LONG,
            "Last venue update id the event covers (Binance u): the book's update id once the event is applied.",
        ),
        FieldSpec("ingestion_timestamp", Kind.TIMESTAMP, "When K2 received the event, microseconds UTC."),
        FieldSpec(
            "vendor_data",
            Kind.STRING_MAP,
            "Source-specific fields kept verbatim as strings (stream, ...).",
            required=False,
        ),
    ),
)

BOOK_SNAPSHOTS_V2 = RecordSpec(
    name="book_snapshots_v2",
    data_type=DataType.BOOK_SNAPSHOTS,
    doc=(
        "One price level of an order-book snapshot (Binance GET /api/v3/depth, or the top levels of a partial book"
        " stream: snapshot_type says which): one row per level, every row of a snapshot with its update id. The book"
        " at a full snapshot is its rows; later updates apply over it."
    ),
    fields=(
        FieldSpec(
            "message_id",
            Kind.STRING,
            "Deterministic UUIDv5 over exchange, data type, symbol, whether a venue snapshot or a checkpoint, the"
            " snapshot's update id, side and price.",
        ),
        *_book_level(
            "When the snapshot was taken: the venue's time when it sends one, else the time K2 received it"
            " (vendor_data.timestamp_source says which); for a checkpoint, the event time of the diff that brought"
            " the book to its update id. Microseconds UTC."
        ),
        FieldSpec("quantity", Kind.DECIMAL, "Quantity at the price, decimal(18,8)."),
        FieldSpec(
            "last_update_id",
            Kind.LONG,
            "The snapshot's update id (Binance lastUpdateId): the book as of that update.",
        ),
        FieldSpec("ingestion_timestamp", Kind.TIMESTAMP, "When K2 received the snapshot, microseconds UTC."),
        FieldSpec(
            "vendor_data",
            Kind.STRING_MAP,
            "Source-specific fields as strings: timestamp_source, the level limit asked for (limit), the stream a"
            " partial snapshot came on (stream), ...",
            required=False,
        ),
        FieldSpec(
            "snapshot_type",
            Kind.STRING,
            "full: the venue's snapshot (null in rows written before this column); checkpoint: K2's copy of a book it"
            " kept in sync, written every K2_BOOK_CHECKPOINT_SECONDS of venue time; partial: the top levels of a"
            " partial book stream, which no book starts from.",
            required=False,
            enum=BookSnapshotType,
        ),
    ),
)

BOOK_DEPTH_V2 = RecordSpec(
    name="book_depth_v2",
    data_type=DataType.BOOK_DEPTH,
    doc=(
        "How much rests in the book within a band around the mid at a time (data.binance.vision bookDepth): the"
        " cumulative quantity and notional from the mid out to `percentage` percent away, one row per band. Not"
        " price levels: no book can be rebuilt from it."
    ),
    fields=(
        FieldSpec(
            "message_id",
            Kind.STRING,
            "Deterministic UUIDv5 over exchange, data type, symbol, the time and the band's percentage; the dedup key.",
        ),
        FieldSpec("symbol", Kind.STRING, "Instrument symbol as the venue lists it, e.g. BTCUSDT."),
        FieldSpec("exchange", Kind.STRING, "Venue code, lower case, e.g. binance_um."),
        FieldSpec("asset_class", Kind.STRING, "equities | crypto | futures | options.", enum=AssetClass),
        FieldSpec("timestamp", Kind.TIMESTAMP, "When the venue measured the depth, microseconds UTC."),
        FieldSpec(
            "percentage",
            Kind.DECIMAL,
            "The band's edge in percent of the mid: negative below it (bids), positive above it (asks), e.g. -5, 0.2.",
        ),
        FieldSpec("depth", Kind.DECIMAL, "Quantity resting between the mid and the band's edge, decimal(18,8)."),
        FieldSpec("notional", Kind.DECIMAL, "Value of that quantity (quantity x price, summed), decimal(18,8)."),
        FieldSpec("ingestion_timestamp", Kind.TIMESTAMP, "When K2 read the record, microseconds UTC."),
        FieldSpec(
            "vendor_data",
            Kind.STRING_MAP,
            "Source-specific fields kept verbatim as strings (source_file, the time as written, ...).",
            required=False,
        ),
    ),
)

ALL_RECORDS: tuple[RecordSpec, ...] = (
    TRADES_V2, QUOTES_V2, REFERENCE_DATA_V2, BARS_V2, STREAM_GAPS, BOOK_UPDATES_V2, BOOK_SNAPSHOTS_V2, BOOK_DEPTH_V2,
)  # fmt: skip
RECORDS_BY_TYPE: dict[DataType, RecordSpec] = {r.data_type: r for r in ALL_RECORDS}
