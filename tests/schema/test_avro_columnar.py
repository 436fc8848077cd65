"""The columnar encoder writes, for every row of an Arrow table, exactly the per-record encoder's bytes."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from k2.schema.arrow import arrow_schema, records_from_arrow, records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.avro_columnar import encode_table
from k2.schema.avro_encoder import compile_encoder
from k2.schema.fields import (
    QUOTES_V2,
    REFERENCE_DATA_V2,
    TRADES_V2,
    DataType,
    FieldSpec,
    Kind,
    RecordSpec,
    Side,
)
from k2.sources.asx import AsxSource
from tests.schema.specs import EVERY_SPEC, PREFIX, edge_value


def per_record(spec: RecordSpec, records: list[dict[str, Any]], prefix: bytes = PREFIX) -> list[bytes]:
    encode = compile_encoder(spec, prefix=prefix)
    return [encode(r) for r in records]


def columnar(spec: RecordSpec, records: list[dict[str, Any]], prefix: bytes = PREFIX) -> list[bytes]:
    out = encode_table(spec, records_to_arrow(spec, records), prefix)
    assert out.null_count == 0 and len(out) == len(records)
    return out.to_pylist()


SAMPLE_COUNTS = {"reference_data_v2": 6, "trades_v2": 200_545, "quotes_v2": 169_629}


@pytest.fixture(scope="module")
def asx_records(asx_sample: Path) -> dict[RecordSpec, list[dict[str, Any]]]:
    """Every record of the sample as the row parser makes them (dicts), by kind."""
    records: dict[RecordSpec, list[dict[str, Any]]] = {}
    for batch in AsxSource(asx_sample, columnar=False).batches():
        records.setdefault(batch.spec, []).extend(batch.records)
    return records


def test_every_asx_sample_record_encodes_to_the_per_record_encoders_bytes(
    asx_records: dict[RecordSpec, list[dict[str, Any]]],
) -> None:
    assert {spec.name: len(records) for spec, records in asx_records.items()} == SAMPLE_COUNTS
    for spec, records in asx_records.items():
        got, expected = columnar(spec, records), per_record(spec, records)
        mismatched = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
        assert mismatched == [], f"{spec.name}: rows {mismatched[:5]} differ"


def test_the_asx_sources_own_batches_encode_row_for_row(asx_sample: Path) -> None:
    """Whatever form the source hands over (Arrow tables from its columnar path, dicts otherwise), every row's bytes
    are the per-record encoder's."""
    counts: dict[str, int] = {}
    for batch in AsxSource(asx_sample).batches():
        table = getattr(batch, "table", None)
        if table is None:
            table = records_to_arrow(batch.spec, batch.records)
        records = records_from_arrow(table)
        assert encode_table(batch.spec, table, PREFIX).to_pylist() == per_record(batch.spec, records)
        counts[batch.spec.name] = counts.get(batch.spec.name, 0) + len(records)
    assert counts == SAMPLE_COUNTS


