"""Reader for cryptofeed's raw capture files (the recorded Binance sessions in data/samples/binance).

One record per line, in receipt order (format from cryptofeed's `raw_data_collection`; see
data/samples/binance/README.md):

    configuration: <text>                             the feed's configuration (newer cryptofeed: the first line)
    <ws url> <-> <connect unix time>                  a WebSocket connection opened (first line of older WS files)
    <ws url> <- <send unix time>: <raw text>          a message the recorder sent (subscriptions; newer cryptofeed)
    <receipt unix time>: <raw text frame>             one WebSocket frame, byte for byte
    <rest url> -> <receipt unix time>: <raw body>     one REST response body

Times are float seconds written as text; they are turned into integer microseconds from the text itself (never
through float), truncating any 7th fractional digit (Python's time.time() repr sometimes prints one). Frames and
bodies stay raw bytes, so the emulator can replay exactly what Binance sent and the normalizer can be fed it.

This is the one reader of the format: the emulator builds what it replays on it too. A line of no known kind either
stops the read (`strict`, for callers that need the whole capture) or comes out as a `BadLine` with its reason, so a
replay can skip it, count it and say so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal, overload
from urllib.parse import parse_qs, urlsplit

_TIME = rb"(\d+(?:\.\d+)?)"
_CONNECT = re.compile(rb"(\S+) <-> " + _TIME)
_REST = re.compile(rb"(https?://\S+) -> " + _TIME + rb": ")
_SENT = re.compile(rb"(wss?://\S+) <- " + _TIME + rb": ")
_FRAME = re.compile(_TIME + rb": ")
_CONFIG = b"configuration: "


class ReplayClock(StrEnum):
    """Which clock the emulator replays a capture's times on (k2.sources.binance.emulator.feed)."""

    NOW = "now"  # re-based: the capture's first frame is the moment its replay starts
    RECORDED = "recorded"  # as recorded


class CaptureFormatError(ValueError):
    """A line that is none of the three capture line kinds."""


@dataclass(frozen=True, slots=True)
class WsConnect:
    """A WebSocket connection was opened to `url` at `connect_us`."""

    url: str
    connect_us: int
    line_no: int


@dataclass(frozen=True, slots=True)
class WsFrame:
    """One WebSocket text frame as received: `raw` is the frame's bytes, untouched."""

    receipt_us: int
    raw: bytes
    line_no: int


@dataclass(frozen=True, slots=True)
class RestResponse:
    """One REST response: the requested URL and the raw body."""

    url: str
    receipt_us: int
    body: bytes
    line_no: int

    @property
    def path(self) -> str:
        """The URL path, e.g. /api/v3/depth."""
        return urlsplit(self.url).path

    @property
    def params(self) -> dict[str, str]:
        """Query parameters, last value wins (symbol=BTCUSDT&limit=1000 → {"symbol": "BTCUSDT", "limit": "1000"})."""
        return {key: values[-1] for key, values in parse_qs(urlsplit(self.url).query).items()}


@dataclass(frozen=True, slots=True)
class WsSent:
    """A text message the recorder sent on the connection to `url` (its subscription requests)."""

    url: str
    sent_us: int
    raw: bytes
    line_no: int


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """The recorder's configuration line, kept as written (cryptofeed prints a Python dict, not JSON)."""

    text: str
    line_no: int


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that fits no kind (a truncated write, a stray edit): its bytes and why, for counting and reporting."""

    raw: bytes
    reason: str
    line_no: int


CaptureEntry = WsConnect | WsFrame | RestResponse | WsSent | CaptureConfig


def micros_from_text(text: bytes | str) -> int:
    """'1617566592.629139' → 1617566592629139, exactly, from the digits (a 7th+ fractional digit is dropped)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(f"not a unix time in seconds: {text!r}")
    return int(whole) * 1_000_000 + int(fraction[:6].ljust(6, "0"))


def parse_line(line: bytes, line_no: int = 0) -> CaptureEntry:
    """One capture line (without its newline) → entry; CaptureFormatError for anything else."""
    # Cheapest test first for the common case would be the frame, but a REST line's body can contain any text,
    # so the anchored URL pattern decides first; a frame line never starts with http.
    match = _REST.match(line)
    if match is not None:
        return RestResponse(match[1].decode(), micros_from_text(match[2]), line[match.end() :], line_no)
    match = _FRAME.match(line)
    if match is not None:
        return WsFrame(micros_from_text(match[1]), line[match.end() :], line_no)
    match = _SENT.match(line)
    if match is not None:
        return WsSent(match[1].decode(), micros_from_text(match[2]), line[match.end() :], line_no)
    match = _CONNECT.fullmatch(line)
    if match is not None:
        return WsConnect(match[1].decode(), micros_from_text(match[2]), line_no)
    if line.startswith(_CONFIG):
        return CaptureConfig(line[len(_CONFIG) :].decode("utf-8", "replace"), line_no)
    raise CaptureFormatError(
        f"line {line_no}: not '<time>: <frame>', '<url> -> <time>: <body>', '<url> <- <time>: <message>', "
        "'<url> <-> <time>' or 'configuration: ...'"
    )


@overload
def read_capture(path: Path | str, *, strict: Literal[True] = ...) -> Iterator[CaptureEntry]: ...
@overload
def read_capture(path: Path | str, *, strict: Literal[False]) -> Iterator[CaptureEntry | BadLine]: ...
def read_capture(path: Path | str, *, strict: bool = True) -> Iterator[CaptureEntry | BadLine]:
    """Entries of a capture file in file (= receipt) order, streamed; blank lines are skipped.

    `strict`: CaptureFormatError names the file and line of the first line that fits no kind. Otherwise such a line
    comes out as a BadLine and the read goes on.
    """
    path = Path(path)
    with path.open("rb") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            try:
                yield parse_line(line, line_no)
            except (CaptureFormatError, ValueError) as exc:
                if strict:
                    raise CaptureFormatError(f"{path}: {exc}") from None
                yield BadLine(line, str(exc).removeprefix(f"line {line_no}: "), line_no)


def ws_frames(path: Path | str) -> Iterator[WsFrame]:
    """Only the WebSocket frames of a capture, in receipt order."""
    for entry in read_capture(path):
        if isinstance(entry, WsFrame):
            yield entry


def rest_responses(path: Path | str) -> Iterator[RestResponse]:
    """Only the REST responses of a capture, in receipt order."""
    for entry in read_capture(path):
        if isinstance(entry, RestResponse):
            yield entry
