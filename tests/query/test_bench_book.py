"""bench/bench_book.py at a tiny size, so the benchmark keeps working: its lake is written through the book recorder,
and book_at (held day and queries) and the naive replay give the same books at every instant it checks."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_book() -> Iterator[ModuleType]:
    """bench/bench_book.py (bench/ is not a package: its scripts run with bench/ on the path)."""
    before = set(sys.modules)
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("bench_book")
    finally:
        sys.path.remove(str(BENCH))
        for name in set(sys.modules) - before:
            if name in ("bench_book", "common", "naive"):
                del sys.modules[name]


def test_the_book_bench_writes_a_day_through_the_recorder_and_its_three_books_agree(
    bench_book: ModuleType, tmp_path: Path
) -> None:
    updates, snapshots = bench_book.write_lake(tmp_path, 2_000, checkpoint_seconds=3_600)
    assert (updates, snapshots) == (1_939, 16_110)  # deterministic for the seed
    got = bench_book.measure(tmp_path, 8, 4)  # raises when book_at, its queries and the naive replay differ
    assert (len(got["k2"]), len(got["naive"]), len(got["queries"])) == (8, 2, 2)
