"""The columnar decoder gives back exactly the table that was encoded, the same table DuckDB's batch decoder gives,
and refuses any message that is not exactly one datum of the schema."""

from __future__ import annotations

import io
import random
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from k2.schema import avro_columnar_decode
from k2.schema.arrow import arrow_schema, records_from_arrow, records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.avro_columnar import encode_table
from k2.schema.avro_columnar_decode import AvroDecodeError, decode_frames
from k2.schema.fields import (
    PRICE_SCALE,
    QUOTES_V2,
    REFERENCE_DATA_V2,
    TRADES_V2,
    DataType,
    FieldSpec,
    Kind,
    RecordSpec,
)
from k2.sources.asx import AsxSource
from tests.schema.specs import DECIMALS, EVERY_SPEC, PREFIX, edge_value

SAMPLE_COUNTS = {"reference_data_v2": 6, "trades_v2": 200_545, "quotes_v2": 169_629}


def frames(spec: RecordSpec, table: pa.Table, prefix: bytes = PREFIX) -> list[bytes]:
    return encode_table(spec, table, prefix).to_pylist()


def same_table(got: pa.Table, expected: pa.Table) -> None:
    assert got.schema == expected.schema
    if not got.equals(expected):  # say where, not just that
        for name in expected.column_names:
            a, b = got.column(name).to_pylist(), expected.column(name).to_pylist()
            bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
            assert bad == [], f"{name}: rows {bad[:5]} differ, e.g. {a[bad[0]]!r} != {b[bad[0]]!r}"
        raise AssertionError("tables differ")


# --- (a) the real ASX sample: encode, decode, and the same table back (and DuckDB's table too)


@pytest.fixture(scope="module")
def asx_tables(asx_sample: Path) -> dict[RecordSpec, pa.Table]:
    """Every record of the sample as Arrow, by kind: the source's own tables, or its dicts converted."""
    tables: dict[RecordSpec, list[pa.Table]] = {}
    for batch in AsxSource(asx_sample).batches():
        table = getattr(batch, "table", None)
        if table is None:
            table = records_to_arrow(batch.spec, batch.records)
        tables.setdefault(batch.spec, []).append(table.select(batch.spec.field_names))
    return {spec: pa.concat_tables(parts) for spec, parts in tables.items()}


def test_every_asx_sample_record_decodes_to_what_was_encoded(asx_tables: dict[RecordSpec, pa.Table]) -> None:
    assert {spec.name: table.num_rows for spec, table in asx_tables.items()} == SAMPLE_COUNTS
    for spec, table in asx_tables.items():
        values = frames(spec, table)
        got = decode_frames(spec, values)
        same_table(got, table.cast(arrow_schema(spec)))


def test_asx_values_come_back_as_they_were(asx_tables: dict[RecordSpec, pa.Table]) -> None:
    table = asx_tables[TRADES_V2].slice(0, 3)
    row = decode_frames(TRADES_V2, frames(TRADES_V2, table)).slice(0, 1).to_pylist()[0]
    assert row["message_id"] == "d00816fd-7f73-566e-9a6f-921245500258"
    assert (row["symbol"], row["exchange"], row["asset_class"], row["side"]) == ("MWR", "asx", "equities", "UNKNOWN")
    assert (row["price"], row["quantity"]) == (Decimal("1.11000000"), Decimal("3667.00000000"))
    assert row["timestamp"].isoformat() == "2014-03-10T02:50:38.849000+00:00"
    assert row["trade_conditions"] == ["0"]
    assert dict(row["vendor_data"])["company_id"] == "3153"


# --- (b) every spec, with edge values


def edge_records(spec: RecordSpec, count: int = 90) -> list[dict[str, Any]]:
    """`count` records walking every field through its edge values; every third one has all optional fields null.
    Message ids are 36 characters, as DuckDB's decoder checks."""
    records = []
    for i in range(count):
        record = {f.name: edge_value(f, i + 7 * n) for n, f in enumerate(spec.fields)}
        if i % 3 == 2:
            record.update({f.name: None for f in spec.fields if not f.required})
        if spec.fields[0].name == "message_id":
            record["message_id"] = f"{i:08d}-0000-4000-8000-000000000000"
        records.append(record)
    return records


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
def test_edge_values_of_every_spec_decode_to_what_was_encoded(spec: RecordSpec) -> None:
    table = records_to_arrow(spec, edge_records(spec))
    same_table(decode_frames(spec, frames(spec, table)), table)
    same_table(decode_frames(spec, frames(spec, table, b""), header_size=0), table)


