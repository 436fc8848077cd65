"""Avro form of the V2 records (what Kafka carries and the registry stores)."""

from __future__ import annotations

from functools import cache
from typing import Any

import fastavro

from k2.schema.fields import AVRO_NAMESPACE, PRICE_PRECISION, PRICE_SCALE, FieldSpec, Kind, RecordSpec


def avro_type(spec: FieldSpec) -> Any:
    if spec.enum is not None:
        return {"type": "enum", "name": spec.enum.__name__, "symbols": [str(e.value) for e in spec.enum]}
    match spec.kind:
        case Kind.STRING:
            return "string"
        case Kind.LONG:
            return "long"
        case Kind.BOOLEAN:
            return "boolean"
        case Kind.DECIMAL:
            return {
                "type": "bytes",
                "logicalType": "decimal",
                "precision": PRICE_PRECISION,
                "scale": PRICE_SCALE,
            }
        case Kind.TIMESTAMP:
            return {"type": "long", "logicalType": "timestamp-micros"}
        case Kind.DATE:
            return {"type": "int", "logicalType": "date"}
        case Kind.STRING_LIST:
            return {"type": "array", "items": "string"}
        case Kind.STRING_MAP:
            return {"type": "map", "values": "string"}
    raise ValueError(f"no Avro type for {spec.kind}")


def avro_schema(record: RecordSpec) -> dict[str, Any]:
    """The Avro schema (as a dict) for one V2 record; optional fields are `["null", T]` with default null."""
    fields = []
    for spec in record.fields:
        field: dict[str, Any] = {"name": spec.name, "doc": spec.doc}
        if spec.required:
            field["type"] = avro_type(spec)
        else:
            field["type"] = ["null", avro_type(spec)]
            field["default"] = None
        fields.append(field)
    return {
        "type": "record",
        "name": record.name,
        "namespace": AVRO_NAMESPACE,
        "doc": record.doc,
        "fields": fields,
    }


@cache
def parsed_schema(record: RecordSpec) -> Any:
    """fastavro's parsed form, cached: parsing costs milliseconds and every codec needs it."""
    return fastavro.parse_schema(avro_schema(record))
