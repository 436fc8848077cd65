"""K2 pointed at an Iceberg REST catalog by configuration alone: K2's own REST server (k2.lake.rest_catalog, a real
uvicorn on 127.0.0.1) in front of the test's SQL catalog, spoken to by pyiceberg's RestCatalog client."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table.update import AssertRefSnapshotId
from rich.console import Console

from k2.bus.stack import Stack
from k2.config import Settings
from k2.core.breaker import CircuitBreaker
from k2.ingest.pipeline import load
from k2.lake.catalog import NAMESPACE, open_catalog
from k2.lake.rest_catalog import backend_settings, rest_catalog_app
from k2.lake.sink import IcebergSink
from k2.lake.tables import ensure_table, table_identifier
from k2.schema import TRADES_V2
from k2.schema.arrow import records_to_arrow
from k2.sources.asx import AsxSource
from tests.api.conftest import Server
from tests.conftest import broker_incidental
from tests.integration.helpers import (
    TEST_TOPIC,
    all_committed,
    lake_count,
    lake_query,
    make_trade,
    produce_test_trades,
    raw_line_count,
)

pytestmark = [pytest.mark.integration, broker_incidental]

QUIET = Console(quiet=True)
TRADES = f"/v1/namespaces/{NAMESPACE}/tables/{TRADES_V2.name}"


@dataclass
class RestLake:
    backend: Settings  # the SQL catalog behind the server
    settings: Settings  # K2 configured to reach that catalog through the REST server only
    url: str

    def client(self) -> RestCatalog:
        """A fresh REST client, as another sink worker or reader would open it."""
        catalog = open_catalog(self.settings)
        assert isinstance(catalog, RestCatalog)
        return catalog


@pytest.fixture
def rest_lake(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[RestLake]:
    with Server(rest_catalog_app(open_catalog(settings))) as server:
        # Exported too, as a `k2` process would read it; the server's own settings are unaffected.
        monkeypatch.setenv("K2_CATALOG_PROPERTIES", json.dumps({"type": "rest", "uri": server.url}))
        yield RestLake(settings, Settings(home=settings.home), server.url)


def _trades(numbers: range, price: str) -> list[dict]:
    return [make_trade(n, price=price) for n in numbers]


def test_serving_with_rest_client_settings_fronts_the_sql_catalog_not_itself(rest_lake: RestLake) -> None:
    assert rest_lake.settings.catalog_config["type"] == "rest"
    behind = backend_settings(rest_lake.settings).catalog_config
    assert behind["type"] == "sql"
    assert behind["uri"] == rest_lake.backend.catalog_config["uri"]


def test_asx_load_through_the_rest_catalog_lands_every_row_exactly(
    rest_lake: RestLake, asx_sample: Path, tmp_path: Path
) -> None:
    # Two of the four instruments (MWR, DVN): every path of the spine, in seconds rather than a minute.
    sample = tmp_path / "asx"
    for kind in ("trades", "quotes"):
        (sample / kind).mkdir(parents=True)
        for code in ("3153", "7181"):
            shutil.copy(asx_sample / kind / f"{code}.csv", sample / kind / f"{code}.csv")
    shutil.copytree(asx_sample / "reference-data", sample / "reference-data")

    recon = load(AsxSource(sample), rest_lake.settings, QUIET)

    assert recon.ok, recon
    lines = {
        kind: {code: raw_line_count(sample / kind / f"{code}.csv") for code in ("3153", "7181")}
        for kind in ("trades", "quotes")
    }
    assert lines == {"trades": {"3153": 11, "7181": 232}, "quotes": {"3153": 60, "7181": 549}}
    assert recon.produced == 11 + 232 + 60 + 549 + 6  # + 4 companies and 2 dividends
    assert dict(recon.sink.written) == {"trades_v2": 243, "quotes_v2": 609, "reference_data_v2": 6}

    by_symbol = "SELECT symbol, count(*) FROM market_data.{} GROUP BY symbol ORDER BY symbol"
    assert lake_query(rest_lake.settings, by_symbol.format("trades_v2")) == [("DVN", 232), ("MWR", 11)]
    assert lake_query(rest_lake.settings, by_symbol.format("quotes_v2")) == [("DVN", 549), ("MWR", 60)]
    assert lake_count(rest_lake.settings, "reference_data_v2") == 6
    first = lake_query(
        rest_lake.settings,
        "SELECT price, quantity, strftime(timestamp, '%Y-%m-%dT%H:%M:%S.%f') FROM market_data.trades_v2 "
        "WHERE symbol = 'DVN' ORDER BY timestamp, source_sequence LIMIT 1",
    )
    assert first == [(Decimal("0.67"), Decimal("8216"), "2014-03-09T23:13:34.553000")]  # 10:13:34.553 AEDT

    # The REST clients wrote into the SQL catalog behind the server: read directly, it is the same lake.
    sql = open_catalog(rest_lake.backend)
    assert sorted(t[1] for t in sql.list_tables(NAMESPACE)) == ["quotes_v2", "reference_data_v2", "trades_v2"]
    via_rest = rest_lake.client().load_table(table_identifier(TRADES_V2))
    assert via_rest.metadata_location == sql.load_table(table_identifier(TRADES_V2)).metadata_location
    assert lake_count(rest_lake.backend, "trades_v2") == 243


def test_a_stale_commit_gets_409_and_the_losing_writer_lands_after_refreshing(
    rest_lake: RestLake, caplog: pytest.LogCaptureFixture
) -> None:
    winner = ensure_table(rest_lake.client(), TRADES_V2)
    loser = rest_lake.client().load_table(table_identifier(TRADES_V2))  # a second worker, same (empty) state
    winner.append(records_to_arrow(TRADES_V2, _trades(range(0, 3), "10.12345678")))
    won = winner.current_snapshot()
    assert won is not None and loser.current_snapshot() is None

    # At the API: asserting `main` is still where the loser saw it (nowhere) fails, in the spec's error model.
    stale = {"requirements": [{"type": "assert-ref-snapshot-id", "ref": "main", "snapshot-id": None}], "updates": []}
    answer = httpx.post(rest_lake.url + TRADES, json=stale)
    assert answer.status_code == 409
    assert answer.json() == {
        "error": {
            "message": "Requirement failed: branch main was created concurrently",
            "type": "CommitFailedException",
            "code": 409,
        }
    }
    # The same through pyiceberg's client: CommitFailedException, the exception writers retry on.
    with pytest.raises(CommitFailedException, match=r"^CommitFailedException: Requirement failed: branch main"):
        loser.catalog.commit_table(loser, (AssertRefSnapshotId(ref="main", snapshot_id=None),), ())

    # A real append from the stale writer: refused once (409), then pyiceberg refreshes through REST and lands it.
    with caplog.at_level(logging.WARNING, logger="pyiceberg.table"):
        loser.append(records_to_arrow(TRADES_V2, _trades(range(3, 5), "20.5")))
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["Commit failed due to a concurrent update"]
    landed = loser.current_snapshot()
    assert landed is not None and landed.parent_snapshot_id == won.snapshot_id

    rows = lake_query(rest_lake.settings, "SELECT trade_id, price FROM market_data.trades_v2 ORDER BY trade_id")
    assert rows == [(str(n), Decimal("10.12345678")) for n in range(3)] + [
        (str(n), Decimal("20.50000000")) for n in range(3, 5)
    ]


def test_writers_racing_through_rest_all_land_in_one_linear_history(
    rest_lake: RestLake, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_table(rest_lake.client(), TRADES_V2)
    writers = 4
    tables = [rest_lake.client().load_table(table_identifier(TRADES_V2)) for _ in range(writers)]
    batches = [records_to_arrow(TRADES_V2, _trades(range(100 * w, 100 * w + 25), f"{w}.5")) for w in range(writers)]
    start, errors = threading.Barrier(writers), []

    def write(w: int) -> None:
        start.wait()  # all commit from the same base snapshot: all but one lose the first round
        try:
            tables[w].append(batches[w])
        except Exception as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    with caplog.at_level(logging.WARNING, logger="pyiceberg.table"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    assert errors == []
    refused = [r for r in caplog.records if r.getMessage().startswith("Commit failed due to a concurrent update")]
    assert len(refused) >= writers - 1  # every writer but the first was refused (409) at least once, then retried
    table = rest_lake.client().load_table(table_identifier(TRADES_V2))
    chain = []
    snapshot = table.current_snapshot()
    while snapshot is not None:
        chain.append(snapshot)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    assert len(chain) == len(table.snapshots()) == writers  # one snapshot per writer, none lost or forked
    assert lake_query(
        rest_lake.settings, "SELECT price, count(*) FROM market_data.trades_v2 GROUP BY price ORDER BY price"
    ) == [(Decimal(f"{w}.50000000"), 25) for w in range(writers)]


def test_missing_and_existing_tables_answer_404_and_409_in_the_error_model(rest_lake: RestLake) -> None:
    client = rest_lake.client()
    ensure_table(client, TRADES_V2)

    missing = httpx.get(f"{rest_lake.url}/v1/namespaces/{NAMESPACE}/tables/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"message": "Table does not exist: market_data.nope", "type": "NoSuchTableException", "code": 404}
    }
    assert httpx.head(f"{rest_lake.url}/v1/namespaces/{NAMESPACE}/tables/nope").status_code == 404
    assert httpx.head(rest_lake.url + TRADES).status_code == 204
    no_namespace = httpx.get(f"{rest_lake.url}/v1/namespaces/nowhere/tables")
    assert (no_namespace.status_code, no_namespace.json()["error"]["type"]) == (404, "NoSuchNamespaceException")

    schema = {"type": "struct", "fields": [{"id": 1, "name": "a", "type": "long", "required": False}]}
    again = httpx.post(
        f"{rest_lake.url}/v1/namespaces/{NAMESPACE}/tables", json={"name": "trades_v2", "schema": schema}
    )
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "AlreadyExistsException"
    assert again.json()["error"]["code"] == 409

    unknown = {"updates": [{"action": "drop-everything"}]}
    bad = httpx.post(rest_lake.url + TRADES, json=unknown)
    assert (bad.status_code, bad.json()["error"]["type"]) == (400, "BadRequestException")

    # pyiceberg's client turns them into its own exceptions, as with any REST catalog.
    with pytest.raises(NoSuchTableError):
        client.load_table(f"{NAMESPACE}.nope")
    with pytest.raises(TableAlreadyExistsError):
        client.create_table(table_identifier(TRADES_V2), schema=client.load_table(table_identifier(TRADES_V2)).schema())
    assert client.list_tables(NAMESPACE) == [(NAMESPACE, "trades_v2")]


def test_sink_defers_commits_a_rest_catalog_refuses_as_unavailable_and_lands_everything_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = rest_catalog_app(open_catalog(settings))
    refusals = iter(range(3))

    @app.middleware("http")
    async def unavailable_for_three_commits(request: Request, call_next: Callable[[Request], Awaitable[Response]]):
        is_commit = request.method == "POST" and request.url.path == TRADES
        if is_commit and next(refusals, None) is not None:
            body = {"error": {"message": "down for maintenance (injected)", "type": "ServiceUnavailable", "code": 503}}
            return JSONResponse(body, status_code=503)
        return await call_next(request)

    with Server(app) as server:
        monkeypatch.setenv("K2_CATALOG_PROPERTIES", json.dumps({"type": "rest", "uri": server.url}))
        client_settings = Settings(home=settings.home)
        with Stack(client_settings) as endpoints:
            registry, targets = produce_test_trades(client_settings, endpoints, 7)
            catalog = open_catalog(client_settings)
            sink = IcebergSink(client_settings, endpoints.bootstrap, registry, catalog, topics=[str(TEST_TOPIC)])
            sink.breaker = CircuitBreaker("catalog", threshold=1, reset_seconds=0.3)
            stats = sink.run(until=lambda _s: all_committed(endpoints.bootstrap, settings.sink_group, targets))
    assert next(refusals, None) is None  # all three refusals were met, so commits really were deferred
    assert stats.written["trades_v2"] == 7 and stats.duplicates["trades_v2"] == 0
    rows = lake_query(settings, "SELECT trade_id FROM market_data.trades_v2 WHERE exchange = 'test' ORDER BY 1")
    assert [row[0] for row in rows] == [str(n) for n in range(7)]


def test_a_stage_create_answers_each_schema_spec_and_order_once_and_create_transactions_land(
    rest_lake: RestLake,
) -> None:
    client = rest_lake.client()
    client.create_namespace(NAMESPACE)
    schema = {"type": "struct", "fields": [{"id": 1, "name": "a", "type": "long", "required": False}]}
    staged = httpx.post(
        f"{rest_lake.url}/v1/namespaces/{NAMESPACE}/tables",
        json={"name": "staged", "schema": schema, "stage-create": True},
    )
    assert staged.status_code == 200
    metadata = staged.json()["metadata"]
    # Iceberg Java refuses an id listed twice ("Multiple entries with same key"): Spark's CTAS failed so
    assert [s["schema-id"] for s in metadata["schemas"]] == [0]
    assert [s["spec-id"] for s in metadata["partition-specs"]] == [0]
    assert [o["order-id"] for o in metadata["sort-orders"]] == [0]
    assert "metadata-location" not in staged.json() and not client.table_exists(f"{NAMESPACE}.staged")

    # pyiceberg's own create transaction through the server (stage-create, then a commit asserting create) lands.
    trades = records_to_arrow(TRADES_V2, _trades(range(2), "3.25"))
    txn = client.create_table_transaction(table_identifier(TRADES_V2), schema=trades.schema)
    txn.append(trades)
    txn.commit_transaction()
    table = client.load_table(table_identifier(TRADES_V2))
    assert len(table.schemas()) == 1
    assert lake_query(rest_lake.settings, "SELECT trade_id, price FROM market_data.trades_v2 ORDER BY 1") == [
        ("0", Decimal("3.25000000")),
        ("1", Decimal("3.25000000")),
    ]
