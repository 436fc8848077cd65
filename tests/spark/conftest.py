"""One small lake written by K2's real pipeline, one `k2 catalog-serve` in front of it, one Spark JVM per session.

The lake: a PostgreSQL SQL catalog (so Spark can open it as a JdbcCatalog too) and a file warehouse, loaded with
`load` from a cut of the ASX sample (two instruments whole, every 40th line of the two big ones: a few thousand rows
over five trading days) and the Binance kline files (bars_v2). Spark reaches it as two catalogs: `k2rest` through
the REST server and `k2` (K2's catalog name, which keys the JDBC rows) straight from PostgreSQL.

pyspark is imported inside the fixtures: without the `spark` extra, collecting the rest of the suite still works.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
from fastapi import FastAPI, Request, Response
from rich.console import Console

from k2.config import Settings
from k2.ingest.pipeline import load
from k2.lake.catalog import open_catalog
from k2.lake.engines import fetch_jars, jdbc_catalog_properties, rest_catalog_properties, spark_config
from k2.lake.rest_catalog import rest_catalog_app
from k2.samples import BINANCE_PUBLIC_DATA
from k2.sources.asx import AsxSource
from k2.sources.binance.files import BinanceFileSource
from tests.api.conftest import Server
from tests.conftest import isolated_settings
from tests.postgres import PostgresServer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

QUIET = Console(quiet=True)
KLINES = BINANCE_PUBLIC_DATA
REST = "k2rest"  # the Spark catalog reading through `k2 catalog-serve`
SMALL = ("3153", "7181")  # whole files: 11 + 232 trades, 60 + 549 quotes
BIG = ("7078", "7458")  # every STRIDE-th line of each
STRIDE = 40

# Loopback only, no UI port, two cores: the machine is shared. AQE off so the executed plan is the plan that ran
# (its scan node carries the metrics the pruning test reads).
LOCAL_SPARK = {
    "spark.master": "local[2]",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.driver.memory": "1g",
}


@dataclass
class SparkLake:
    settings: Settings  # K2 on the SQL catalog (PostgreSQL) and the file warehouse
    rest_url: str  # `k2 catalog-serve` over it
    spark: SparkSession
    jdbc: str  # the Spark catalog name of the JdbcCatalog (K2's catalog name)
    startup_seconds: float
    rest_calls: list[tuple[str, str, int]]  # (method, path, status) of every request the REST server answered


def asx_cut(sample: Path, into: Path) -> Path:
    """A smaller ASX sample: SMALL files whole, every STRIDE-th line of BIG ones, reference data as is."""
    for kind in ("trades", "quotes"):
        (into / kind).mkdir(parents=True)
        for code in SMALL:
            shutil.copy(sample / kind / f"{code}.csv", into / kind / f"{code}.csv")
        for code in BIG:
            lines = (sample / kind / f"{code}.csv").read_text().splitlines(keepends=True)
            (into / kind / f"{code}.csv").write_text("".join(lines[::STRIDE]))
    shutil.copytree(sample / "reference-data", into / "reference-data")
    return into


def recording(app: FastAPI, calls: list[tuple[str, str, int]]) -> FastAPI:
    """`app`, noting each request's method, path and answer status in `calls`: what Iceberg's Java client asks."""

    @app.middleware("http")
    async def note(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        answer = await call_next(request)
        calls.append((request.method, request.url.path, answer.status_code))
        return answer

    return app


def start_spark(catalogs: dict[str, dict[str, str]]) -> tuple[SparkSession, float]:
    """A local SparkSession with `catalogs`; the seconds its JVM took to start."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("k2-tests")
    for key, value in {**spark_config(catalogs, fetch_jars()), **LOCAL_SPARK}.items():
        builder = builder.config(key, value)
    started = time.monotonic()
    session = builder.getOrCreate()
    session.sql("SELECT 1").collect()  # the first query loads the SQL machinery: part of the start-up cost
    return session, time.monotonic() - started


def add_catalog(spark: SparkSession, name: str, properties: dict[str, str]) -> None:
    """Register one more Iceberg catalog on a running session (Spark loads a catalog on first use)."""
    for key, value in spark_config({name: properties}, []).items():
        if key.startswith("spark.sql.catalog."):
            spark.conf.set(key, value)


@pytest.fixture(scope="session")
def spark_lake(
    tmp_path_factory: pytest.TempPathFactory,
    asx_sample: Path,
    postgres: PostgresServer,
    request: pytest.FixtureRequest,
) -> Iterator[SparkLake]:
    root = tmp_path_factory.mktemp("spark-lake")
    with pytest.MonkeyPatch.context() as mp:
        isolated_settings(root / "k2home", mp, request)
        mp.setenv("K2_CATALOG_URI", postgres.create_database())  # always PostgreSQL: JdbcCatalog reads it
        settings = Settings(home=root / "k2home")
        asx = load(AsxSource(asx_cut(asx_sample, root / "asx")), settings, QUIET)
        bars = load(BinanceFileSource(sorted(KLINES.glob("*.csv"))), settings, QUIET)
        assert asx.ok and bars.ok, (asx, bars)
        mp.setenv("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark's start-up looks up the host's address (and warns)
        calls: list[tuple[str, str, int]] = []
        with Server(recording(rest_catalog_app(open_catalog(settings)), calls)) as server:
            spark, startup = start_spark(
                {REST: rest_catalog_properties(server.url), settings.catalog_name: jdbc_catalog_properties(settings)}
            )
            request.config.stash[SPARK_STARTUP] = startup
            try:
                yield SparkLake(settings, server.url, spark, settings.catalog_name, startup, calls)
            finally:
                spark.stop()


SPARK_STARTUP = pytest.StashKey[float]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if (startup := config.stash.get(SPARK_STARTUP, None)) is not None:
        terminalreporter.write_line(f"Spark session start-up (JVM + Iceberg + first query): {startup:.1f} s")


# --- comparing rows ----------------------------------------------------------------------------------------------
def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        # a map comes out of Arrow as a list of (key, value) pairs; its order is not part of the value
        items = [_hashable(v) for v in value]
        return tuple(sorted(items)) if items and all(isinstance(v, tuple) for v in items) else tuple(items)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def multiset(table: pa.Table) -> Counter[tuple]:
    """The rows of `table` as a multiset of tuples (column order as given)."""
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return Counter(tuple(_hashable(v) for v in row) for row in zip(*columns, strict=True))


def spark_arrow(frame: DataFrame) -> pa.Table:
    """A Spark result as Arrow: decimals stay decimal128, timestamps microseconds in the session zone (UTC)."""
    return frame.toArrow()
