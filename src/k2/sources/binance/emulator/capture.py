"""Private reader for the cryptofeed capture format (to be replaced by `k2.sources.binance.capture`).

Line format, as documented in data/samples/binance/README.md:

- ``<ws url> <-> <connect unix time>``: the connection header (first line of a WS capture)
- ``<receipt unix time>: <raw text frame>``: one combined-stream frame ``{"stream":..,"data":..}``
- ``<rest url> -> <receipt unix time>: <raw body>``: a REST response (depth snapshots)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One recorded WS frame: when it arrived and the unwrapped stream name and payload."""

    received: float
    stream: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CapturedSnapshot:
    """One recorded REST depth snapshot (``/api/v1/depth`` and ``/api/v3/depth`` bodies are identical)."""

    received: float
    symbol: str
    body: dict[str, Any]


@dataclass(slots=True)
class Capture:
    """Everything one capture file holds, frames in receipt order."""

    path: Path
    frames: list[CapturedFrame] = field(default_factory=list)
    snapshots: list[CapturedSnapshot] = field(default_factory=list)


def read_capture(path: Path) -> Capture:
    """Parse a capture file; lines that are neither frames nor REST bodies raise ValueError with the line number."""
    capture = Capture(path=path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            if line.startswith((b"ws://", b"wss://")) and b" <-> " in line:
                continue
            if line.startswith((b"http://", b"https://")):
                url, _, rest = line.partition(b" -> ")
                stamp, _, body = rest.partition(b": ")
                symbol = parse_qs(urlsplit(url.decode()).query).get("symbol", [""])[0].upper()
                if "depth" in url.decode() and symbol:
                    capture.snapshots.append(CapturedSnapshot(float(stamp), symbol, orjson.loads(body)))
                continue
            stamp, sep, frame = line.partition(b": ")
            if not sep:
                raise ValueError(f"{path}:{number}: not a capture line")
            wrapped = orjson.loads(frame)
            capture.frames.append(CapturedFrame(float(stamp), wrapped["stream"], wrapped["data"]))
    return capture
