"""The as-of join's spread columns: numpy int64 over the unscaled decimals gives exactly Arrow's 128-bit decimal
arithmetic, and prices too large for int64 are left to Arrow."""

from __future__ import annotations

import random
from decimal import Decimal

import pyarrow as pa

from k2.query.asof import _spreads_arrow, _spreads_int64


def test_spreads_in_int64_equal_arrows_decimal_arithmetic() -> None:
    rng = random.Random(7)
    n = 5_000

    def prices(nulls: bool) -> pa.ChunkedArray:
        values = [
            None if nulls and rng.random() < 0.1 else Decimal(rng.randrange(-(10**16), 9 * 10**16)).scaleb(-8)
            for _ in range(n)
        ]
        decimal = pa.decimal128(18, 8)  # two chunks: the columns come from several row groups
        return pa.chunked_array([pa.array(values[: n // 2], decimal), pa.array(values[n // 2 :], decimal)])

    price, bid, ask = prices(False), prices(True), prices(True)
    fast = _spreads_int64(price, bid, ask)

    assert fast is not None
    slow = _spreads_arrow(price, bid, ask)
    for name in ("mid", "spread", "effective_spread"):
        assert fast[name].type == slow[name].type
        assert fast[name].equals(pa.chunked_array([slow[name]]).combine_chunks()), name
    assert fast["mid"].null_count > 0


def test_prices_too_large_for_int64_take_arrows_path() -> None:
    big = pa.chunked_array([pa.array([Decimal("900000000.00000000"), Decimal("1.00000000")], pa.decimal128(18, 8))])
    assert _spreads_int64(big, big, big) is None
