"""Renders docs/data-dictionary.md from the field definitions, so the docs cannot drift from the code.

Regenerate: `python -m k2.schema.docs > docs/data-dictionary.md` (a test fails while they differ).
"""

from __future__ import annotations

from k2.schema.arrow import arrow_type
from k2.schema.avro import avro_type
from k2.schema.fields import ALL_RECORDS, PRICE_PRECISION, PRICE_SCALE, FieldSpec, Kind
from k2.schema.iceberg import iceberg_schema

_NOTES = f"""\
# K2 data dictionary (V2 schemas)

Generated from `src/k2/schema/fields.py` by `python -m k2.schema.docs`; do not edit by hand.

Conventions:
- Prices and quantities are `decimal({PRICE_PRECISION},{PRICE_SCALE})` in Avro (bytes + decimal logical type),
  Arrow (`decimal128`) and Iceberg; they are parsed from the source text and never pass through a float.
- Timestamps are integer microseconds since the epoch, UTC (Avro `timestamp-micros`, Iceberg `timestamptz`).
  Venue-local times (ASX: Australia/Sydney, with DST) are converted at the source; the original text is kept in
  `vendor_data.local_time`.
- `message_id` is a UUIDv5 over exchange, data type, symbol and the source's own id, so a record read twice gets
  the same id and is stored once. For ASX files, which carry no ids, the source id is the trading date, the row's
  text and its ordinal among identical rows of that symbol-day: appending or inserting a row changes no other id.
- Binance rows keep in `vendor_data`: `channel` (aggTrade / trade / bookTicker), `receive_time_us` (when K2
  received the frame), `event_time_us` (the stream event's time `E`; absent on trades filled from REST, for which
  Binance answers no event time, and which carry `backfilled = rest` instead), and for quotes `timestamp_source`
  (`event_time`, or `receive_time` for a spot bookTicker, which carries no time of its own).
- Enums travel as Avro enums and are stored as strings in Iceberg.
- Tables `market_data.<name>` are partitioned by `day(timestamp)` and `exchange`. Inside each file rows are sorted
  by `symbol`, then event time (`timestamp`, `source_sequence`, `message_id`), in row groups of 32,768 rows, so a
  query for one symbol reads only that symbol's row groups. Parquet + zstd.
- `reference_data_v2.vendor_data.record_type` tells what a reference row is: `company` (listing), `dividend`,
  `merger`, `stock_split`; a dividend keeps its dates, exact amounts and its own currency in `vendor_data`.
- Order books are two tables: `book_snapshots_v2` (every level of a full snapshot, all with the snapshot's
  `last_update_id`) and `book_updates_v2` (every level a diff event changed, with the event's `first_update_id` and
  `last_update_id`; quantity 0 removes the level). The book at time T is the newest snapshot taken at or before T,
  then the updates with `last_update_id` above the snapshot's and `timestamp` at or before T, applied in
  `last_update_id` order (the last quantity per side and price wins): `k2.query.book.book_at`. The updates
  are continuous when the first one has `first_update_id <= snapshot last_update_id + 1` and each next event's
  `first_update_id` is the previous event's `last_update_id + 1`; a hole means updates were lost and the book is
  known again only from the next snapshot. The source ids of `message_id` are
  `depth:<last_update_id>:<side>:<price>` and `snapshot:<last_update_id>:<side>:<price>` (price with 8
  decimals), so a level read twice is stored once. A Binance snapshot's `timestamp` is when K2 received it
  (`vendor_data.timestamp_source = receive_time`: a capture), or, streamed live, the event time of the newest diff
  the stream had delivered when it came (`stream_event_time`): snapshot and updates then share the venue's clock.
- A partial book stream's frame (Binance `<symbol>@depth5/10/20`, the top levels as of an update id) is a
  `book_snapshots_v2` snapshot of `snapshot_type` partial, timed by its receipt (`vendor_data.timestamp_source =
  receive_time`, `stream`, `limit` = its level count), ids over `partial<levels>:<last_update_id>:<side>:<price>`;
  `book_at` never starts a book from one.
- `book_depth_v2` is not a book: data.binance.vision's futures bookDepth files give, at each time, the cumulative
  quantity and notional between the mid and each band (`percentage` -5..5, negative on the bid side); the source id
  of `message_id` is `bookDepth:<timestamp>:<percentage>` (percentage with 8 decimals, so `-5` and `-5.00` match).
"""


def _type_text(spec: FieldSpec) -> str:
    if spec.kind is Kind.DECIMAL:
        return f"decimal({PRICE_PRECISION},{PRICE_SCALE})"
    avro = avro_type(spec)
    if isinstance(avro, dict):
        avro = avro.get("logicalType") or avro["type"]
    if spec.enum is not None:
        avro = "enum " + " \\| ".join(e.value for e in spec.enum)
    return str(avro)


def data_dictionary_markdown() -> str:
    parts = [_NOTES]
    for record in ALL_RECORDS:
        ice = iceberg_schema(record)
        parts.append(f"\n## `{record.name}` ({len(record.fields)} fields)\n\n{record.doc}\n")
        parts.append("| # | field | required | Avro | Arrow | Iceberg | meaning |")
        parts.append("|---|---|---|---|---|---|---|")
        for i, spec in enumerate(record.fields, start=1):
            meaning = spec.doc.replace("|", "\\|")  # a bare pipe would split the Markdown cell
            parts.append(
                f"| {i} | `{spec.name}` | {'yes' if spec.required else 'no'} | {_type_text(spec)} | "
                f"`{arrow_type(spec)}` | `{ice.find_field(spec.name).field_type}` | {meaning} |"
            )
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(data_dictionary_markdown(), end="")