def _python_can_hold(field: FieldSpec, value: Any) -> bool:
    """fastavro reads timestamps as datetimes: years 1 to 9999 only."""
    return field.kind is not Kind.TIMESTAMP or value is None or abs(value) < 2**47


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
@pytest.mark.parametrize("optional", ["all null", "all present"])
def test_optional_fields_null_or_present_on_every_row(spec: RecordSpec, optional: str) -> None:
    records = edge_records(spec, 12)
    for i, record in enumerate(records):
        for f in spec.fields:
            if not f.required:
                record[f.name] = None if optional == "all null" else edge_value(f, i)
    table = records_to_arrow(spec, records)
    same_table(decode_frames(spec, frames(spec, table)), table)


def test_one_sided_quotes_keep_their_nulls() -> None:
    quote = {f.name: edge_value(f, 1) for f in QUOTES_V2.fields}
    records = [
        quote,
        {**quote, "bid_price": None, "bid_quantity": None},
        {**quote, "ask_price": None, "ask_quantity": None, "vendor_data": None},
        {**quote, "bid_price": None, "bid_quantity": None, "ask_price": None, "ask_quantity": None},
    ]
    got = decode_frames(QUOTES_V2, frames(QUOTES_V2, records_to_arrow(QUOTES_V2, records)))
    assert got["bid_price"].to_pylist() == [quote["bid_price"], None, quote["bid_price"], None]
    assert got["ask_price"].null_count == 2 and got["vendor_data"].null_count == 1
    same_table(got, records_to_arrow(QUOTES_V2, records))


def test_reference_data_dates_flags_and_unicode() -> None:
    base = {f.name: edge_value(f, 0) for f in REFERENCE_DATA_V2.fields}
    records = [
        {**base, "listing_date": date(1969, 12, 31), "delisting_date": None, "is_active": True, "company_name": "é"},
        {**base, "listing_date": date(1900, 1, 1), "delisting_date": date(2014, 3, 31), "is_active": False},
        {**base, "listing_date": None, "isin": None, "company_name": None, "vendor_data": None},
    ]
    got = decode_frames(REFERENCE_DATA_V2, frames(REFERENCE_DATA_V2, records_to_arrow(REFERENCE_DATA_V2, records)))
    assert got["listing_date"].to_pylist() == [date(1969, 12, 31), date(1900, 1, 1), None]
    assert got["is_active"].to_pylist() == [True, False, base["is_active"]]
    assert got["company_name"].to_pylist() == ["é", base["company_name"], None]


def test_decimals_at_every_byte_count_come_back_exactly() -> None:
    base = {f.name: edge_value(f, 0) for f in TRADES_V2.fields}
    records = [{**base, "price": d, "quantity": -d} for d in DECIMALS]
    got = decode_frames(TRADES_V2, frames(TRADES_V2, records_to_arrow(TRADES_V2, records)))
    assert got["price"].to_pylist() == DECIMALS
    assert got["quantity"].to_pylist() == [-d for d in DECIMALS]
    assert Decimal("-9999999999.99999999") in got["price"].to_pylist()


def test_batches_over_many_chunks_decode_as_one(monkeypatch: pytest.MonkeyPatch) -> None:
    table = records_to_arrow(TRADES_V2, edge_records(TRADES_V2, 100))
    values = frames(TRADES_V2, table)
    monkeypatch.setattr(avro_columnar_decode, "_CHUNK_ROWS", 7)
    same_table(decode_frames(TRADES_V2, values), table)


@pytest.mark.parametrize(
    "fields",
    [
        (FieldSpec("a", Kind.LONG, "one required field"),),
        (FieldSpec("a", Kind.BOOLEAN, "an optional boolean", required=False),),
        (FieldSpec("a", Kind.TIMESTAMP, "t"), FieldSpec("b", Kind.STRING, "s", required=False)),
        (FieldSpec("a", Kind.STRING_MAP, "m", required=False), FieldSpec("b", Kind.STRING_LIST, "l", required=False)),
        (FieldSpec("a", Kind.DATE, "d", required=False), FieldSpec("b", Kind.DECIMAL, "x", required=False)),
    ],
)
def test_specs_of_any_shape(fields: tuple[FieldSpec, ...]) -> None:
    spec = RecordSpec("probe", DataType.BARS, fields, "A record shape no V2 spec has (yet).")
    table = records_to_arrow(spec, edge_records(spec, 40))
    same_table(decode_frames(spec, frames(spec, table)), table)


