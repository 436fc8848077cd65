"""The buffer and cursors under `k2.schema.avro_columnar_decode`, and its readers of Avro's encodings.

The messages are copied into one buffer, each with a cursor (`Rows.at`) on its body, and each value is read for all
messages at once into numpy arrays: a varint is one gather of first bytes (or of 8-byte words, for timestamps), a
string or bytes value is a byte range, arrays and maps are read block by block and item by item across all messages
at once. Lengths and counts are checked against the room left in their message before anything is copied; a message
that fails a check raises `Malformed`, which knows the message but not the field (`avro_columnar_decode` adds it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from k2.schema.avro_columnar import cumulative_offsets
from k2.schema.fields import PRICE_PRECISION

__all__ = [
    "HIGH_BITS",
    "INT32",
    "Buffer",
    "Malformed",
    "Rows",
    "read_blocks",
    "read_decimals",
    "read_ints",
    "read_longs",
    "read_ranges",
]

_VARINT_MAX = 10  # a 64-bit long takes at most 10 bytes (7 bits each)
_DECIMAL_MAX = 8  # decimal(18, 8): 18 digits fit 60 bits, so the writer never needs more than 8 bytes
# Zero padding around the messages: a decimal is read as the 8 bytes that end where it ends, a varint as the 8 or 10
# bytes from where it starts; and numbers are read before their end is checked (see `Rows`), so a cursor may be up
# to three varints (union branch, block count, block size) past its message's end: nothing may fall off the buffer.
_FRONT = bytes(_DECIMAL_MAX)
_BACK = bytes(64)
_MAX_UNSCALED = 10**PRICE_PRECISION  # 19 digits do not fit decimal(18, 8) (k2.bus.batch_decode refuses them too)
INT32 = 2**31  # Avro int (dates, enum indexes) and the offsets of Arrow's string and list arrays


class Malformed(Exception):
    """Raised by the type decoders, which know the message but not the field (`avro_columnar_decode` adds it)."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(why)
        self.index = index
        self.why = why


@dataclass(frozen=True)
class Buffer:
    """Every message back to back, with zero padding in front (`_FRONT`) and behind (`_BACK`)."""

    arrow: pa.Buffer  # for the `take` of string bytes
    data: np.ndarray  # uint8, the same bytes
    starts: np.ndarray  # int64: where each message starts
    sizes: np.ndarray  # int64: and how many bytes it has

    @staticmethod
    def of(values: Sequence[bytes]) -> Buffer:
        """One copy of the messages. Arrow's builder makes it ~3x faster than `b"".join` (and gives the offsets)."""
        joined = pa.array([_FRONT, *values, _BACK], pa.large_binary())
        if joined.null_count:
            raise TypeError("a value to decode is None, not bytes")
        offsets = np.frombuffer(joined.buffers()[1], np.int64, count=len(joined) + 1)[1:-1]
        arrow = joined.buffers()[2]
        return Buffer(arrow, np.frombuffer(arrow, np.uint8), offsets[:-1], np.diff(offsets))

    def message_at(self, position: int) -> int:
        """The message that holds the byte at `position`."""
        return int(np.searchsorted(self.starts, position, side="right")) - 1

    def windows(self, width: int) -> np.ndarray:
        """Item i = bytes i .. i+width-1 as one opaque item (no copy): gathering them copies `width` bytes a row at
        memcpy speed, where a 2-d fancy index would walk the bytes one by one."""
        return np.ndarray((len(self.data) - width + 1,), f"V{width}", buffer=self.arrow, strides=(1,))

    def read(self, width: int, at: np.ndarray) -> np.ndarray:
        """The `width` bytes from each position in `at`, as a uint8 matrix [len(at), width]."""
        return self.windows(width)[at].view(np.uint8).reshape(len(at), width)


@dataclass
class Rows:
    """Some messages of the batch, each with its cursor; type decoders read at `at` and move it past what they read.

    Each field ends with at <= stop on every row (the decode module checks). Inside one, only numbers may overrun
    (three at most, 30 bytes): whatever copies bytes or loops over items first checks the room left, and that
    check fails on a cursor already past the end."""

    index: np.ndarray  # int64: which messages of the batch
    at: np.ndarray  # int64: where each one's next unread byte is in the buffer
    stop: np.ndarray  # int64: one past each one's last byte

    def __len__(self) -> int:
        return len(self.index)

    def slice(self, start: int, stop: int) -> Rows:
        """Rows `start` .. `stop - 1` (views: cursors move by replacing `at`, never by writing into it)."""
        return Rows(self.index[start:stop], self.at[start:stop], self.stop[start:stop])

    def subset(self, keep: np.ndarray) -> Rows:
        """The rows `keep` selects (a mask or positions); move their cursors back with `advance_to`. Every row
        selected: `self`, no copy (nothing writes into an `at` array, cursors move by replacing it: that is safe)."""
        if len(keep) == len(self) and (keep.all() if keep.dtype == bool else keep[-1] == len(self) - 1):
            return self
        return Rows(self.index[keep], self.at[keep], self.stop[keep])

    def advance_to(self, keep: np.ndarray, part: Rows) -> None:
        """Take over the cursors of `part` = `self.subset(keep)` (into a new array: one handed out earlier, e.g. as
        the ends of strings just read, stays as it was)."""
        if part is not self:
            at = self.at.copy()
            at[keep] = part.at
            self.at = at

    def fail_where(self, bad: np.ndarray, why: str) -> None:
        if bad.any():
            raise Malformed(int(self.index[np.argmax(bad)]), why)


