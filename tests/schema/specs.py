"""Shared by the Avro encoder/decoder tests: every record spec, the framing they use, and edge values."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from k2.schema import fields as fields_module
from k2.schema.fields import ALL_RECORDS, PRICE_SCALE, FieldSpec, Kind, RecordSpec

PREFIX = b"\x00\x00\x00\x00\x07"  # Confluent header for schema id 7

# Every RecordSpec fields.py defines, listed in ALL_RECORDS or not (bars, gaps, ...).
EVERY_SPEC: tuple[RecordSpec, ...] = tuple(
    {id(v): v for v in (*ALL_RECORDS, *vars(fields_module).values()) if isinstance(v, RecordSpec)}.values()
)

# Edge values per Avro type, walked through by `edge_value`.
LONGS = [0, 1, -1, 63, 64, -64, -65, 8191, 8192, -8193, 2**20, 2**27, 2**28, 2**31, -(2**31) - 1, 2**35, 2**41]
LONGS += [2**42, 2**48, 2**55 - 1, 2**55, 2**56, 2**62, 2**63 - 1, -(2**63), -(2**62) - 1]
LONGS += [1_394_406_049_683_000, -1_394_406_049_683_000]  # 1 to 10 bytes; timestamps before 1970
# Unscaled decimals at every byte-count boundary (±2^(8k-1) takes k+1 bytes, as fastavro sizes them).
BOUNDARIES = [sign * (2 ** (8 * k - 1) + d) for k in range(1, 8) for d in (-1, 0) for sign in (1, -1)]
DECIMALS = [Decimal(n).scaleb(-PRICE_SCALE) for n in BOUNDARIES]
DECIMALS += [Decimal(t) for t in ("0", "-0", "0E-8", "0.00000001", "-0.00000001", "1.27", "36.667", "1E+3")]
DECIMALS += [Decimal("9999999999.99999999"), Decimal("-9999999999.99999999"), Decimal("-36.66700000")]
STRINGS = ["", "BHP", "é€😀", "x" * 63, "x" * 64, "y" * 70_000, "\x00", "日本語テキスト", "AUD"]
DATES = [date(2014, 3, 10), date(1970, 1, 1), date(1969, 12, 31), date(1900, 1, 1), date(1, 1, 1), date(9999, 12, 31)]
LISTS = [[], ["0"], ["25", "X", "é"], ["a" * 300], [""], [str(i) for i in range(70)]]
MAPS = [{}, {"qualifier": "3"}, {"b": "2", "a": "1", "é": "€" * 100}, {"": ""}, {f"k{i}": str(i) for i in range(70)}]
_BY_KIND: dict[Kind, list[Any]] = {
    Kind.STRING: STRINGS,
    Kind.LONG: LONGS,
    Kind.TIMESTAMP: LONGS,
    Kind.DATE: DATES,
    Kind.BOOLEAN: [True, False],
    Kind.DECIMAL: DECIMALS,
    Kind.STRING_LIST: LISTS,
    Kind.STRING_MAP: MAPS,
}


def edge_value(spec: FieldSpec, i: int) -> Any:
    """A valid value for field `spec`; `i` walks through the edge lists."""
    if spec.enum is not None:
        members = list(spec.enum)
        return str(members[i % len(members)].value)
    values = _BY_KIND[spec.kind]
    return values[i % len(values)]