def test_messages_fastavro_wrote_decode_too() -> None:
    records = edge_records(TRADES_V2, 30)
    values = [PREFIX + fastavro_bytes(TRADES_V2, r) for r in records]
    same_table(decode_frames(TRADES_V2, values), records_to_arrow(TRADES_V2, records))


def test_the_schema_id_is_checked_when_given() -> None:
    values = frames(TRADES_V2, records_to_arrow(TRADES_V2, edge_records(TRADES_V2, 4)))
    assert decode_frames(TRADES_V2, values, schema_id=7).num_rows == 4
    with pytest.raises(AvroDecodeError, match="schema id is not 8"):
        decode_frames(TRADES_V2, values, schema_id=8)


# --- (c) arrays and maps in the block-size form (a negative count, then the block's bytes) and in several blocks


def fastavro_bytes(spec: RecordSpec, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed_schema(spec), record)
    return out.getvalue()


def varint_long(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_bytes(data: bytes) -> bytes:
    return varint_long(len(data)) + data


def avro_blocks(items: list[bytes], block: int | None, sized: bool) -> bytes:
    """Avro array/map items in blocks of `block` items (all in one when None); `sized`: as -count, byte size."""
    out = b""
    step = block or max(1, len(items))
    for start in range(0, len(items), step):
        payload = b"".join(items[start : start + step])
        count = len(items[start : start + step])
        out += varint_long(-count) + varint_long(len(payload)) + payload if sized else varint_long(count) + payload
    return out + varint_long(0)


def avro_value(field: FieldSpec, value: Any, block: int | None, sized: bool) -> bytes:
    """One field by hand, as the Avro spec says (so blocks can be written the ways fastavro's writer does not)."""
    if not field.required:
        if value is None:
            return varint_long(0)
        return varint_long(1) + avro_value(FieldSpec(field.name, field.kind, "", True, field.enum), value, block, sized)
    if field.enum is not None:
        return varint_long([str(m.value) for m in field.enum].index(value))
    match field.kind:
        case Kind.STRING:
            return avro_bytes(value.encode())
        case Kind.LONG | Kind.TIMESTAMP:
            return varint_long(value)
        case Kind.DATE:
            return varint_long((value - date(1970, 1, 1)).days)
        case Kind.BOOLEAN:
            return bytes([value])
        case Kind.DECIMAL:
            unscaled = int(value.scaleb(PRICE_SCALE))
            return avro_bytes(unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True))
        case Kind.STRING_LIST:
            return avro_blocks([avro_bytes(v.encode()) for v in value], block, sized)
        case Kind.STRING_MAP:
            return avro_blocks(
                [avro_bytes(k.encode()) + avro_bytes(v.encode()) for k, v in value.items()], block, sized
            )
    raise AssertionError(field.kind)


def avro_datum(spec: RecordSpec, record: dict[str, Any], block: int | None = None, sized: bool = False) -> bytes:
    return b"".join(avro_value(f, record.get(f.name), block, sized) for f in spec.fields)


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
def test_the_hand_writer_writes_fastavros_bytes(spec: RecordSpec) -> None:
    for record in edge_records(spec, 30):
        assert avro_datum(spec, record) == fastavro_bytes(spec, record)


@pytest.mark.parametrize("spec", [TRADES_V2, QUOTES_V2, REFERENCE_DATA_V2], ids=lambda s: s.name)
@pytest.mark.parametrize(("block", "sized"), [(None, True), (1, True), (2, True), (1, False), (3, False)])
def test_arrays_and_maps_in_sized_or_several_blocks(spec: RecordSpec, block: int | None, sized: bool) -> None:
    records = edge_records(spec, 40)
    values = [PREFIX + avro_datum(spec, r, block, sized) for r in records]
    readable = [i for i, r in enumerate(records) if all(_python_can_hold(spec.field(k), v) for k, v in r.items())]
    for i in readable[:10]:  # valid Avro: fastavro reads them back as the records
        again = fastavro.schemaless_reader(io.BytesIO(values[i][5:]), parsed_schema(spec), None)
        assert again == fastavro.schemaless_reader(
            io.BytesIO(fastavro_bytes(spec, records[i])), parsed_schema(spec), None
        )
    same_table(decode_frames(spec, values), records_to_arrow(spec, records))