def read_longs(buffer: Buffer, rows: Rows, wide: bool = False) -> np.ndarray:
    """Avro long: a zigzag (0, -1, 1, -2, ... → 0, 1, 2, 3, ...: the sign in the low bit) base-128 varint (7 bits
    a byte, low group first, high bit set on all but the last byte); as int64.

    Lengths, counts, branches and enum indexes are nearly always one byte: one gather of the first bytes settles
    them, and the zigzag is undone on the bytes. Timestamps and sequence numbers (`wide`) take up to 8 bytes: read as
    one 64-bit word each. Not checked against the messages' ends here (that would double the cost of a one-byte
    number): see `Rows`."""
    if not wide:
        first = buffer.data[rows.at]
        if first.max() < 0x80:
            rows.at = rows.at + 1
            small = first.view(np.int8)
            return ((small >> 1) ^ -(small & 1)).astype(np.int64)
    unsigned, sizes = _short_varints(buffer, rows.at)
    if unsigned is None:
        unsigned, sizes = _long_varints(buffer, rows)
    rows.at = rows.at + sizes
    return (unsigned >> _ONE).view(np.int64) ^ -(unsigned & _ONE).view(np.int64)


HIGH_BITS = np.uint64(0x8080_8080_8080_8080)
_LOW_BITS = np.uint64(0x7F7F_7F7F_7F7F_7F7F)
_ONE = np.uint64(1)
# (keep, move, shift): pack adjacent 7-, then 14-, then 28-bit groups together, halving the number of gaps each time
_PACK_STEPS = tuple(
    (np.uint64(keep), np.uint64(move), np.uint64(shift))
    for keep, move, shift in (
        (0x007F_007F_007F_007F, 0x7F00_7F00_7F00_7F00, 1),
        (0x0000_3FFF_0000_3FFF, 0x3FFF_0000_3FFF_0000, 2),
        (0x0000_0000_0FFF_FFFF, 0x0FFF_FFFF_0000_0000, 4),
    )
)


