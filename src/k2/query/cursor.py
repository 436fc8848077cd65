"""Keyset cursors: the position after a row in event order, as an opaque string a caller hands back to resume.

Position, not offset: `OFFSET n` re-reads and skips n rows on every page and shifts when rows arrive, while
"rows after (timestamp, source_sequence, message_id)" reads from the position and prunes files by time. message_id
is the dedup key, unique in the lake, so the order is total and each row is visited exactly once.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from k2.query.filters import InvalidQueryError, sequence_key, sequence_order
from k2.schema.codecs import datetime_from_micros

_VERSION = 1
KEY_COLUMNS: tuple[str, ...] = ("timestamp", "source_sequence", "message_id")


def pack(values: list[Any]) -> str:
    """Values as URL-safe opaque text (compact JSON, base64 without padding): the form of every K2 cursor."""
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def unpack(text: str) -> Any:
    """What `pack` packed; binascii.Error, UnicodeDecodeError or ValueError for text it did not make."""
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


@dataclass(frozen=True)
class Cursor:
    timestamp: int  # microseconds UTC
    source_sequence: int | None
    message_id: str

    def encode(self) -> str:
        """URL-safe text; its content is not a contract (callers only hand it back)."""
        return pack([_VERSION, self.timestamp, self.source_sequence, self.message_id])

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            version, timestamp, sequence, message_id = unpack(text)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
            raise InvalidQueryError(f"cursor {text!r} is not one K2 issued: pass back next_cursor unchanged") from None
        typed = (
            version == _VERSION
            and _is_int(timestamp)
            and (sequence is None or _is_int(sequence))
            and isinstance(message_id, str)
        )
        if not typed:
            raise InvalidQueryError(f"cursor {text!r} is not one K2 issued: pass back next_cursor unchanged")
        return cls(timestamp, sequence, message_id)

    @classmethod
    def after_last_row(cls, rows: pa.Table | pa.RecordBatch) -> Cursor:
        """The position just after the last row of a result that holds the key columns."""
        last = rows.num_rows - 1
        timestamp = rows.column("timestamp")[last].cast(pa.int64()).as_py()
        return cls(timestamp, rows.column("source_sequence")[last].as_py(), rows.column("message_id")[last].as_py())

    def condition(self, prefix: str = "") -> tuple[str, list[Any]]:
        """SQL for "strictly after this position in event order" and its parameters.

        The leading `timestamp >= ?` repeats what the rest implies, so the scan can prune files before it.
        """
        p = prefix
        sequence = sequence_order(prefix)
        moment = datetime_from_micros(self.timestamp)
        sql = (
            f"{p}timestamp >= ? AND ({p}timestamp > ? OR ({p}timestamp = ? AND "
            f"({sequence} > ? OR ({sequence} = ? AND {p}message_id > ?))))"
        )
        key = sequence_key(self.source_sequence)
        return sql, [moment, moment, moment, key, key, self.message_id]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
