"""Schema evolution rules the registry enforces: Avro resolution plus K2's logical-type rule.

avro 1.12's `ReaderWriterCompatibilityChecker` decides whether a reader schema can resolve data written with a
writer schema, but it ignores logical types: it calls decimal scale 8→6 or timestamp-micros→millis
compatible (docs/stack-notes.md, "Schema registry"). Those changes keep the bytes readable and silently change what they
mean (a price off by 10^2, a time off by 10^3), so here any change of logical type, decimal precision or scale is a
break.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import avro.errors
import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)
from avro.schema import ArraySchema, EnumSchema, MapSchema, NamedSchema, RecordSchema, Schema, UnionSchema


class Level(StrEnum):
    """Confluent's levels; BACKWARD = consumers on the new schema can read everything already written."""

    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"


DEFAULT_LEVEL = Level.BACKWARD


class InvalidSchemaError(ValueError):
    """Text that is not a valid Avro schema (or uses a logical type avro would silently drop)."""


@dataclass(frozen=True)
class CompatibilityResult:
    """The verdict; `messages` say which field broke and why (empty when compatible)."""

    messages: tuple[str, ...] = ()

    @property
    def is_compatible(self) -> bool:
        return not self.messages


def parse_schema(schema: str | dict[str, Any] | list[Any]) -> Schema:
    """Parse Avro schema JSON (text or already-loaded), refusing logical types avro would ignore."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", avro.errors.IgnoredLogicalType)
        try:
            parsed = avro.schema.parse(text)
        except (avro.errors.SchemaParseException, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise InvalidSchemaError(f"not a valid Avro schema: {exc}") from exc
    # avro degrades e.g. decimal(4,8) to plain bytes with only a warning; a registry must not store that.
    ignored = [str(w.message) for w in caught if issubclass(w.category, avro.errors.IgnoredLogicalType)]
    if ignored:
        raise InvalidSchemaError(f"logical type would be ignored by Avro readers: {'; '.join(ignored)}")
    return parsed


def canonical(schema: Schema) -> str:
    """Normalized JSON of a parsed schema: equal for schemas that differ only in whitespace or key order.

    Not Avro's Parsing Canonical Form: that drops defaults and logical types, which are exactly what
    compatibility depends on.
    """
    return json.dumps(schema.to_json(), sort_keys=True, separators=(",", ":"))


def check_compatibility(
    new: Schema, previous: Mapping[int, Schema], level: Level = DEFAULT_LEVEL
) -> CompatibilityResult:
    """Check `new` against earlier versions (version number → schema) under `level`.

    Non-transitive levels compare with the newest earlier version only; *_TRANSITIVE with all of them.
    """
    if level is Level.NONE or not previous:
        return CompatibilityResult()
    versions = sorted(previous)
    if not level.endswith("_TRANSITIVE"):
        versions = versions[-1:]
    backward = level.startswith(("BACKWARD", "FULL"))
    forward = level.startswith(("FORWARD", "FULL"))
    messages: list[str] = []
    for version in versions:
        old = previous[version]
        found = reader_problems(new, old) if backward else []
        if forward:
            found += reader_problems(old, new)
        messages.extend(f"against version {version}: {m}" for m in dict.fromkeys(found))
    return CompatibilityResult(tuple(messages))


def reader_problems(reader: Schema, writer: Schema) -> list[str]:
    """Why a consumer using `reader` cannot correctly read data written with `writer` (empty = it can)."""
    return _structural(reader, writer, ()) + _logical_changes(reader, writer, (), set())


def _where(path: tuple[str, ...]) -> str:
    return f"field '{'.'.join(path)}'" if path else "the schema"


def _structural(reader: Schema, writer: Schema, path: tuple[str, ...]) -> list[str]:
    """avro's verdict, attributed to fields.

    avro's checker merges messages and locations into two unordered sets, losing which message belongs to
    which field; descending records and unions while it still says "incompatible" recovers the pairing.
    """
    verdict = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if verdict.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    messages: list[str] = []
    if isinstance(reader, UnionSchema) or isinstance(writer, UnionSchema):
        for new, old in _union_pairs(reader, writer):
            if new is not None:
                messages.extend(_structural(new, old, path))
            elif not _resolves(reader, old):
                messages.append(f"{_where(path)}: the new type cannot hold {old.type} values written before")
    elif isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
        if not schema_name_equals(reader, writer):
            messages.append(
                f"{_where(path)}: record renamed from {writer.fullname} to {reader.fullname}; "
                f"keep the name or list the old one in 'aliases'"
            )
        for field in reader.fields:
            old_field = lookup_writer_field(writer_schema=writer, reader_field=field)
            if old_field is not None:
                messages.extend(_structural(field.type, old_field.type, (*path, field.name)))
            elif not field.has_default:
                messages.append(
                    f"{_where((*path, field.name))}: new field without a default, so records written "
                    f'before it cannot be read; give it a default (optional = ["null", T] with default null)'
                )
    elif isinstance(reader, EnumSchema) and isinstance(writer, EnumSchema):
        messages.extend(_lost_symbols(reader, writer, path))
    # Anything the descent could not pin down is reported in avro's own words.
    return messages or [f"{_where(path)}: {'; '.join(sorted(verdict.messages))}"]


def _lost_symbols(reader: EnumSchema, writer: EnumSchema, path: tuple[str, ...]) -> list[str]:
    # No symbols lost means an enum rename: left to avro's own message.
    lost = sorted(set(writer.symbols) - set(reader.symbols))
    if not lost:
        return []
    return [f"{_where(path)}: symbols {lost} were written before but are gone; keep them or add a default"]


def _resolves(reader: Schema, writer: Schema) -> bool:
    verdict = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    return verdict.compatibility is not SchemaCompatibilityType.incompatible


def _logical(schema: Schema) -> tuple[Any, ...] | None:
    kind = schema.props.get("logicalType")
    if kind is None:
        return None
    if kind == "decimal":
        # The Avro spec makes scale optional with default 0.
        return (kind, schema.props.get("precision"), schema.props.get("scale", 0))
    return (kind,)


def _describe(logical: tuple[Any, ...] | None) -> str:
    if logical is None:
        return "no logical type"
    if logical[0] == "decimal":
        return f"decimal({logical[1]},{logical[2]})"
    return str(logical[0])


def _union_pairs(reader: Schema, writer: Schema) -> list[tuple[Schema | None, Schema]]:
    """Each writer branch with the reader branch Avro resolution picks: same named type, else same type."""
    readers = reader.schemas if isinstance(reader, UnionSchema) else [reader]
    writers = writer.schemas if isinstance(writer, UnionSchema) else [writer]
    pairs: list[tuple[Schema | None, Schema]] = []
    for branch in writers:
        same_type = [r for r in readers if r.type == branch.type]
        if isinstance(branch, NamedSchema):
            named = [r for r in same_type if isinstance(r, NamedSchema) and r.fullname == branch.fullname]
            same_type = named or same_type
        pairs.append((same_type[0] if same_type else None, branch))
    return pairs


def _logical_changes(reader: Schema, writer: Schema, path: tuple[str, ...], seen: set[tuple[int, int]]) -> list[str]:
    pair = (id(reader), id(writer))
    if pair in seen:  # recursive types
        return []
    seen.add(pair)
    if isinstance(reader, UnionSchema) or isinstance(writer, UnionSchema):
        messages: list[str] = []
        for new, old in _union_pairs(reader, writer):
            if new is not None:
                messages.extend(_logical_changes(new, old, path, seen))
        return messages
    before, after = _logical(writer), _logical(reader)
    messages = []
    if before != after:
        messages.append(
            f"{_where(path)}: {_describe(before)} became {_describe(after)}, which changes what the stored "
            f"bytes mean; revert to {_describe(before)} or publish the change under a new subject"
        )
    if isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
        for field in reader.fields:
            old = lookup_writer_field(writer_schema=writer, reader_field=field)
            if old is not None:
                messages.extend(_logical_changes(field.type, old.type, (*path, field.name), seen))
    elif isinstance(reader, ArraySchema) and isinstance(writer, ArraySchema):
        messages.extend(_logical_changes(reader.items, writer.items, (*path, "[]"), seen))
    elif isinstance(reader, MapSchema) and isinstance(writer, MapSchema):
        messages.extend(_logical_changes(reader.values, writer.values, (*path, "{}"), seen))
    return messages
