"""Iceberg form of the V2 records: schema, partition spec (day(timestamp), exchange) and sort order."""

from __future__ import annotations

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import (
    BooleanType,
    DateType,
    DecimalType,
    IcebergType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    TimestamptzType,
)

from k2.schema.fields import PRICE_PRECISION, PRICE_SCALE, FieldSpec, Kind, RecordSpec


def iceberg_schema(record: RecordSpec) -> Schema:
    """Field ids 1..N follow the spec's order; nested element/key/value ids come after them."""
    next_nested_id = len(record.fields) + 1

    def nested_id() -> int:
        nonlocal next_nested_id
        next_nested_id += 1
        return next_nested_id - 1

    def iceberg_type(spec: FieldSpec) -> IcebergType:
        match spec.kind:
            case Kind.STRING:
                return StringType()
            case Kind.LONG:
                return LongType()
            case Kind.BOOLEAN:
                return BooleanType()
            case Kind.DECIMAL:
                return DecimalType(PRICE_PRECISION, PRICE_SCALE)
            case Kind.TIMESTAMP:
                return TimestamptzType()
            case Kind.DATE:
                return DateType()
            case Kind.STRING_LIST:
                return ListType(element_id=nested_id(), element_type=StringType(), element_required=True)
            case Kind.STRING_MAP:
                return MapType(
                    key_id=nested_id(),
                    key_type=StringType(),
                    value_id=nested_id(),
                    value_type=StringType(),
                    value_required=False,
                )
        raise ValueError(f"no Iceberg type for {spec.kind}")

    fields = [
        NestedField(field_id=i, name=spec.name, field_type=iceberg_type(spec), required=spec.required, doc=spec.doc)
        for i, spec in enumerate(record.fields, start=1)
    ]
    return Schema(*fields)


def partition_spec(record: RecordSpec) -> PartitionSpec:
    schema = iceberg_schema(record)
    ts = schema.find_field("timestamp").field_id
    ex = schema.find_field("exchange").field_id
    return PartitionSpec(
        PartitionField(source_id=ts, field_id=1000, transform=DayTransform(), name="timestamp_day"),
        PartitionField(source_id=ex, field_id=1001, transform=IdentityTransform(), name="exchange"),
    )


def sort_order(record: RecordSpec) -> SortOrder:
    schema = iceberg_schema(record)
    return SortOrder(SortField(source_id=schema.find_field("timestamp").field_id, transform=IdentityTransform()))
