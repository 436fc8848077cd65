"""A real lake (SQLite catalog, file warehouse, appended like the sink) served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from pyiceberg.table import Table

from k2.api import ApiSettings, create_app, create_key
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.query.engine import QueryEngine
from tests.query.records import append_quotes, append_trades, at, quote, trade
from tests.waiting import wait_until

SYMBOLS = ("BHP", "CBA", "RIO")
# Generous, so only the rate-limit test (with its own server) ever sees a 429.
FAST = ApiSettings(
    rate_limit_per_minute=1_000_000,
    auth_failures_per_minute=1_000_000,
    query_timeout_seconds=20,
    replay_batch_rows=7,
    refresh_seconds=0,
)


def lake_trades(day: int = 0, count: int = 20) -> list[dict]:
    """`count` trades per symbol on asx plus a binance symbol; some share a microsecond (sequence breaks the tie)."""
    rows = []
    for i in range(count):
        for n, symbol in enumerate(SYMBOLS):
            moment = at(10, i, (i * 7) % 60, 0 if i % 5 == 0 else n, day=day)
            rows.append(trade(moment, f"{36 + n}.{i:03d}", f"{100 + i}", 1000 * day + 10 * i + n, symbol=symbol))
        rows.append(
            trade(
                at(11, i, day=day),
                f"{60000 + i}.12345678",
                "0.00100000",
                5000 + i,
                symbol="BTCUSDT",
                exchange="binance",
            )
        )
    rows.append(trade(at(9, 59, day=day), "36.66700000", "250", 900 + day, symbol="BHP"))
    return rows


def lake_quotes(day: int = 0, count: int = 20) -> list[dict]:
    rows = []
    for i in range(count):
        for n, symbol in enumerate(SYMBOLS):
            rows.append(quote(at(9, 58, i, day=day), f"{36 + n}.00", f"{36 + n}.02", 2000 + 10 * i + n, symbol=symbol))
    return rows


@dataclass
class Lake:
    settings: Settings
    tables: dict[str, Table]
    snapshots: list[int]


def build_lake(home: Path) -> Lake:
    settings = Settings(home=home)
    tables = ensure_tables(open_catalog(settings))
    snapshots = [append_trades(tables["trades_v2"], lake_trades(day=0))]
    append_quotes(tables["quotes_v2"], lake_quotes(day=0))
    snapshots.append(append_trades(tables["trades_v2"], lake_trades(day=1)))
    return Lake(settings, tables, snapshots)


class Server:
    """uvicorn serving `app` from a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: object) -> None:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP (else Nagle adds ~40 ms a request).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on")  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()

        def running() -> None:
            assert self._thread.is_alive(), "uvicorn exited at start"

        wait_until(lambda: self._server.started, 15, "uvicorn to start", interval=0.02, check=running)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()


@contextmanager
def serving(settings: Settings, api: ApiSettings = FAST, engine: QueryEngine | None = None) -> Iterator[Server]:
    with Server(create_app(settings, engine, api=api)) as server:
        yield server


@pytest.fixture(scope="session")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """Shared by the read-only tests: never append to it (tests that change data build their own)."""
    return build_lake(tmp_path_factory.mktemp("api-lake") / "k2home")


@pytest.fixture(scope="session")
def server(lake: Lake) -> Iterator[Server]:
    with serving(lake.settings) as running:
        yield running


@pytest.fixture(scope="session")
def api_key(lake: Lake) -> str:
    return create_key(lake.settings, "tests")


@pytest.fixture(scope="session")
def engine(lake: Lake) -> Iterator[QueryEngine]:
    """The library's own engine over the shared lake, for comparing API answers with direct calls."""
    with QueryEngine(open_catalog(lake.settings)) as opened:
        yield opened


@pytest.fixture
def client(server: Server, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}, timeout=30) as http:
        yield http


@pytest.fixture
def anonymous(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