def _short_varints(buffer: Buffer, at: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Varints of at most 8 bytes, bitwise on one little-endian word per row: the lowest byte under 0x80 ends the
    varint (a mask keeps it and the bytes before), then three shift-and-merge steps close the gaps left by the
    continuation bits. (None, _) when some varint is longer (values of 2^56 and over)."""
    words = buffer.windows(8)[at].view("<u8")
    ends = ~words
    ends &= HIGH_BITS  # the high bit of every byte under 0x80
    if not ends.all():
        return None, at
    kept = ends - _ONE
    kept ^= ends  # every bit up to the lowest of them
    words &= kept
    words &= _LOW_BITS
    for keep, move, shift in _PACK_STEPS:
        words = (words & keep) | ((words & move) >> shift)
    return words, np.bitwise_count(kept) >> 3


def _long_varints(buffer: Buffer, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Varints of any length up to 10 bytes, group by group over each row's next 10 bytes."""
    window = buffer.read(_VARINT_MAX, rows.at)
    last = window < 0x80
    rows.fail_where(~last.any(axis=1), "a varint longer than 10 bytes")
    sizes = np.argmax(last, axis=1) + 1
    rows.fail_where((sizes == _VARINT_MAX) & (window[:, -1] > 1), "a varint over 64 bits")
    values = np.zeros(len(rows), np.uint64)
    for k in range(int(sizes.max())):
        group = (window[:, k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        values |= np.where(sizes > k, group, np.uint64(0))
    return values, sizes


def read_ints(buffer: Buffer, rows: Rows) -> np.ndarray:
    """Avro int: written as a long, but a value outside 32 bits is not an int (as int32)."""
    values = read_longs(buffer, rows)
    rows.fail_where((values < -INT32) | (values >= INT32), "an int outside 32 bits")
    return values.astype(np.int32)


def read_ranges(buffer: Buffer, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Avro string and bytes: a long byte count, then the bytes. Where each row's bytes start and end; the cursors
    move past them. The count is checked before anything is copied: it must fit in the message."""
    lengths = read_longs(buffer, rows)
    # Also catches a cursor the length itself took past the end (the room is negative then).
    rows.fail_where((lengths < 0) | (lengths > rows.stop - rows.at), "a negative length, or one past the message's end")
    starts = rows.at
    rows.at = starts + lengths
    return starts, rows.at


def read_decimals(buffer: Buffer, rows: Rows) -> np.ndarray:
    """Avro bytes/decimal(18,8): the unscaled integer as big-endian two's complement, 1 to 8 bytes; as int64.

    Each is read as the 8 bytes that end where it ends (bytes before it included, hence the buffer's front
    padding), then shifted left to drop those and arithmetically right to sign-extend."""
    starts, ends = read_ranges(buffer, rows)
    lengths = ends - starts
    rows.fail_where(lengths > _DECIMAL_MAX, "a decimal wider than 8 bytes: more digits than decimal(18) holds")
    words = buffer.windows(_DECIMAL_MAX)[ends - _DECIMAL_MAX].view(">i8").astype(np.int64)
    spare = (_DECIMAL_MAX - lengths) << 3  # bits of the word that come before the decimal
    values = (words << spare) >> spare
    if not lengths.all():
        values[lengths == 0] = 0  # b"" is 0 (and numpy's shift by 64 bits is not to be relied on)
    rows.fail_where((values >= _MAX_UNSCALED) | (values <= -_MAX_UNSCALED), "a decimal of more than 18 digits")
    return values


_ReadItem = Callable[[Buffer, Rows], tuple[tuple[np.ndarray, np.ndarray], ...]]  # an item's (starts, ends)s


def read_blocks(buffer: Buffer, rows: Rows, read_item: _ReadItem) -> tuple[np.ndarray, list[np.ndarray]]:
    """Avro array and map: blocks, each a long item count then that many items, until a block of 0 items. A negative
    count -c means c items after a long byte size of the block (writers that let readers skip blocks).

    Vectorised over rows: each round reads one block of every row whose items are not over. Returns the item count
    of each row, and for each string of an item (map: key, value), the start-end bounds of all items' strings,
    row by row."""
    counts = np.zeros(len(rows), np.int64)
    rounds: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = []  # rows read, their counts, their items
    reading = np.arange(len(rows))  # rows whose last block was not the empty one
    while len(reading):
        block = rows.subset(reading)
        count = read_longs(buffer, block)
        sized = count < 0
        if sized.any():
            count = np.abs(count)
            sized_rows = block.subset(sized)
            size = read_longs(buffer, sized_rows)
            items_start = sized_rows.at.copy()
            block.advance_to(sized, sized_rows)
        # Every item takes a byte at least: a count the message cannot hold is refused before it is looped over.
        block.fail_where((count < 0) | (count > block.stop - block.at), "an item count past the end of the message")
        items = _read_round(buffer, block, count, read_item)
        if sized.any():
            used = block.at[sized] - items_start
            sized_rows.fail_where(used != size, "a block's byte size is not the size of its items")
        rows.advance_to(reading, block)
        if items:
            rounds.append((reading, count, items))
        counts[reading] += count
        reading = reading[count > 0]
    if len(rounds) <= 1:  # one block of items per row at most (as fastavro writes): row by row already
        return counts, rounds[0][2] if rounds else []
    # Some row has several blocks: each round's items go after that row's items of the rounds before.
    offsets = cumulative_offsets(counts)
    placed = np.zeros(len(rows), np.int64)  # items of each row placed so far
    merged = [np.empty(2 * int(offsets[-1]), np.int64) for _ in rounds[0][2]]
    for reading, count, items in rounds:
        first = offsets[reading] + placed[reading]
        slots = np.repeat(first - cumulative_offsets(count)[:-1], count) + np.arange(int(count.sum()))
        for bounds, round_bounds in zip(merged, items, strict=True):
            bounds[2 * slots] = round_bounds[0::2]
            bounds[2 * slots + 1] = round_bounds[1::2]
        placed[reading] += count
    return counts, merged


def _read_round(buffer: Buffer, block: Rows, count: np.ndarray, read_item: _ReadItem) -> list[np.ndarray]:
    """The `count` items of one block of every row of `block`, row by row: the k-th items of all rows are read at
    once, and their strings' starts and ends written to each row's k-th slot of a bounds array. While every row
    has a k-th item (the usual case: most rows have as many), no row is left out, so nothing is copied to be read;
    and when all rows have as many, the writes are strided."""
    if not len(count):
        return []
    least, most = int(count.min()), int(count.max())
    first = 2 * cumulative_offsets(count)  # where each row's first start goes in a bounds array, then its length
    columns: list[np.ndarray] = []
    for k in range(most):
        if k < least:
            ranges = read_item(buffer, block)
            if least == most:
                at_start, at_end = slice(2 * k, None, 2 * most), slice(2 * k + 1, None, 2 * most)
            else:
                at_start = first[:-1] + 2 * k
                at_end = at_start + 1
        else:
            has = count > k
            items = block.subset(has)
            ranges = read_item(buffer, items)
            block.advance_to(has, items)
            at_start = first[:-1][has] + 2 * k
            at_end = at_start + 1
        columns = columns or [np.empty(int(first[-1]), np.int64) for _ in ranges]
        for bounds, (starts, ends) in zip(columns, ranges, strict=True):
            bounds[at_start] = starts
            bounds[at_end] = ends
    return columns
