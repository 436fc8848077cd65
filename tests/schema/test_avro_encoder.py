"""The compiled V2 encoder writes exactly fastavro's bytes, for every ASX sample record and at every edge."""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import fastavro
import numpy as np
import pytest

from k2.samples import ASX_SAMPLE as SAMPLE
from k2.schema.avro import parsed_schema
from k2.schema.avro_encoder import compile_encoder
from k2.schema.fields import ALL_RECORDS, REFERENCE_DATA_V2, TRADES_V2, DataType, FieldSpec, Kind, RecordSpec
from k2.sources.asx import AsxSource


def fastavro_bytes(spec: RecordSpec, record: dict[str, Any], prefix: bytes = b"") -> bytes:
    buf = io.BytesIO()
    buf.write(prefix)
    fastavro.schemaless_writer(buf, parsed_schema(spec), record)
    return buf.getvalue()


def fastavro_outcome(spec: RecordSpec, record: dict[str, Any]) -> bytes | type[BaseException]:
    try:
        return fastavro_bytes(spec, record)
    except Exception as exc:
        return type(exc)


def outcome(encode: Callable[[dict[str, Any]], bytes], record: dict[str, Any]) -> bytes | type[BaseException]:
    try:
        return encode(record)
    except Exception as exc:
        return type(exc)


def test_every_asx_sample_record_encodes_to_fastavros_bytes() -> None:
    encoders: dict[str, Callable[[dict[str, Any]], bytes]] = {}
    checked = 0
    for batch in AsxSource(SAMPLE, columnar=False).batches():  # the row parser's dicts, as the encoder takes
        encode = encoders.setdefault(batch.spec.name, compile_encoder(batch.spec, prefix=b"\x00\x00\x00\x00\x07"))
        for record in batch.records:
            assert encode(record) == fastavro_bytes(batch.spec, record, b"\x00\x00\x00\x00\x07"), record
        checked += len(batch.records)
    assert checked == 370_180


LONGS = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, -8193, 2**13, 2**14, 2**20, 2**27, 2**28, 2**35, 2**41, 2**42]
LONGS += [2**48, 2**55, 2**56, 2**62, 2**63 - 1, -(2**63), 1_394_406_049_683_000, -1_394_406_049_683_000]
DECIMALS = [
    "0",
    "-0",
    "0E-8",
    "0.00000001",
    "-0.00000001",
    "1.27",
    "1.28",
    "-1.28",
    "-1.29",
    "36.667",
    "36.66700000",
    "-36.66700000",
    "9999999999.99999999",
    "-9999999999.99999999",
    "1E+20",
    "123456789012345678",
    "1E+3",
]


def sample_value(spec: FieldSpec, i: int) -> Any:
    """A varied valid value for field `spec`; `i` walks through the edge lists."""
    if spec.enum is not None:
        members = list(spec.enum)
        return members[i % len(members)] if i % 2 else str(members[i % len(members)].value)
    match spec.kind:
        case Kind.STRING:
            return ["", "BHP", "é€😀", "x" * 70, "y" * 9_000, "z" * 64][i % 6]
        case Kind.LONG | Kind.TIMESTAMP:
            return LONGS[i % len(LONGS)]
        case Kind.DATE:
            return [date(2014, 3, 10), 0, -1, 16_000, date(1900, 1, 1)][i % 5]
        case Kind.BOOLEAN:
            return [True, False, 1, 0][i % 4]
        case Kind.DECIMAL:
            return Decimal(DECIMALS[i % len(DECIMALS)])
        case Kind.STRING_LIST:
            return [[], ["0"], ["25", "X", "é"], ["a" * 200]][i % 4]
        case Kind.STRING_MAP:
            return [{}, {"qualifier": "3"}, {"b": "2", "a": "1", "é": "€" * 100}][i % 3]
    raise AssertionError(spec.kind)