def test_asx_rows_decode_back_with_fastavro(asx_records: dict[RecordSpec, list[dict[str, Any]]]) -> None:
    for spec, records in asx_records.items():
        sample = records[:: max(1, len(records) // 50)]
        for record, message in zip(sample, columnar(spec, sample), strict=True):
            assert message[:5] == PREFIX
            body = io.BytesIO(message[5:])
            decoded = fastavro.schemaless_reader(body, parsed_schema(spec), None)
            assert body.tell() == len(message) - 5  # nothing left over
            assert decoded == as_fastavro_reads(spec, record)


def as_fastavro_reads(spec: RecordSpec, record: dict[str, Any]) -> dict[str, Any]:
    """`record` as fastavro decodes it: timestamps as UTC datetimes, absent optional fields as None."""
    out = {}
    for f in spec.fields:
        value = record.get(f.name)
        if f.kind is Kind.TIMESTAMP and value is not None:
            value = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
        out[f.name] = value
    return out


def test_a_trade_decodes_to_its_values() -> None:
    record = trade(price=Decimal("-36.667"), quantity=Decimal("0"), trade_conditions=["X", "é"])
    message = encode_table(TRADES_V2, records_to_arrow(TRADES_V2, [record]), PREFIX)[0].as_py()
    decoded = fastavro.schemaless_reader(io.BytesIO(message[5:]), parsed_schema(TRADES_V2), None)
    assert decoded["price"] == Decimal("-36.66700000") and decoded["quantity"] == 0
    assert decoded["trade_conditions"] == ["X", "é"]
    assert decoded["vendor_data"] == {"qualifier": "3", "venue": "€"}
    assert decoded["timestamp"] == datetime(2014, 3, 10, 2, 50, 38, 849000, tzinfo=UTC)


def edge_records(spec: RecordSpec, count: int = 80) -> list[dict[str, Any]]:
    """`count` records walking every field through all its edge values (no list is longer than 80), each followed by
    a copy with every optional field null (present as None, or absent)."""
    records = []
    for i in range(count):
        record = {f.name: edge_value(f, i + 7 * n) for n, f in enumerate(spec.fields)}
        nulled = {k: v for k, v in record.items() if spec.field(k).required or i % 2}
        nulled.update({f.name: None for f in spec.fields if not f.required and i % 2})
        records += [record, nulled]
    return records


def test_every_record_spec_is_covered() -> None:
    assert {s.name for s in EVERY_SPEC} >= {"trades_v2", "quotes_v2", "reference_data_v2", "bars_v2", "stream_gaps"}


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
@pytest.mark.parametrize("prefix", [PREFIX, b""], ids=["framed", "bare"])
def test_edge_values_of_every_spec_encode_like_the_per_record_encoder(spec: RecordSpec, prefix: bytes) -> None:
    records = edge_records(spec)
    assert columnar(spec, records, prefix) == per_record(spec, records, prefix)


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=lambda s: s.name)
def test_all_optional_fields_null_on_every_row(spec: RecordSpec) -> None:
    records = [{f.name: None if not f.required else edge_value(f, i) for f in spec.fields} for i in range(5)]
    assert columnar(spec, records) == per_record(spec, records)


def trade(**changes: Any) -> dict[str, Any]:
    record = {
        "message_id": "d00816fd-7f73-566e-9a6f-921245500258",
        "trade_id": "20140310-1",
        "symbol": "MWR",
        "exchange": "asx",
        "asset_class": "equities",
        "timestamp": 1_394_419_838_849_000,
        "price": Decimal("1.11"),
        "quantity": Decimal("3667"),
        "currency": "AUD",
        "side": "UNKNOWN",
        "trade_conditions": ["0"],
        "source_sequence": 1,
        "ingestion_timestamp": 1_795_659_930_733_879,
        "platform_sequence": 1,
        "vendor_data": {"qualifier": "3", "venue": "€"},
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "changes",
    [
        {"timestamp": -1},  # before 1970
        {"timestamp": -86_400_000_000 * 365 * 100},
        {"price": Decimal("0"), "quantity": Decimal("-0.00000001")},
        {"price": Decimal("-128E-8"), "quantity": Decimal("128E-8")},  # -128 takes two bytes, as in fastavro
        {"price": Decimal("9999999999.99999999"), "quantity": Decimal("-9999999999.99999999")},
        {"trade_conditions": [], "vendor_data": {}},
        {"trade_conditions": ["a", "b", "c"], "vendor_data": {"a": "1", "b": "", "c": "3", "d": "4"}},
        {"vendor_data": None, "source_sequence": None, "platform_sequence": None},
        {"symbol": "", "trade_id": "", "message_id": ""},
        {"symbol": "Ünïcødé 😀", "currency": "€"},
        {"side": Side.SELL_SHORT.value, "asset_class": "options"},
    ],
)
def test_single_edge_trades(changes: dict[str, Any]) -> None:
    records = [trade(), trade(**changes), trade()]
    assert columnar(TRADES_V2, records) == per_record(TRADES_V2, records)


@pytest.mark.parametrize(
    "strings",
    [
        ["AUD", "AUD", "AUD"],  # one length: copied as a block
        ["", "", ""],  # one length, zero
        ["a" * 64, "b" * 64],  # the longest one-length block
        ["a" * 65, "b" * 65],  # too long for a block: a binary piece
        ["AUD", "USDT", ""],  # lengths differ: a binary piece
        ["é", "€"],  # same character count, different byte counts
    ],
)
def test_string_columns_of_one_or_many_lengths(strings: list[str]) -> None:
    records = [trade(currency=s, symbol=s, vendor_data={s: s}, trade_conditions=[s, s]) for s in strings]
    assert columnar(TRADES_V2, records) == per_record(TRADES_V2, records)


def test_quotes_with_one_or_no_side() -> None:
    quote = {f.name: edge_value(f, 1) for f in QUOTES_V2.fields}
    records = [
        quote,
        {**quote, "bid_price": None, "bid_quantity": None},
        {**quote, "ask_price": None, "ask_quantity": None},
        {**quote, "bid_price": None, "bid_quantity": None, "ask_price": None, "ask_quantity": None},
    ]
    assert columnar(QUOTES_V2, records) == per_record(QUOTES_V2, records)


def test_reference_data_with_dates_before_1970_and_flags() -> None:
    base = {f.name: edge_value(f, 0) for f in REFERENCE_DATA_V2.fields}
    records = [
        {**base, "listing_date": date(1969, 12, 31), "delisting_date": None, "is_active": True},
        {**base, "listing_date": date(1900, 1, 1), "delisting_date": date(2014, 3, 31), "is_active": False},
        {**base, "listing_date": None, "isin": None, "company_name": None, "vendor_data": None},
    ]
    assert columnar(REFERENCE_DATA_V2, records) == per_record(REFERENCE_DATA_V2, records)


def test_sliced_and_chunked_tables_encode_row_for_row() -> None:
    records = edge_records(TRADES_V2, 60)
    table = records_to_arrow(TRADES_V2, records)
    expected = per_record(TRADES_V2, records)
    assert encode_table(TRADES_V2, table.slice(7, 30), PREFIX).to_pylist() == expected[7:37]
    chunked = pa.concat_tables([table.slice(0, 13), table.slice(13, 1), table.slice(14)])
    assert chunked.column("vendor_data").num_chunks == 3
    assert encode_table(TRADES_V2, chunked, PREFIX).to_pylist() == expected


def test_extra_columns_are_ignored_and_column_order_does_not_matter() -> None:
    table = records_to_arrow(TRADES_V2, [trade(), trade(price=Decimal("2"))])
    shuffled = table.select(list(reversed(table.column_names))).append_column("extra", pa.array([1, 2]))
    assert encode_table(TRADES_V2, shuffled).to_pylist() == per_record(
        TRADES_V2, [trade(), trade(price=Decimal("2"))], b""
    )


def test_an_empty_table_gives_an_empty_array() -> None:
    out = encode_table(TRADES_V2, records_to_arrow(TRADES_V2, []), PREFIX)
    assert out.type == pa.large_binary() and len(out) == 0


@pytest.mark.parametrize(
    "fields",
    [
        (FieldSpec("a", Kind.LONG, "one required field"),),
        (FieldSpec("a", Kind.LONG, "only optional fields", required=False),),
        (FieldSpec("a", Kind.TIMESTAMP, "t"), FieldSpec("b", Kind.STRING, "s", required=False)),
        (FieldSpec("a", Kind.STRING_MAP, "m", required=False), FieldSpec("b", Kind.STRING_LIST, "l")),
    ],
)
def test_specs_of_any_shape(fields: tuple[FieldSpec, ...]) -> None:
    spec = RecordSpec("probe", DataType.BARS, fields, "A record shape no V2 spec has (yet).")
    records = edge_records(spec, 40)
    assert columnar(spec, records) == per_record(spec, records)


# --- values the per-record encoder would not write the same way: refused, naming field and row


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = table.column_names.index(name)
    return table.set_column(index, pa.field(name, values.type), values)


def three_trades() -> pa.Table:
    return records_to_arrow(TRADES_V2, [trade(), trade(), trade()])


def decimals(*unscaled: int) -> pa.Array:
    """A decimal128(18,8) array holding raw unscaled values, even ones Arrow itself would not build."""
    data = b"".join(n.to_bytes(16, "little", signed=True) for n in unscaled)
    return pa.Array.from_buffers(pa.decimal128(18, 8), len(unscaled), [None, pa.py_buffer(data)])


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("symbol", pa.array(["BHP", None, "BHP"]), r"trades_v2\.symbol, row 1: null in a required field"),
        ("price", decimals(1, 2, 3), None),  # valid: the helper builds what the tests below think
        ("price", decimals(1, 10**18, 3), r"trades_v2\.price, row 1: .*more than 18 digits"),
        ("price", decimals(1, 2, -(10**18)), r"trades_v2\.price, row 2: .*more than 18 digits"),
        ("quantity", decimals(2**64, 1, 1), r"trades_v2\.quantity, row 0: .*more than 18 digits"),
        ("side", pa.array(["BUY", "SELL", "BOTH"]), r"trades_v2\.side, row 2: 'BOTH' is not a symbol of Side"),
        ("asset_class", pa.array(["equities", "Equities", "x"]), r"trades_v2\.asset_class, row 1: 'Equities'"),
        ("timestamp", pa.array([1, None, 3], pa.timestamp("us", tz="UTC")), r"trades_v2\.timestamp, row 1: null"),
    ],
)
def test_values_that_cannot_be_written_the_same_way_are_refused(
    name: str, values: pa.Array, message: str | None
) -> None:
    table = with_column(three_trades(), name, values)
    if message is None:
        assert len(encode_table(TRADES_V2, table)) == 3
        return
    with pytest.raises(ValueError, match=message):
        encode_table(TRADES_V2, table)


