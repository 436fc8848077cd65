"""No gaps, no duplicates: id tracking per (symbol, channel) and REST backfill of what the stream skipped.

Binance ids are contiguous per symbol for `trade` (t) and `aggTrade` (a): a jump is a gap, an id at or below the
last one is a duplicate (reconnect overlap, replays). bookTicker update ids (u) are shared with the depth stream and
skip by design, so they are never treated as gaps; an update id below the newest one let through is a duplicate
when it was let through recently (a replacement connection's overlap), else stale: an older quote arriving after
a newer one, superseded by Binance's rule that the highest update id is the current book top. Gaps are filled from REST
(`/api/v3/aggTrades?fromId=` — fromId inclusive — and `/api/v3/historicalTrades?fromId=`) *before* the live id
that revealed them is let through, so downstream sees ids in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

log = structlog.get_logger(__name__)

CONTIGUOUS_CHANNELS = frozenset({"trade", "aggTrade"})
# Update ids remembered per (symbol, channel) whose ids skip: enough to recognise a reconnect overlap's frames.
RECENT_IDS = 4096
REST_PAGE_LIMIT = 1000  # the documented maximum `limit` of aggTrades/historicalTrades


@dataclass
class Gap:
    """Ids first_missing..last_missing of (symbol, channel) that did not arrive. `reason` "id_gap": the ids skipped
    (REST fills them); "disconnect": a bookTicker stream lost its connection between the quotes timed
    `missing_from` and `missing_to` (None: none came after), and any update id in between may be lost for good."""

    symbol: str
    channel: str
    first_missing: int
    last_missing: int
    detected_us: int
    filled: int = 0
    status: str = "open"  # open | filled | partial | unrecoverable
    detail: str = ""
    reason: str = "id_gap"
    missing_from: int | None = None
    missing_to: int | None = None

    @property
    def stream(self) -> str:
        return f"{self.symbol.lower()}@{self.channel}"

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass
class SequenceTracker:
    """Last id let through per (symbol, channel); seeded from the lake on restart."""

    last: dict[tuple[str, str], int] = field(default_factory=dict)
    duplicates: int = 0
    stale: int = 0
    # the newest ids let through on channels whose ids skip (bookTicker), to tell a duplicate from a stale frame
    recent: dict[tuple[str, str], deque[int]] = field(default_factory=dict)

    def classify(self, symbol: str, channel: str, seq: int) -> tuple[str, int | None]:
        """("new", None), ("duplicate", None), ("stale", None) or ("gap", first missing id)."""
        key = (symbol, channel)
        last = self.last.get(key)
        if last is not None and seq <= last:
            if channel in CONTIGUOUS_CHANNELS or seq == last or seq in self.recent.get(key, ()):
                self.duplicates += 1
                return "duplicate", None
            self.stale += 1
            return "stale", None
        if last is not None and channel in CONTIGUOUS_CHANNELS and seq > last + 1:
            return "gap", last + 1
        return "new", None

    def advance(self, symbol: str, channel: str, seq: int) -> None:
        key = (symbol, channel)
        if seq > self.last.get(key, -1):
            self.last[key] = seq
            if channel not in CONTIGUOUS_CHANNELS:
                self._remember(key, [seq])

    def _remember(self, key: tuple[str, str], seqs: list[int]) -> None:
        self.recent.setdefault(key, deque(maxlen=RECENT_IDS)).extend(seqs[-RECENT_IDS:])

    def advance_if_all_new(self, symbols: pa.Array, channels: pa.Array, seqs: pa.Array) -> bool:
        """Rows (symbol, channel, seq) in arrival order: when `classify` then `advance` row by row would call every
        one of them "new", advance past them all at once and return True; otherwise change nothing, return False
        (the caller then goes row by row and meets the duplicate or gap itself).

        Every row is "new" exactly when, per (symbol, channel), the first seq follows the last one let through
        (last + 1 on a contiguous channel, anything above it on the others, anything at all with no last yet) and
        each later seq follows the one before it by the same rule.
        """
        if len(seqs) == 0:
            return True
        values = np.asarray(seqs, dtype=np.int64) if seqs.null_count == 0 else None
        if values is None or (values < 0).any():
            return False  # not ids `advance` would keep (it keeps none below 0): row by row says what they are
        symbol_names, channel_names = pc.unique(symbols).to_pylist(), pc.unique(channels).to_pylist()
        width = len(channel_names)
        codes = np.asarray(pc.index_in(symbols, value_set=pa.array(symbol_names)), dtype=np.int64) * width
        codes += np.asarray(pc.index_in(channels, value_set=pa.array(channel_names)), dtype=np.int64)
        order = np.argsort(codes, kind="stable")  # each key's rows together, still in arrival order
        codes, values = codes[order], values[order]
        contiguous = np.array([channel in CONTIGUOUS_CHANNELS for _ in symbol_names for channel in channel_names])
        same_key = codes[1:] == codes[:-1]
        step = np.diff(values)
        if not (np.where(contiguous[codes[1:]], step == 1, step > 0) | ~same_key).all():
            return False
        starts = np.flatnonzero(np.concatenate([[True], ~same_key]))
        ends = np.append(starts[1:], len(codes)) - 1
        runs = []
        for code, start, end in zip(codes[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            key = (symbol_names[code // width], channel_names[code % width])
            first, previous = int(values[start]), self.last.get(key)
            if previous is not None and (first != previous + 1 if key[1] in CONTIGUOUS_CHANNELS else first <= previous):
                return False
            runs.append((key, start, end))
        for key, start, end in runs:
            self.last[key] = int(values[end])
            if key[1] not in CONTIGUOUS_CHANNELS:
                self._remember(key, values[max(start, end + 1 - RECENT_IDS) : end + 1].tolist())
        return True


class RestBackfiller:
    """Fetches missing trades/aggTrades from the REST API, paging by fromId and honouring 429 Retry-After."""

    def __init__(self, rest_endpoint: str, client: httpx.AsyncClient | None = None, max_attempts: int = 8) -> None:
        self._base = rest_endpoint.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=10.0)
        self._max_attempts = max_attempts
        self.requests = 0

    async def close(self) -> None:
        await self._client.aclose()

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        delay = 0.5
        for _attempt in range(self._max_attempts):
            self.requests += 1
            try:
                response = await self._client.get(self._base + path, params=params)
            except httpx.HTTPError as exc:
                log.warning("binance.rest_error", path=path, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if response.status_code in (418, 429):
                # Binance: 429 = over the weight limit, back off for Retry-After seconds; 418 = banned for ignoring it
                wait = float(response.headers.get("Retry-After", delay))
                log.warning("binance.rest_rate_limited", status=response.status_code, retry_after=wait)
                await asyncio.sleep(wait)
                continue
            response.raise_for_status()
            return response.json()
        raise RuntimeError(f"REST {path} {params} failed {self._max_attempts} times: is {self._base} reachable?")

    async def depth_snapshot(self, symbol: str, limit: int) -> Any:
        """GET /api/v3/depth: the symbol's book as the venue holds it now, its best `limit` levels a side."""
        return await self._get("/api/v3/depth", {"symbol": symbol, "limit": limit})

    async def fetch(self, symbol: str, channel: str, first: int, last: int) -> list[dict[str, Any]]:
        """Items with ids first..last inclusive (as far as the exchange still has them), in id order."""
        if channel == "aggTrade":
            path, id_key = "/api/v3/aggTrades", "a"
        elif channel == "trade":
            path, id_key = "/api/v3/historicalTrades", "id"
        else:
            raise ValueError(f"{channel} has no contiguous ids to backfill")
        items: list[dict[str, Any]] = []
        cursor = first
        while cursor <= last:
            limit = min(REST_PAGE_LIMIT, last - cursor + 1)
            page = await self._get(path, {"symbol": symbol, "fromId": cursor, "limit": limit})
            page = [item for item in page if cursor <= int(item[id_key]) <= last]
            if not page:
                break  # the exchange no longer has (or never had) these ids: the rest is unrecoverable
            items.extend(page)
            cursor = int(page[-1][id_key]) + 1
        return items