def test_a_block_size_that_does_not_match_its_items_is_refused() -> None:
    record = {**edge_records(TRADES_V2, 1)[0], "trade_conditions": ["ab", "c"]}
    good = avro_datum(TRADES_V2, record, sized=True)
    items = avro_bytes(b"ab") + avro_bytes(b"c")
    block = varint_long(-2) + varint_long(len(items)) + items
    assert good.count(block) == 1
    bad = good.replace(block, varint_long(-2) + varint_long(len(items) + 1) + items)
    with pytest.raises(AvroDecodeError, match="byte size"):
        decode_frames(TRADES_V2, [PREFIX + bad])


# --- (d) malformed messages are refused, naming the message


def trades(count: int = 10) -> tuple[list[dict[str, Any]], list[bytes]]:
    records = edge_records(TRADES_V2, count)
    for record in records:
        record.update(trade_id="T1", symbol="BHP", exchange="asx", asset_class="equities", source_sequence=5)
    return records, [PREFIX + avro_datum(TRADES_V2, r) for r in records]


def offset_of(spec: RecordSpec, record: dict[str, Any], field: str) -> int:
    """Where `field`'s bytes start in the framed message."""
    before = spec.fields[: spec.field_names.index(field)]
    return len(PREFIX) + sum(len(avro_value(f, record.get(f.name), None, False)) for f in before)


def damaged(values: list[bytes], i: int, change: bytes) -> list[bytes]:
    return [*values[:i], change, *values[i + 1 :]]


def refused(values: list[bytes], match: str, index: int) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        decode_frames(TRADES_V2, values)
    assert isinstance(caught.value, AvroDecodeError) and caught.value.index == index
    assert f"message {index}" in str(caught.value)


def test_well_formed_trades_decode() -> None:
    records, values = trades()
    same_table(decode_frames(TRADES_V2, values), records_to_arrow(TRADES_V2, records))


@pytest.mark.parametrize("cut", [1, 2, 20, 60])
def test_a_truncated_message_is_refused(cut: int) -> None:
    _, values = trades()
    refused(damaged(values, 3, values[3][:-cut]), "truncated|past the (message's )?end", 3)


def test_a_message_of_nothing_but_a_header_is_refused() -> None:
    _, values = trades()
    refused(damaged(values, 4, PREFIX), "past the message's end", 4)
    refused(damaged(values, 4, PREFIX[:3]), "shorter than its 5-byte header", 4)


@pytest.mark.parametrize("extra", [b"\x00", b"\x02\x41"])
def test_trailing_bytes_are_refused(extra: bytes) -> None:
    _, values = trades()
    refused(damaged(values, 9, values[9] + extra), "bytes left after the last field", 9)


@pytest.mark.parametrize("branch", [b"\x04", b"\x01", b"\x80\x01"])  # union indexes 2, -1, 64
def test_a_bad_union_index_is_refused(branch: bytes) -> None:
    records, values = trades()
    at = offset_of(TRADES_V2, records[2], "source_sequence")
    assert values[2][at] == 2  # branch 1: a value follows
    refused(damaged(values, 2, values[2][:at] + branch + values[2][at + 1 :]), "union branch", 2)


@pytest.mark.parametrize("index", [b"\x08", b"\x01", b"\x90\x01"])  # enum indexes 4 (of 4 symbols), -1, 72
def test_a_bad_enum_index_is_refused(index: bytes) -> None:
    records, values = trades()
    at = offset_of(TRADES_V2, records[5], "asset_class")
    refused(damaged(values, 5, values[5][:at] + index + values[5][at + 1 :]), "AssetClass", 5)


def test_invalid_utf8_is_refused() -> None:
    records, values = trades()
    at = offset_of(TRADES_V2, records[6], "trade_id") + 1  # past the length byte
    assert values[6][at : at + 2] == b"T1"
    refused(damaged(values, 6, values[6][:at] + b"\xff" + values[6][at + 1 :]), "not UTF-8", 6)
    # in a list item this time, and an encoded surrogate (UTF-8 has none)
    record = {**records[7], "trade_conditions": ["ok", "x"]}
    bad = avro_datum(TRADES_V2, record).replace(avro_bytes(b"x"), avro_bytes(b"\xed\xa0\x80"))
    refused(damaged(values, 7, PREFIX + bad), "not UTF-8", 7)


def test_a_wrong_magic_byte_is_refused() -> None:
    _, values = trades()
    refused(damaged(values, 0, b"\x01" + values[0][1:]), "magic byte", 0)


