"""FileFacts keeps per-file answers: each computed once, the least recently used going first past the budget."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from k2.query.file_facts import SYMBOL_COUNTS_QUERY, FileFacts


class CountingRun:
    """Stands in for the engine's DuckDB: a table of `rows` int64 values per call, and a log of the calls."""

    def __init__(self, rows: int = 10) -> None:
        self.rows = rows
        self.calls: list[tuple[str, list[Any]]] = []

    def __call__(self, query: str, params: list[Any]) -> pa.Table:
        self.calls.append((query, params))
        if query == SYMBOL_COUNTS_QUERY:
            return pa.table({"symbol": ["BHP", "CBA"], "n": [3, 4]})
        return pa.table({"x": pa.array(range(self.rows), pa.int64())})


def test_a_fact_is_computed_once_per_file_query_and_params() -> None:
    run, facts = CountingRun(), FileFacts()
    first = facts.fact("a.parquet", "Q", ["BHP"], run)
    assert facts.fact("a.parquet", "Q", ["BHP"], run) is first
    facts.fact("a.parquet", "Q", ["CBA"], run)
    facts.fact("b.parquet", "Q", ["BHP"], run)
    assert run.calls == [("Q", ["a.parquet", "BHP"]), ("Q", ["a.parquet", "CBA"]), ("Q", ["b.parquet", "BHP"])]


def test_the_least_recently_used_fact_goes_first_past_the_byte_budget() -> None:
    run = CountingRun(rows=10)  # 80 bytes of int64 each
    facts = FileFacts(max_bytes=200)
    for path in ("a", "b"):
        facts.fact(path, "Q", [], run)
    facts.fact("a", "Q", [], run)  # a is now more recent than b
    assert facts.has_fact("b", "Q", [])  # asking does not make it recent
    facts.fact("c", "Q", [], run)  # 240 bytes > 200: b goes
    assert [facts.has_fact(p, "Q", []) for p in ("a", "b", "c")] == [True, False, True]
    assert len(run.calls) == 3


def test_a_fact_larger_than_the_budget_is_kept_alone_until_the_next() -> None:
    facts = FileFacts(max_bytes=100)
    facts.fact("small", "Q", [], CountingRun(rows=5))
    facts.fact("big", "Q", [], CountingRun(rows=50))  # 400 bytes
    assert [facts.has_fact(p, "Q", []) for p in ("small", "big")] == [False, True]
    facts.fact("next", "Q", [], CountingRun(rows=5))
    assert [facts.has_fact(p, "Q", []) for p in ("big", "next")] == [False, True]


def test_symbol_counts_are_read_once_and_bounded_by_count() -> None:
    run, facts = CountingRun(), FileFacts(max_symbol_counts=2)
    assert dict(facts.symbol_counts("a", run)) == {"BHP": 3, "CBA": 4}
    facts.symbol_counts("a", run)
    facts.symbol_counts("b", run)
    facts.symbol_counts("c", run)  # a goes
    facts.symbol_counts("a", run)
    assert [params for _query, params in run.calls] == [["a"], ["b"], ["c"], ["a"]]
