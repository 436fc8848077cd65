"""Decode a whole batch of Confluent-framed Avro messages at once, with DuckDB's avro extension.

Per-message fastavro decoding tops out near 50-85k msgs/s on one core and was most of the sink's time
(STACK-NOTES.md). Messages that share one schema id are the datums of one Avro object-container block once their
5-byte headers are stripped; DuckDB reads such a block at ~0.4 M msgs/s straight into Arrow.

Trust, but verify: a datum that does not match its schema would shift every later datum of the block. So each
block ends with a sentinel record written by K2 itself; if the sentinel does not come back intact, the row count is
off, or the decoded message ids differ from the ids in the frames' own bytes, the caller falls back to per-message
decoding and dead-letters the culprits.

Each block gets a file name of its own, and DuckDB's external file cache is off: with one reused name, DuckDB
served the previous block again whenever the new one had the same size within the file-time granularity, and the
sink dropped a whole commit of records as "duplicates" of the batch before (found by the kill -9 fault drills).
"""

from __future__ import annotations

import io
import itertools
import shutil
import tempfile
import threading
from datetime import date
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.arrow import arrow_schema
from k2.schema.avro import parsed_schema
from k2.schema.fields import PRICE_PRECISION, FieldSpec, Kind, RecordSpec

SENTINEL_ID = "k2-block-sentinel-00000000000000000"  # 36 chars like a UUID, never a real message id
_MAX_UNSCALED = 10**PRICE_PRECISION


class BatchDecodeError(ValueError):
    """The block could not be decoded as a whole; decode its messages one by one instead."""


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _sentinel_value(spec: FieldSpec) -> Any:
    if spec.enum is not None:
        return next(iter(spec.enum)).value
    return {
        Kind.STRING: "k2-sentinel",
        Kind.LONG: -1,
        Kind.BOOLEAN: True,
        Kind.DECIMAL: Decimal("-1.00000001"),
        Kind.TIMESTAMP: 1,
        Kind.DATE: date(1970, 1, 2),
        Kind.STRING_LIST: ["k2"],
        Kind.STRING_MAP: {"k2": "sentinel"},
    }[spec.kind]


@cache
def _block_parts(spec: RecordSpec) -> tuple[bytes, bytes, bytes]:
    """(container header, its sync marker, the encoded sentinel datum) for this record's current schema."""
    schema = parsed_schema(spec)
    header = io.BytesIO()
    fastavro.writer(header, schema, [], codec="null")
    sentinel = {f.name: _sentinel_value(f) for f in spec.fields}
    sentinel["message_id"] = SENTINEL_ID
    datum = io.BytesIO()
    fastavro.schemaless_writer(datum, schema, sentinel)
    raw = header.getvalue()
    return raw, raw[-16:], datum.getvalue()


def _decimal_from_avro_bytes(column: pa.Array, scale: int) -> pa.Array:
    """Avro decimal bytes (big-endian two's complement, unscaled) → decimal128(18, scale), vectorized."""
    if column.null_count:
        nulls = column.is_null()
        column = pc.if_else(nulls, b"", column)
    else:
        nulls = None
    column = pa.concat_arrays([column]) if column.offset else column
    n = len(column)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=n + 1)
    data_buf = column.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    data = np.concatenate([data, np.zeros(1, np.uint8)])  # so index `start` is valid even for empty values
    starts, lengths = offsets[:-1], np.diff(offsets)
    if n and lengths.max() > 8:
        raise BatchDecodeError("a decimal needs more than 8 bytes: wider than decimal(18)")
    acc = np.zeros(n, dtype=np.uint64)
    for k in range(8):
        has = lengths > k
        acc[has] = (acc[has] << np.uint64(8)) | data[starts[has] + k].astype(np.uint64)
    negative = (lengths > 0) & (data[starts] >= 0x80) & (lengths < 8)
    if negative.any():
        fill = ~((np.uint64(1) << (lengths[negative] * 8).astype(np.uint64)) - np.uint64(1))
        acc[negative] |= fill
    values = acc.view(np.int64)
    if n and np.abs(values).max() >= _MAX_UNSCALED:
        raise BatchDecodeError("a decimal has more than 18 digits")
    int128 = np.empty((n, 2), dtype=np.int64)
    int128[:, 0] = values
    int128[:, 1] = values >> 63  # little-endian int128: sign-extend into the high word
    out = pa.Array.from_buffers(pa.decimal128(PRICE_PRECISION, scale), n, [None, pa.py_buffer(int128.tobytes())])
    return pc.if_else(nulls, pa.scalar(None, out.type), out) if nulls is not None else out


