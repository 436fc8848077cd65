"""What the emulator replays from a cryptofeed capture: its combined-stream frames unwrapped, and its depth snapshots.

Lines are read by `k2.sources.binance.capture`, the one reader of the format (older captures open with a
`<url> <-> <time>` line, newer ones with `configuration: ...` and the subscriptions sent). A line the emulator cannot
use (no known kind, a frame that is not a combined-stream JSON object, a snapshot body that is not JSON) is skipped
and kept in `Capture.skipped` with its reason, so a replay goes on and the emulator says what it left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from k2.sources.binance.capture import BadLine, RestResponse, WsFrame, read_capture


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One recorded WS frame: when it arrived (exact microseconds) and the unwrapped stream name and payload."""

    receipt_us: int
    stream: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CapturedSnapshot:
    """One recorded REST depth snapshot (``/api/v1/depth`` and ``/api/v3/depth`` bodies are identical)."""

    receipt_us: int
    symbol: str
    body: dict[str, Any]


@dataclass(slots=True)
class Capture:
    """Everything one capture file holds that a replay uses, frames in receipt order, and what it skipped."""

    path: Path
    frames: list[CapturedFrame] = field(default_factory=list)
    snapshots: list[CapturedSnapshot] = field(default_factory=list)
    skipped: list[BadLine] = field(default_factory=list)

    def summary(self) -> str | None:
        """One line for the user when lines were skipped (None when none were)."""
        if not self.skipped:
            return None
        first = self.skipped[0]
        return (
            f"capture {self.path.name}: {len(self.skipped)} line(s) skipped, {len(self.frames)} frames kept "
            f"(first skipped: line {first.line_no}, {first.reason})"
        )


def _frame(entry: WsFrame) -> CapturedFrame | str:
    """The unwrapped frame, or why it cannot be replayed."""
    try:
        wrapped = orjson.loads(entry.raw)
    except orjson.JSONDecodeError:
        return "frame is not JSON"
    if not (
        isinstance(wrapped, dict) and isinstance(wrapped.get("stream"), str) and isinstance(wrapped.get("data"), dict)
    ):
        return 'frame is not a combined-stream {"stream": ..., "data": {...}} object'
    return CapturedFrame(entry.receipt_us, wrapped["stream"], wrapped["data"])


def _snapshot(entry: RestResponse) -> CapturedSnapshot | str | None:
    """The depth snapshot, None for other REST responses, or why the body cannot be used."""
    symbol = entry.params.get("symbol", "").upper()
    if "depth" not in entry.path or not symbol:
        return None
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return "depth snapshot body is not JSON"
    if not isinstance(body, dict):
        return "depth snapshot body is not a JSON object"
    return CapturedSnapshot(entry.receipt_us, symbol, body)


def load_capture(path: Path) -> Capture:
    """Read a capture for replay; unusable lines are skipped and listed in `skipped`, never raised."""
    capture = Capture(path=path)
    for entry in read_capture(path, strict=False):
        if isinstance(entry, BadLine):
            capture.skipped.append(entry)
        elif isinstance(entry, WsFrame):
            frame = _frame(entry)
            if isinstance(frame, str):
                capture.skipped.append(BadLine(entry.raw, frame, entry.line_no))
            else:
                capture.frames.append(frame)
        elif isinstance(entry, RestResponse):
            snapshot = _snapshot(entry)
            if isinstance(snapshot, str):
                capture.skipped.append(BadLine(entry.body, snapshot, entry.line_no))
            elif snapshot is not None:
                capture.snapshots.append(snapshot)
    return capture
