"""The frames of a batch as one byte buffer, and the canonical Binance frame shapes the columnar normalizer matches.

`FrameBuffer` holds all frames back to back in one Arrow buffer, where each starts and ends, and where its quotes
are. `TEMPLATES` are the canonical shapes Binance sends (the combined-stream and raw aggTrade, trade and spot
bookTicker payloads, keys in Binance's order), each a `Template`: literals and cuts, every cut measured from one
of the frame's quotes (or its end) by a fixed shift. `k2.sources.binance.normalize_columnar` matches frames against
them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

QUOTE_BYTE = ord('"')
# After the frames: word reads past a frame's end stay in here (the longest literal is 30 bytes).
_PAD = bytes(64)


# --- the frames as one buffer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameBuffer:
    """All frames back to back in one Arrow buffer, where each starts and ends, and where its quotes are."""

    frames: pa.BinaryArray  # one element per frame, then one of padding
    data: np.ndarray  # uint8 view of the frames' bytes and the padding
    words: np.ndarray  # uint64 view: words[i] is the 8 bytes from byte i on (little-endian)
    starts: np.ndarray  # int64 per frame
    ends: np.ndarray
    quotes: np.ndarray  # positions of every '"' in `data`
    first_quote: np.ndarray  # per frame: index into `quotes` of its first quote
    quote_counts: np.ndarray  # per frame: how many quotes it holds
    received: np.ndarray  # int64 per frame: receive time in µs

    @classmethod
    def of(cls, raws: list[bytes], received: list[int]) -> FrameBuffer | None:
        """None when there is nothing to match (no bytes, or more than int32 offsets reach)."""
        if not raws:
            return None
        try:
            frames = pa.array([*raws, _PAD], pa.binary())
            times = np.fromiter(received, dtype=np.int64, count=len(received))
        except (pa.ArrowException, OverflowError, TypeError):
            return None
        if isinstance(frames, pa.ChunkedArray):
            return None  # over 2 GiB: Arrow split it
        offsets = np.frombuffer(frames.buffers()[1], dtype=np.int32)[: len(raws) + 1].astype(np.int64)
        data = np.frombuffer(frames.buffers()[2], dtype=np.uint8)
        words = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
        quotes = np.flatnonzero(data[: offsets[-1]] == QUOTE_BYTE)
        bounds = np.searchsorted(quotes, offsets)
        return cls(frames, data, words, offsets[:-1], offsets[1:], quotes, bounds[:-1], np.diff(bounds), times)


# --- templates ------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"<(int|dec|bool|str|name):(\w+)>")


@dataclass(frozen=True)
class Template:
    """One canonical frame shape, as literals and cuts: a frame in it is literals[0] + cut 1 + literals[1] + ...

    Placeholders in the shape: <int:k> a JSON integer ≥ 0 (at most 18 digits, no leading zero), <dec:k> a JSON
    string of 1-10 digits, '.', 8 digits (cut in two: k.int and k.frac), <bool:k> true/false, <str:k> a JSON
    string without escapes, <name:k> the same without '@'. Each cut's start and end are measured from one of the
    frame's quotes (or its end) by a fixed shift, so all of them come from one gather.
    """

    kind: str  # the channel: aggTrade, trade or bookTicker
    quotes: int  # quotes in a frame of this shape
    cuts: tuple[tuple[str, str], ...]  # (kind, name) in frame order; kinds: int, digits, frac, bool, str, name
    bound_quote: np.ndarray  # per cut, start then end: the index of the quote it is measured from
    bound_shift: np.ndarray  # ... and the shift from it
    at_end: np.ndarray  # bounds measured from the frame's end instead
    literal_length: np.ndarray  # per literal: its bytes
    word_literal: np.ndarray  # per 8-byte chunk of literal bytes: its literal, offset, bytes and mask
    word_offset: np.ndarray
    word_value: np.ndarray
    word_mask: np.ndarray
    shortest: np.ndarray  # per cut: its shortest and longest text
    longest: np.ndarray
    bools: np.ndarray  # the cuts that are true/false
    taken: np.ndarray  # the cuts gathered as text: strings first, then true/false, then digit runs
    taken_strings: int
    taken_texts: int  # strings and true/false: the digit runs come after them
    json_integers: np.ndarray  # which of the digit runs are JSON integers (no leading zero)

    @classmethod
    def parse(cls, kind: str, text: str) -> Template:
        pieces: list[str] = []
        values: list[tuple[str, str]] = []
        at = 0
        for found in _PLACEHOLDER.finditer(text):
            pieces.append(text[at : found.start()])
            values.append((found[1], found[2]))
            at = found.end()
        pieces.append(text[at:])
        first_quote, quotes = [], 0
        for piece in pieces:
            first_quote.append(quotes)
            quotes += piece.count('"')
        literals = [pieces[0]]
        cuts: list[tuple[str, str]] = []
        bounds: list[tuple[int, int]] = []  # (quote index or -1 for the frame's end, shift)
        for j, (value_kind, key) in enumerate(values):
            before, after = pieces[j], pieces[j + 1]
            if '"' not in before:
                raise ValueError(f"template piece {before!r} has no quote to measure the next value from")
            start = (first_quote[j] + before.count('"') - 1, len(before) - before.rindex('"'))
            end = (first_quote[j + 1], -after.index('"')) if '"' in after else (-1, -len(after))
            if value_kind == "dec":  # digits '.' 8 digits: the '.' is 9 bytes before the value's end
                cuts += [("digits", key + ".int"), ("frac", key + ".frac")]
                bounds += [start, (end[0], end[1] - 9), (end[0], end[1] - 8), end]
                literals += [".", after]
            else:
                cuts.append((value_kind, key))
                bounds += [start, end]
                literals.append(after)
        words = [
            (k, at, int.from_bytes(literal[at : at + 8].encode(), "little"), (1 << (8 * len(literal[at : at + 8]))) - 1)
            for k, literal in enumerate(literals)
            for at in range(0, len(literal), 8)
        ]
        kinds = [cut_kind for cut_kind, _ in cuts]
        strings = [c for c, k in enumerate(kinds) if k in ("str", "name")]
        runs = [c for c, k in enumerate(kinds) if k in _DIGIT_RUNS]
        flags = [c for c, k in enumerate(kinds) if k == "bool"]
        return cls(
            kind=kind,
            quotes=quotes,
            cuts=tuple(cuts),
            bound_quote=np.array([quote for quote, _ in bounds]),
            bound_shift=np.array([shift for _, shift in bounds]),
            at_end=np.array([quote < 0 for quote, _ in bounds]),
            literal_length=np.array([len(literal) for literal in literals]),
            word_literal=np.array([w[0] for w in words]),
            word_offset=np.array([w[1] for w in words]),
            word_value=np.array([w[2] for w in words], dtype=np.uint64),
            word_mask=np.array([w[3] for w in words], dtype=np.uint64),
            shortest=np.array([_LENGTHS[k][0] for k in kinds]),
            longest=np.array([_LENGTHS[k][1] for k in kinds]),
            bools=np.array(flags, dtype=np.int64),
            taken=np.array(strings + flags + runs, dtype=np.int64),
            taken_strings=len(strings),
            taken_texts=len(strings) + len(flags),
            json_integers=np.array([_DIGIT_RUNS[kinds[c]] for c in runs], dtype=bool),
        )


# Per kind of cut: its shortest and longest text (strings: any length up to Arrow's int32 offsets).
_ANY = (1, 1 << 31)
_LENGTHS = {"int": (1, 18), "digits": (1, 10), "frac": (8, 8), "bool": (4, 5), "str": _ANY, "name": _ANY}
# Per digit run kind: whether a leading zero is refused (JSON integers; a decimal's digits may have one).
_DIGIT_RUNS = {"int": True, "digits": False, "frac": False}
TRUE_WORD = int.from_bytes(b"true", "little")
FALSE_WORD = int.from_bytes(b"false", "little")


# Payloads in the key order Binance sends (developers.binance.com, WebSocket Streams; the 2021 captures).
_AGG_TRADE = (
    '"e":"aggTrade","E":<int:E>,"s":"<str:s>","a":<int:a>,"p":"<dec:p>","q":"<dec:q>",'
    '"f":<int:f>,"l":<int:l>,"T":<int:T>,"m":<bool:m>,"M":<bool:M>'
)
_TRADE = (
    '"e":"trade","E":<int:E>,"s":"<str:s>","t":<int:t>,"p":"<dec:p>","q":"<dec:q>",'
    '"T":<int:T>,"m":<bool:m>,"M":<bool:M>'
)
# Before 2023-12 trade payloads also carried the buyer and seller order ids.
_TRADE_ORDER_IDS = (
    '"e":"trade","E":<int:E>,"s":"<str:s>","t":<int:t>,"p":"<dec:p>","q":"<dec:q>",'
    '"b":<int:b>,"a":<int:a>,"T":<int:T>,"m":<bool:m>,"M":<bool:M>'
)
_BOOK_TICKER = '"u":<int:u>,"s":"<str:s>","b":"<dec:b>","B":"<dec:B>","a":"<dec:a>","A":"<dec:A>"'
# Combined streams wrap the payload; for bookTicker (no "e") the stream name says what it is, and
# normalize_frame reads the channel after its first '@', hence a stream name without '@' before "@bookTicker".
TEMPLATES = (
    Template.parse("aggTrade", '{"stream":"<str:stream>","data":{' + _AGG_TRADE + "}}"),
    Template.parse("bookTicker", '{"stream":"<name:stream>@bookTicker","data":{' + _BOOK_TICKER + "}}"),
    Template.parse("trade", '{"stream":"<str:stream>","data":{' + _TRADE + "}}"),
    Template.parse("trade", '{"stream":"<str:stream>","data":{' + _TRADE_ORDER_IDS + "}}"),
    Template.parse("aggTrade", "{" + _AGG_TRADE + "}"),
    Template.parse("bookTicker", "{" + _BOOK_TICKER + "}"),
    Template.parse("trade", "{" + _TRADE + "}"),
    Template.parse("trade", "{" + _TRADE_ORDER_IDS + "}"),
)