@pytest.mark.parametrize("spec", ALL_RECORDS, ids=lambda s: s.name)
def test_edge_values_of_every_field_kind_encode_like_fastavro(spec: RecordSpec) -> None:
    encode = compile_encoder(spec)
    for i in range(60):
        record = {f.name: sample_value(f, i + n) for n, f in enumerate(spec.fields)}
        if i % 3 == 0:  # optional fields null (present as None, or absent)
            for f in spec.fields:
                if not f.required:
                    if i % 2:
                        record[f.name] = None
                    else:
                        del record[f.name]
        assert encode(record) == fastavro_bytes(spec, record), record


def trade(**changes: Any) -> dict[str, Any]:
    record = {f.name: sample_value(f, 1) for f in TRADES_V2.fields}
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "record",
    [
        trade(price=Decimal("1.000000001")),  # more than 8 places: fastavro refuses
        trade(price=Decimal("36.6670000000")),  # equal to 36.667, but written with 10 places: refused as well
        trade(price=Decimal("1234567890123456789")),  # 19 digits
        trade(price=Decimal("NaN")),
        trade(price=1.5),  # a float never passes for a decimal
        trade(price="36.667"),
        trade(price=b"\x01"),  # raw bytes: fastavro writes them as they are
        trade(timestamp=datetime(2014, 3, 10, 1, 2, 3, 456789, tzinfo=UTC)),  # datetimes: fastavro converts
        trade(timestamp=2**63),
        trade(timestamp=-(2**63) - 1),
        trade(timestamp=1.5),
        trade(timestamp=None),
        trade(ingestion_timestamp=None),
        trade(timestamp=np.int64(2**62)),  # would wrap around in 64-bit shifts
        trade(source_sequence=True),
        trade(side="NOT_A_SIDE"),
        trade(trade_conditions=None),
        trade(vendor_data={"a": 1}),
        trade(symbol=None),
        trade(symbol=5),
        {k: v for k, v in trade().items() if k != "symbol"},
        trade(extra_key="ignored"),
    ],
)
def test_values_outside_the_fast_path_give_fastavros_outcome_bytes_or_error(record: dict[str, Any]) -> None:
    assert outcome(compile_encoder(TRADES_V2), record) == fastavro_outcome(TRADES_V2, record)


@pytest.mark.parametrize(
    "fields",
    [
        (FieldSpec("a", Kind.LONG, "one required field"),),
        (FieldSpec("a", Kind.LONG, "only optional fields", required=False),),
        (FieldSpec("a", Kind.TIMESTAMP, "t"), FieldSpec("b", Kind.STRING, "s", required=False)),
    ],
)
def test_specs_of_any_shape_encode_like_fastavro(fields: tuple[FieldSpec, ...]) -> None:
    spec = RecordSpec("probe", DataType.BARS, fields, "A record shape no V2 spec has (yet).")
    encode = compile_encoder(spec)
    for record in [{"a": 5, "b": "z"}, {"a": None}, {}, {"a": 5}, {"a": 5}, {"a": None}]:
        assert outcome(encode, record) == fastavro_outcome(spec, record), record


def test_a_reference_record_with_dates_and_flags_encodes_like_fastavro() -> None:
    record = {f.name: sample_value(f, 0) for f in REFERENCE_DATA_V2.fields}
    for listing, active in [(date(2014, 3, 10), True), (None, False), (19_000, 0)]:
        record.update(listing_date=listing, is_active=active)
        assert compile_encoder(REFERENCE_DATA_V2)(record) == fastavro_bytes(REFERENCE_DATA_V2, record)


def test_one_encoder_shared_by_threads_gives_each_record_its_own_bytes() -> None:
    encode = compile_encoder(TRADES_V2)
    records = [trade(timestamp=1_394_406_049_683_000 + i, ingestion_timestamp=10**15 + i % 7) for i in range(4_000)]
    expected = [fastavro_bytes(TRADES_V2, r) for r in records]
    results: dict[int, list[bytes]] = {}
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races between lookups and updates show up
    try:
        threads = [
            threading.Thread(target=lambda k=k: results.__setitem__(k, list(map(encode, records)))) for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert all(results[k] == expected for k in range(4))
