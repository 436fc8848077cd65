"""The V2 schemas: one definition, consistent forms, exact codecs."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import fastavro
import pyarrow as pa
import pytest

from k2.schema import (
    ALL_RECORDS,
    BOOK_DEPTH_V2,
    BOOK_SNAPSHOTS_V2,
    BOOK_UPDATES_V2,
    QUOTES_V2,
    REFERENCE_DATA_V2,
    TRADES_V2,
)
from k2.schema.arrow import arrow_schema, records_to_arrow
from k2.schema.avro import avro_schema, parsed_schema
from k2.schema.codecs import DecimalError, message_id, micros_from_datetime, parse_decimal
from k2.schema.iceberg import iceberg_schema, partition_spec
from tests.integration.helpers import make_trade


def test_field_counts_match_the_contract() -> None:
    assert len(TRADES_V2.fields) == 15
    assert len(QUOTES_V2.fields) == 15
    assert len(REFERENCE_DATA_V2.fields) == 13
    assert len(BOOK_UPDATES_V2.fields) == 12
    assert len(BOOK_SNAPSHOTS_V2.fields) == 12
    assert len(BOOK_DEPTH_V2.fields) == 10


@pytest.mark.parametrize("spec", ALL_RECORDS, ids=lambda s: s.name)
def test_every_form_has_the_same_fields_in_the_same_order(spec) -> None:
    names = spec.field_names
    assert [f["name"] for f in avro_schema(spec)["fields"]] == names
    assert arrow_schema(spec).names == names
    assert [f.name for f in iceberg_schema(spec).fields] == names


@pytest.mark.parametrize("spec", ALL_RECORDS, ids=lambda s: s.name)
def test_optional_fields_are_nullable_everywhere(spec) -> None:
    arrow = arrow_schema(spec)
    iceberg = iceberg_schema(spec)
    for field in spec.fields:
        assert arrow.field(field.name).nullable is (not field.required)
        assert iceberg.find_field(field.name).required is field.required


def test_prices_are_decimal_18_8_in_every_form() -> None:
    avro_price = next(f for f in avro_schema(TRADES_V2)["fields"] if f["name"] == "price")["type"]
    assert avro_price == {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 8}
    assert arrow_schema(TRADES_V2).field("price").type == pa.decimal128(18, 8)
    assert str(iceberg_schema(TRADES_V2).find_field("price").field_type) == "decimal(18, 8)"


def test_partitioned_by_day_and_exchange() -> None:
    spec = partition_spec(TRADES_V2)
    assert [(f.name, str(f.transform)) for f in spec.fields] == [("timestamp_day", "day"), ("exchange", "identity")]


def test_avro_round_trip_keeps_decimals_and_microseconds_exact() -> None:
    record = make_trade(7, price="36.667")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_schema(TRADES_V2), record)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, parsed_schema(TRADES_V2), None)
    assert back["price"] == Decimal("36.66700000")
    assert micros_from_datetime(back["timestamp"]) == record["timestamp"]


def test_arrow_table_keeps_decimals_exact() -> None:
    table = records_to_arrow(TRADES_V2, [make_trade(1, price="0.00000001"), make_trade(2, price="99999.12345678")])
    assert table["price"].to_pylist() == [Decimal("0.00000001"), Decimal("99999.12345678")]


@pytest.mark.parametrize(
    ("text", "value"), [("36.667", "36.66700000"), ("0.0", "0E-8"), ("  1 ", "1.00000000"), ("-2.5", "-2.50000000")]
)
def test_parse_decimal_is_exact(text: str, value: str) -> None:
    assert parse_decimal(text) == Decimal(value)
    assert parse_decimal(text).as_tuple().exponent == -8


# "58006E79000000": an exponent past the decimal context's range (Overflow on first use, not a DecimalError before)
@pytest.mark.parametrize(
    "text", ["abc", "", "1e400", "nan", "inf", "0.123456789", "12345678901", "58006E79000000", "1E-99999999"]
)
def test_parse_decimal_refuses_what_does_not_fit(text: str) -> None:
    with pytest.raises(DecimalError):
        parse_decimal(text)


def test_message_id_is_deterministic_and_discriminating() -> None:
    a = message_id("asx", "trades", "BHP", "20140310:1")
    assert a == message_id("asx", "trades", "BHP", "20140310:1")
    assert a != message_id("asx", "quotes", "BHP", "20140310:1")
    assert a != message_id("asx", "trades", "RIO", "20140310:1")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        micros_from_datetime(datetime(2014, 3, 10))
    assert micros_from_datetime(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_data_dictionary_doc_matches_the_code() -> None:
    from pathlib import Path

    from k2.schema.docs import data_dictionary_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "data-dictionary.md"
    hint = "regenerate: python -m k2.schema.docs > docs/data-dictionary.md"
    assert doc.read_text() == data_dictionary_markdown(), hint


@pytest.mark.parametrize("source_id", ["20140310:1", "03/10/2014,07:57:14.754,36.667,20000,3,X,#0", "é"])
def test_message_id_is_standard_uuid5(source_id: str) -> None:
    import uuid

    from k2.schema.codecs import MESSAGE_ID_NAMESPACE

    expected = uuid.uuid5(MESSAGE_ID_NAMESPACE, f"asx|trades|BHP|{source_id}")
    assert message_id("asx", "trades", "BHP", source_id) == str(expected)
