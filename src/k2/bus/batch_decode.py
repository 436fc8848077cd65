"""Decode a whole batch of Confluent-framed Avro messages at once (the sink's and fresh reads' hot path).

Per-message fastavro decoding tops out near 50-85k msgs/s on one core and was most of the sink's time
(docs/stack-notes.md, "Avro and JSON speed"). `k2.schema.avro_columnar_decode` decodes each field for every message at
once: ~1.8 M msgs/s on the ASX sample here, 7-8x the DuckDB avro-extension block reader it replaced (that one also
needed a spool file per block, and once served a stale block from DuckDB's file cache: see the git history of this
file).

Trust, but verify: the decoder checks that every message is exactly one datum of the schema (each field inside its
message, the last one ending exactly at its end, valid union branches, enum indexes, UTF-8); anything else, or a
message id that is not 36 characters, raises BatchDecodeError and the caller decodes the batch message by message,
dead-lettering the culprits.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from k2.schema.avro_columnar_decode import AvroDecodeError, decode_frames
from k2.schema.fields import RecordSpec


class BatchDecodeError(ValueError):
    """The batch could not be decoded as a whole; decode its messages one by one instead."""


def decode_batch(spec: RecordSpec, values: Sequence[bytes]) -> pa.Table:
    """Framed messages written with `spec`'s current schema as a V2 Arrow table (arrow_schema(spec)), in order."""
    try:
        table = decode_frames(spec, values)
    except AvroDecodeError as exc:
        raise BatchDecodeError(str(exc)) from exc
    if table.num_rows and pc.any(pc.not_equal(pc.utf8_length(table.column("message_id")), 36)).as_py():
        raise BatchDecodeError("a message_id is not 36 characters")
    return table