def test_nulls_inside_lists_and_maps_and_repeated_map_keys_are_refused() -> None:
    table = three_trades()
    conditions = pa.array([["0"], ["1"], ["a", None]], arrow_schema(TRADES_V2).field("trade_conditions").type)
    with pytest.raises(ValueError, match=r"trades_v2\.trade_conditions, row 2: null list item"):
        encode_table(TRADES_V2, with_column(table, "trade_conditions", conditions))
    vendor_type = arrow_schema(TRADES_V2).field("vendor_data").type
    null_value = pa.array([[("a", "1")], [("a", None)], []], vendor_type)
    with pytest.raises(ValueError, match=r"trades_v2\.vendor_data, row 1: null map value"):
        encode_table(TRADES_V2, with_column(table, "vendor_data", null_value))
    repeated = pa.array([[("a", "1"), ("b", "2")], [], [("a", "1"), ("b", "2"), ("a", "3")]], vendor_type)
    with pytest.raises(ValueError, match=r"trades_v2\.vendor_data, row 2: repeated map key"):
        encode_table(TRADES_V2, with_column(table, "vendor_data", repeated))
    many = [(f"k{i}", "v") for i in range(40)]
    big = pa.array([many, [*many, ("k3", "again")], []], vendor_type)  # wider than the shifted-compare scan
    with pytest.raises(ValueError, match=r"trades_v2\.vendor_data, row 1: repeated map key"):
        encode_table(TRADES_V2, with_column(table, "vendor_data", big))
    assert len(encode_table(TRADES_V2, with_column(table, "vendor_data", pa.array([many, many, []], vendor_type))))


