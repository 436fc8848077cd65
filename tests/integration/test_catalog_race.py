"""Several processes opening a brand-new catalog and creating the same tables at once all succeed (the start of a
multi-worker sink group on a fresh PostgreSQL catalog: once two workers crashed here with a duplicate-key error)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_table
from k2.schema import ALL_RECORDS
from tests.conftest import broker_incidental

pytestmark = [pytest.mark.integration, broker_incidental]

PROCESSES = 4


def _open_and_create(barrier, results) -> None:
    barrier.wait()  # all start together: the window between "does it exist?" and CREATE is as wide as it gets
    try:
        catalog = open_catalog(Settings())  # K2_HOME / K2_CATALOG_URI come from the environment the test set
        names = [ensure_table(catalog, spec).name()[-1] for spec in ALL_RECORDS]
        results.put(("ok", ",".join(names)))
    except Exception as exc:  # reported to the test rather than lost in a child's stderr
        results.put((type(exc).__name__, str(exc)[:300]))


@pytest.mark.parametrize("trial", range(6))
def test_processes_racing_to_create_the_catalog_and_tables_all_succeed(settings: Settings, trial: int) -> None:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_open_and_create, args=(barrier, results)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    outcomes = [results.get(timeout=5) for _ in procs]
    expected = ",".join(spec.name for spec in ALL_RECORDS)
    assert outcomes == [("ok", expected)] * PROCESSES
    assert sorted(t[1] for t in open_catalog(settings).list_tables("market_data")) == sorted(
        spec.name for spec in ALL_RECORDS
    )
