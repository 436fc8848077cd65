"""Shared by the Avro encoder/decoder tests: every record spec, and the framing they use."""

from __future__ import annotations

from k2.schema import fields as fields_module
from k2.schema.fields import ALL_RECORDS, RecordSpec

PREFIX = b"\x00\x00\x00\x00\x07"  # Confluent header for schema id 7

# Every RecordSpec fields.py defines, listed in ALL_RECORDS or not (bars, gaps, ...).
EVERY_SPEC: tuple[RecordSpec, ...] = tuple(
    {id(v): v for v in (*ALL_RECORDS, *vars(fields_module).values()) if isinstance(v, RecordSpec)}.values()
)
