"""Message ids for a whole column at once: exactly `codecs.message_id`, without a Python call per row for big inputs.

A message id is the RFC 4122 UUIDv5 of "{exchange}|{data_type}|{symbol}|{source_id}" under
`MESSAGE_ID_NAMESPACE`, i.e. SHA-1(namespace bytes || name) with the version and variant bits set. Columnar
sources build the names as an Arrow column and call `message_ids_column`; the SHA-1s run in DuckDB's `sha1` for
large columns (one C++ pass; a Python loop over hashlib costs ~0.45 us a row) and in hashlib for small ones
(a DuckDB query costs ~0.9 ms before its first row: more than hashing 2,000 names), and the UUID text is laid out
for all rows with numpy.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.codecs import MESSAGE_ID_NAMESPACE

# Below this many rows hashlib is faster than a DuckDB query (measured on the 2-core dev box: DuckDB ~0.9 ms fixed
# + ~0.25 us a row, hashlib ~0.45 us a row).
DUCKDB_MIN_ROWS = 4_096

# The UUID variant digit: the hex digit's value v becomes (v & 0x3) | 0x8, i.e. one of 8, 9, a, b.
_VARIANT = np.zeros(256, dtype=np.uint8)
for _value, _digit in enumerate(b"0123456789abcdef"):
    _VARIANT[_digit] = b"89ab"[_value & 3]
# (start, stop) of each hex group in the 32 digits, and where it goes in the 36-character UUID text.
_GROUPS = (((0, 8), 0), ((8, 12), 9), ((12, 16), 14), ((16, 20), 19), ((20, 32), 24))


def message_ids_column(names: pa.Array, prefix: str = "") -> pa.StringArray:
    """Per row, `message_id` of the name `prefix + names[i]` (the full name is "exchange|data_type|symbol|source_id").

    `names` is a string or binary column without nulls; `prefix` is the part every row shares (e.g.
    "asx|trades|BHP|"). The result equals `[codecs.message_id(...) for each row]`, as UUID text.
    """
    seed = MESSAGE_ID_NAMESPACE.bytes + prefix.encode()
    n = len(names)
    if n == 0:
        return pa.array([], pa.string())
    if n < DUCKDB_MIN_ROWS:
        return uuid_text_from_hex(_hashlib_hex(names, seed))
    hexed = fixed_width(_duckdb_digests(names, seed), 40)
    assert hexed is not None  # sha1() always gives 40 hex digits
    return uuid_text_from_hex(hexed)


def _hashlib_hex(names: pa.Array, seed: bytes) -> np.ndarray:
    """(n, 40) SHA-1 hex digests of seed || name: one hashlib call per row, from a copy of the seeded state."""
    copy = hashlib.sha1(seed).copy
    digests = []
    append = digests.append
    for name in names.cast(pa.binary()).to_pylist():
        h = copy()
        h.update(name)
        append(h.hexdigest())
    return np.frombuffer("".join(digests).encode(), dtype=np.uint8).reshape(len(digests), 40)


def _duckdb_digests(names: pa.Array, seed: bytes) -> pa.StringArray:
    """SHA-1 hex digests of seed || name for every row, in one DuckDB query."""
    cursor = duckdb_connection().cursor()
    try:
        cursor.register("k2_names", pa.table({"name": names.cast(pa.binary())}))
        digests = cursor.execute("SELECT sha1(? || name) FROM k2_names", [seed]).to_arrow_table()
    finally:
        cursor.close()
    return digests.column(0).combine_chunks()


@cache
def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB for hashing (a connection costs ~10 ms); each call takes its own cursor, so threads do
    not share one. One DuckDB thread: the machine has two cores and the caller's other work needs one."""
    return duckdb.connect(":memory:", config={"threads": 1})


# A forked child must not use the parent's DuckDB (its threads and locks did not come along): it opens its own.
os.register_at_fork(after_in_child=duckdb_connection.cache_clear)


def string_offsets(column: pa.StringArray | pa.BinaryArray) -> np.ndarray:
    """The column's n + 1 value offsets (a view of its Arrow buffer)."""
    return np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]


def fixed_width(column: pa.StringArray | pa.BinaryArray, width: int) -> np.ndarray | None:
    """The column's texts as an (n, width) byte matrix, or None if any text has another length."""
    offsets = string_offsets(column)
    if not np.all(np.diff(offsets) == width):
        return None
    values = np.frombuffer(column.buffers()[2], dtype=np.uint8)
    return values[offsets[0] : offsets[-1]].reshape(len(column), width)


def uuid_text_from_hex(hexed: np.ndarray) -> pa.StringArray:
    """SHA-1 digests as (n, >= 32) lower-case hex digits → RFC 4122 version-5 UUID strings, as
    `codecs.message_ids_for` writes them."""
    n = len(hexed)
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for (lo, hi), at in _GROUPS:
        text[:, at : at + hi - lo] = hexed[:, lo:hi]
    text[:, 14] = ord("5")  # version 5
    text[:, 19] = _VARIANT[hexed[:, 16]]  # RFC 4122 variant
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))


def join_names(*parts: pa.Array | str) -> pa.StringArray:
    """Row-wise concatenation of string columns and constants (the names `message_ids_column` hashes)."""
    return pc.binary_join_element_wise(*parts, "")