def test_values_under_null_rows_of_optional_fields_do_not_matter() -> None:
    """A null map or list may still cover entries in Arrow; like null decimals' raw bytes, they are not written."""
    vendor_type = arrow_schema(TRADES_V2).field("vendor_data").type
    entries = pa.array([[("a", "1"), ("a", None)]], vendor_type).values  # the second is bad, but under a null row
    validity = pa.array([True, False, True]).buffers()[1]
    offsets = pa.array([0, 1, 2, 2], pa.int32()).buffers()[1]
    vendor = pa.Array.from_buffers(vendor_type, 3, [validity, offsets], children=[entries])
    assert vendor.to_pylist() == [[("a", "1")], None, []]
    table = with_column(three_trades(), "vendor_data", vendor)
    records = [trade(vendor_data={"a": "1"}), trade(vendor_data=None), trade(vendor_data={})]
    assert encode_table(TRADES_V2, table, PREFIX).to_pylist() == per_record(TRADES_V2, records)


def test_wrong_or_missing_columns_are_refused() -> None:
    table = three_trades()
    with pytest.raises(ValueError, match=r"trades_v2: the table has no column 'price'"):
        encode_table(TRADES_V2, table.drop_columns(["price"]))
    with pytest.raises(ValueError, match=r"trades_v2\.price: column type is double"):
        encode_table(TRADES_V2, with_column(table, "price", pa.array([1.5, 2.5, 3.5])))
    with pytest.raises(ValueError, match=r"trades_v2\.timestamp: column type is timestamp\[ns"):
        encode_table(
            TRADES_V2, with_column(table, "timestamp", table.column("timestamp").cast(pa.timestamp("ns", "UTC")))
        )