_ID_PREFIX = _zigzag(36)  # message_id is every V2 record's first field: a 36-character string right after the header


def _ids_match_frames(decoded: pa.ChunkedArray, values: list[bytes]) -> bool:
    """True when row i's message_id is the id at the start of frame i's datum (read from the bytes, not decoded)."""
    if any(v[5:6] != _ID_PREFIX for v in values):
        return False
    framed = pa.array([v[6:42] for v in values], pa.binary())
    return bool(pc.all(pc.equal(decoded.cast(pa.binary()), framed)).as_py())


class AvroBatchDecoder:
    """One DuckDB connection and a spool folder in memory (/dev/shm when there is one). Thread-safe."""

    def __init__(self) -> None:
        import duckdb_extension_avro

        extension = next(Path(duckdb_extension_avro.__file__).parent.rglob("avro.duckdb_extension"))
        self._con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        self._con.execute(f"LOAD '{extension}'")  # our own package file, not user input
        self._con.execute("SET enable_external_file_cache = false")  # every block is read once: nothing to reuse
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="k2-avro-", dir=shm if shm.is_dir() else None))
        self._lock = threading.Lock()
        self._blocks = itertools.count()

    def decode(self, spec: RecordSpec, values: list[bytes]) -> pa.Table:
        """Decode framed messages written with `spec`'s current schema into a V2 Arrow table, in order."""
        header, sync, sentinel = _block_parts(spec)
        body = b"".join(v[5:] for v in values) + sentinel
        block = b"".join((header, _zigzag(len(values) + 1), _zigzag(len(body)), body, sync))
        with self._lock:
            path = self._dir / f"block-{next(self._blocks)}.avro"
            path.write_bytes(block)
            try:
                raw = self._con.execute("SELECT * FROM read_avro(?)", [str(path)]).arrow()
                raw = raw.read_all() if isinstance(raw, pa.RecordBatchReader) else raw
            except duckdb.Error as exc:
                raise BatchDecodeError(f"DuckDB could not read the block: {exc}") from exc
            finally:
                path.unlink(missing_ok=True)
        if raw.num_rows != len(values) + 1 or raw["message_id"][-1].as_py() != SENTINEL_ID:
            raise BatchDecodeError("block misaligned: the sentinel record did not come back intact")
        decoded = self._to_v2(spec, raw.slice(0, len(values)))
        if not _ids_match_frames(decoded["message_id"], values):
            raise BatchDecodeError("the decoded message ids are not the ids in these frames")
        return decoded

    @staticmethod
    def _to_v2(spec: RecordSpec, raw: pa.Table) -> pa.Table:
        schema = arrow_schema(spec)
        columns = []
        for f, target in zip(spec.fields, schema, strict=True):
            column = raw[f.name].combine_chunks()
            if f.kind is Kind.DECIMAL:
                column = _decimal_from_avro_bytes(column, target.type.scale)
            elif pa.types.is_dictionary(column.type):
                column = column.cast(pa.string())
            if column.type != target.type:
                column = column.cast(target.type)  # naive → UTC timestamps, list/map field names
            columns.append(column)
        if pc.any(pc.not_equal(pc.utf8_length(columns[0]), 36)).as_py():
            raise BatchDecodeError("a message_id is not 36 characters: the block is misread")
        return pa.Table.from_arrays(columns, schema=schema)

    def close(self) -> None:
        self._con.close()
        shutil.rmtree(self._dir, ignore_errors=True)