def test_negative_or_overlong_lengths_are_refused() -> None:
    records, values = trades()
    at = offset_of(TRADES_V2, records[1], "trade_id")
    refused(damaged(values, 1, values[1][:at] + varint_long(-2) + values[1][at + 1 :]), "negative length", 1)
    refused(damaged(values, 1, values[1][:at] + varint_long(10_000) + values[1][at + 1 :]), "past the", 1)


def test_decimals_wider_than_decimal_18_are_refused() -> None:
    records, values = trades()
    at = offset_of(TRADES_V2, records[8], "price")
    size = values[8][at] // 2 + 1  # the length byte and the bytes
    nine = avro_bytes(b"\x00" * 8 + b"\x01")  # 1, in 9 bytes
    refused(damaged(values, 8, values[8][:at] + nine + values[8][at + size :]), "wider than 8 bytes", 8)
    big = avro_bytes((10**18).to_bytes(8, "big", signed=True))  # 19 digits
    refused(damaged(values, 8, values[8][:at] + big + values[8][at + size :]), "more than 18 digits", 8)


def test_an_overlong_varint_is_refused() -> None:
    records, values = trades()
    at = offset_of(TRADES_V2, records[4], "timestamp")
    size = len(varint_long(records[4]["timestamp"]))
    eleven = b"\xff" * 10 + b"\x01"
    refused(damaged(values, 4, values[4][:at] + eleven + values[4][at + size :]), "varint", 4)


def test_the_failing_message_is_named_in_later_chunks_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(avro_columnar_decode, "_CHUNK_ROWS", 4)
    _, values = trades(12)
    refused(damaged(values, 9, values[9] + b"\x00"), "bytes left after the last field", 9)
    refused(damaged(values, 10, b"\x01" + values[10][1:]), "magic byte", 10)


def test_a_message_of_another_schema_is_refused() -> None:
    quote = records_to_arrow(QUOTES_V2, edge_records(QUOTES_V2, 3))
    _, values = trades(3)
    with pytest.raises(AvroDecodeError):
        decode_frames(TRADES_V2, [*values, *frames(QUOTES_V2, quote)])


def mutations(message: bytes, rng: random.Random) -> bytes:
    """`message` with a few bytes changed, dropped or added, or cut short."""
    data = bytearray(message)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(PREFIX), len(data))
        match rng.choice(["flip", "drop", "add", "cut"]):
            case "flip":
                data[at] = rng.randrange(256)
            case "drop":
                del data[at]
            case "add":
                data.insert(at, rng.randrange(256))
            case "cut":
                del data[at:]
        if len(data) <= len(PREFIX):
            break
    return bytes(data)


def fastavro_reads(spec: RecordSpec, message: bytes) -> dict[str, Any] | None:
    """The record fastavro reads from `message`, timestamps as micros; None unless it reads exactly all its bytes."""
    body = io.BytesIO(message[len(PREFIX) :])
    try:
        record = fastavro.schemaless_reader(body, parsed_schema(spec), None)
    except Exception:
        return None
    if body.tell() != len(message) - len(PREFIX):
        return None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return {k: (v - epoch) // _MICROSECOND if isinstance(v, datetime) else v for k, v in record.items()}


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("spec", [TRADES_V2, QUOTES_V2, REFERENCE_DATA_V2], ids=lambda s: s.name)
def test_damaged_messages_are_refused_or_read_as_fastavro_reads_them(spec: RecordSpec) -> None:
    """Random damage: either a ValueError, or (the damage still spells a datum) exactly fastavro's record."""
    rng = random.Random(20140310)
    records = [r for r in edge_records(spec, 60) if all(_python_can_hold(spec.field(k), v) for k, v in r.items())]
    values = frames(spec, records_to_arrow(spec, records))
    refusals = 0
    for _ in range(400):
        message = mutations(rng.choice(values), rng)
        try:
            table = decode_frames(spec, [message])
        except ValueError:
            refusals += 1
            continue
        try:
            got = records_from_arrow(table)[0]
        except OverflowError:  # a valid date Python cannot hold (fastavro cannot read it either)
            assert fastavro_reads(spec, message) is None
            continue
        assert got == fastavro_reads(spec, message), message
    assert 100 < refusals < 400


# --- (e) nothing to decode


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
def test_no_messages_give_an_empty_table_of_the_schema(spec: RecordSpec) -> None:
    table = decode_frames(spec, [])
    assert table.num_rows == 0 and table.schema == arrow_schema(spec)
