"""Per-key token buckets: each key may spend `per_minute` requests a minute, refilled continuously."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by API key id. A full bucket holds one minute's allowance, so a key that was idle may
    burst that many requests at once, then proceeds at the steady rate.
    """

    def __init__(self, per_minute: int) -> None:
        self._default = per_minute
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, per_minute: int | None = None) -> int:
        """Spend one token of `key_id`'s bucket. Returns 0 if allowed, else the whole seconds until a token is due
        (what `Retry-After` says). `per_minute` overrides the default for this key.
        """
        return self._take(key_id, per_minute, spend=True)

    def waiting(self, key_id: str, per_minute: int | None = None) -> int:
        """As `acquire`, without spending: 0 while `key_id` has a token, else the seconds until it has one."""
        return self._take(key_id, per_minute, spend=False)

    def _take(self, key_id: str, per_minute: int | None, *, spend: bool) -> int:
        rate = per_minute or self._default
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(float(rate), now))
            bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.updated) * rate / 60.0)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0 if spend else 0.0
                return 0
            return max(1, math.ceil((1.0 - bucket.tokens) * 60.0 / rate))
