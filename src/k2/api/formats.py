"""Content negotiation: one Arrow result rendered as JSON (default), CSV, Parquet, Arrow IPC stream or NDJSON.

JSON and NDJSON show values exactly as k2.query.formats does (decimals as strings at the column's scale, zoned
timestamps ISO-8601 UTC with a Z). JSON wraps the rows in `{"data", "next_cursor", "snapshot_id"}`; the other
formats carry only rows, so the cursor and snapshot travel in the `X-K2-Next-Cursor` / `X-K2-Snapshot-Id` headers
(JSON sets them too). Parquet and Arrow keep the Arrow types: decimal128(18,8), timestamp[us, tz=UTC].
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.responses import Response

from k2.api.errors import ApiError
from k2.query.formats import column_values, write_csv

NEXT_CURSOR_HEADER = "X-K2-Next-Cursor"
SNAPSHOT_HEADER = "X-K2-Snapshot-Id"


class Format(StrEnum):
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"
    ARROW = "arrow"
    NDJSON = "ndjson"


MEDIA_TYPES: dict[Format, str] = {
    Format.JSON: "application/json",
    Format.CSV: "text/csv",
    Format.PARQUET: "application/vnd.apache.parquet",
    Format.ARROW: "application/vnd.apache.arrow.stream",
    Format.NDJSON: "application/x-ndjson",
}
_BY_MEDIA = {media: fmt for fmt, media in MEDIA_TYPES.items()} | {
    "*/*": Format.JSON,
    "application/*": Format.JSON,
    "text/*": Format.CSV,
}


def _accepted(accept: str) -> list[tuple[float, int, str]]:
    """(q, -position, media type) of each Accept entry, parameters other than q dropped."""
    entries = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media and q > 0:
            entries.append((q, -position, media.lower()))
    return sorted(entries, reverse=True)


def negotiate(fmt: Format | None, accept: str | None) -> Format:
    """`format=` wins; else the most preferred supported type in Accept; else JSON. 406 if Accept names only
    types K2 cannot produce.
    """
    if fmt is not None:
        return fmt
    if not accept or not accept.strip():
        return Format.JSON
    entries = _accepted(accept)
    for _q, _position, media in entries:
        if media in _BY_MEDIA:
            return _BY_MEDIA[media]
    supported = ", ".join(MEDIA_TYPES.values())
    raise ApiError(406, f"cannot produce {accept!r}: accept one of {supported}, or pass format=")


def records(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts (k2.query.formats rules: decimals and timestamps as exact strings)."""
    names = table.column_names
    columns = [column_values(column) for column in table.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def ndjson_lines(table: pa.Table | pa.RecordBatch) -> Iterator[bytes]:
    for record in records(table):
        yield orjson.dumps(record) + b"\n"


def _headers(next_cursor: str | None, snapshot_id: int | None) -> dict[str, str]:
    headers = {}
    if next_cursor is not None:
        headers[NEXT_CURSOR_HEADER] = next_cursor
    if snapshot_id is not None:
        headers[SNAPSHOT_HEADER] = str(snapshot_id)
    return headers


def render(
    table: pa.Table,
    fmt: Format,
    *,
    next_cursor: str | None = None,
    snapshot_id: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The response for `table` in `fmt`; the JSON envelope holds `next_cursor` and `snapshot_id` too. `headers`
    are added to the ones carrying those two."""
    headers = {**_headers(next_cursor, snapshot_id), **(headers or {})}
    media = MEDIA_TYPES[fmt]
    if fmt is Format.JSON:
        envelope = {"data": records(table), "next_cursor": next_cursor, "snapshot_id": snapshot_id}
        return Response(orjson.dumps(envelope), media_type=media, headers=headers)
    if fmt is Format.NDJSON:
        return Response(b"".join(ndjson_lines(table)), media_type=media, headers=headers)
    if fmt is Format.CSV:
        text = io.StringIO()
        write_csv(table, text)
        return Response(text.getvalue(), media_type=media, headers=headers)
    sink = pa.BufferOutputStream()
    if fmt is Format.PARQUET:
        pq.write_table(table, sink)
    else:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return Response(sink.getvalue().to_pybytes(), media_type=media, headers=headers)


def content_docs(description: str) -> dict[str, Any]:
    """The OpenAPI 200 entry listing every media type a read can answer with."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "description": description,
        "content": {
            MEDIA_TYPES[Format.CSV]: {"schema": {"type": "string"}},
            MEDIA_TYPES[Format.PARQUET]: binary,
            MEDIA_TYPES[Format.ARROW]: binary,
            MEDIA_TYPES[Format.NDJSON]: {"schema": {"type": "string"}},
        },
    }
