"""The research reads on the real ASX sample, each checked against an oracle computed here from the raw files.

One story, as a user lives it: the first two days are loaded (snapshot S1); the whole week is then produced to
Kafka but not yet sunk — fresh reads through the HTTP API must already see it, each record once; the sink then
lands it (a later load). Afterwards: reads as of S1 return exactly the first load, the as-of join gives each trade
its prevailing quote, and replay returns exactly the raw rows in event order.

The oracles read the files with csv, Decimal and zoneinfo only — nothing from k2's parser.
"""

from __future__ import annotations

import bisect
import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from rich.console import Console

from k2.api import create_key
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Stack
from k2.config import Settings
from k2.ingest.pipeline import load, produce
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink
from k2.query.asof import trades_with_quotes
from k2.query.engine import QueryEngine
from k2.query.market import events
from k2.query.replay import replay
from k2.sources.asx import AsxSource
from tests.api.conftest import FAST, serving
from tests.conftest import isolated_settings
from tests.integration.helpers import all_committed

pytestmark = pytest.mark.integration

SYDNEY = ZoneInfo("Australia/Sydney")
QUIET = Console(quiet=True)
FIRST_LOAD_DAYS = (b"03/10/2014", b"03/11/2014")
COMPANY_SYMBOLS = {"3153": "MWR", "7078": "BHP", "7181": "DVN", "7458": "RIO"}  # reference-data/company_info.csv


@dataclass(frozen=True)
class RawTrade:
    timestamp: datetime  # UTC
    line: int
    price: Decimal
    quantity: Decimal


def raw_trades(path: Path, day: str | None = None) -> list[RawTrade]:
    """Trades of one file (optionally one MM/DD/YYYY day) in event order: UTC instant, then file order."""
    rows = []
    with path.open(newline="") as fh:
        for line, (date, clock, price, volume, *_rest) in enumerate(csv.reader(fh)):
            if day is None or date == day:
                rows.append(RawTrade(_utc(date, clock), line, Decimal(price), Decimal(volume)))
    return sorted(rows, key=lambda r: (r.timestamp, r.line))


def raw_quotes(path: Path) -> list[tuple[datetime, Decimal | None, Decimal | None]]:
    """(UTC instant, bid, ask) in file order; a price of 0 means that side is empty (the sample's README)."""
    with path.open(newline="") as fh:
        return [(_utc(date, clock), _side(bid), _side(ask)) for date, clock, bid, ask, *_sizes in csv.reader(fh)]


def _utc(date: str, clock: str) -> datetime:
    return datetime.strptime(f"{date} {clock}", "%m/%d/%Y %H:%M:%S.%f").replace(tzinfo=SYDNEY).astimezone(UTC)


def _side(price: str) -> Decimal | None:
    value = Decimal(price)
    return None if value == 0 else value


def sydney_day(day: int) -> tuple[datetime, datetime]:
    start = datetime(2014, 3, day, tzinfo=SYDNEY)
    return start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC)


def first_load_copy(sample: Path, target: Path) -> Path:
    """The sample cut to its first two days, byte for byte (same lines, so the same message ids)."""
    shutil.copytree(sample / "reference-data", target / "reference-data")
    for kind in ("trades", "quotes"):
        (target / kind).mkdir(parents=True)
        for path in sorted((sample / kind).glob("*.csv")):
            lines = path.read_bytes().splitlines(keepends=True)
            (target / kind / path.name).write_bytes(b"".join(ln for ln in lines if ln.startswith(FIRST_LOAD_DAYS)))
    return target


def _arrow(response: httpx.Response) -> pa.Table:
    assert response.status_code == 200, response.text
    return pa.ipc.open_stream(response.content).read_all()


def _as_raw(table: pa.Table) -> list[tuple[datetime, Decimal, Decimal]]:
    return list(
        zip(
            table["timestamp"].to_pylist(),
            table["price"].to_pylist(),
            table["quantity"].to_pylist(),
            strict=True,
        )
    )


def _expect(rows: list[RawTrade]) -> list[tuple[datetime, Decimal, Decimal]]:
    return [(r.timestamp, r.price, r.quantity) for r in rows]


@dataclass
class Story:
    settings: Settings
    sample: Path
    first_snapshot: int  # trades_v2 after the first load
    first_loaded_at: datetime  # an instant between the first load and the later one
    fresh_latest: pa.Table  # GET /v1/trades/latest?fresh=true before the sink ran
    lake_latest: pa.Table  # the same without fresh
    fresh_windows: dict[int, pa.Table]  # BHP 11:00-12:00 Sydney on 11 and 12 March, fresh=true, before the sink
    lake_windows: dict[int, pa.Table]
    caught_up: list[str]


def _window(day: int) -> tuple[datetime, datetime]:
    start = datetime(2014, 3, day, 11, tzinfo=SYDNEY).astimezone(UTC)
    return start, start + timedelta(hours=1)


@pytest.fixture(scope="module")
def story(
    asx_sample: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Story]:
    root = tmp_path_factory.mktemp("asx-research")
    with pytest.MonkeyPatch.context() as mp:
        settings = isolated_settings(root / "k2home", mp, request)
        with Stack(settings) as endpoints:
            load(AsxSource(first_load_copy(asx_sample, root / "first-two-days")), settings, QUIET)
            with QueryEngine(open_catalog(settings)) as engine:
                first_snapshot = engine.snapshot_ids["trades_v2"]
            first_loaded_at = datetime.now(UTC)
            _recon, produced = produce(AsxSource(asx_sample), settings, endpoints, QUIET)  # not sunk yet

            key = create_key(settings, "research")
            fresh_windows, lake_windows, caught_up = {}, {}, []
            with (
                serving(settings, FAST) as server,
                httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=60) as http,
            ):
                latest = {"n": 1000, "format": "arrow"}
                response = http.get("/v1/trades/latest", params={**latest, "fresh": "true"})
                fresh_latest = _arrow(response)
                caught_up.append(response.headers["X-K2-Fresh-Caught-Up"])
                lake_latest = _arrow(http.get("/v1/trades/latest", params=latest))
                for day in (11, 12):
                    start, end = _window(day)
                    params = {"symbols": "BHP", "start": start.isoformat(), "end": end.isoformat(), "limit": 10_000}
                    response = http.get("/v1/trades", params={**params, "format": "arrow", "fresh": "true"})
                    fresh_windows[day] = _arrow(response)
                    caught_up.append(response.headers["X-K2-Fresh-Caught-Up"])
                    lake_windows[day] = _arrow(http.get("/v1/trades", params={**params, "format": "arrow"}))

            # The later load: the sink lands the week (the first two days again, deduplicated).
            targets = dict(produced.end_offsets)
            registry = RegistryClient(endpoints.registry_url)
            sink = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings))
            sink.run(until=lambda _s: all_committed(endpoints.bootstrap, settings.sink_group, targets))
            registry.close()
        yield Story(
            settings,
            asx_sample,
            first_snapshot,
            first_loaded_at,
            fresh_latest,
            lake_latest,
            fresh_windows,
            lake_windows,
            caught_up,
        )


def test_fresh_reads_see_records_produced_but_not_yet_committed_each_once(story: Story) -> None:
    assert story.caught_up == ["true", "true", "true"]
    for day in (11, 12):
        start, end = _window(day)
        expected = [r for r in raw_trades(story.sample / "trades" / "7078.csv") if start <= r.timestamp < end]
        assert len(expected) > 500
        fresh = story.fresh_windows[day]
        assert _as_raw(fresh) == _expect(expected)  # every raw trade, in event order
        assert len(set(fresh["message_id"].to_pylist())) == fresh.num_rows  # each once
    # 11 March was in the lake already (and twice in Kafka); 12 March only in Kafka.
    assert story.lake_windows[11].num_rows == story.fresh_windows[11].num_rows
    assert story.lake_windows[12].num_rows == 0


def test_fresh_latest_trades_are_the_newest_of_the_whole_week(story: Story) -> None:
    for path in sorted((story.sample / "trades").glob("*.csv")):
        symbol = COMPANY_SYMBOLS[path.stem]
        newest = raw_trades(path)[-1000:]
        fresh = story.fresh_latest.filter(pc.equal(story.fresh_latest["symbol"], symbol))
        assert _as_raw(fresh) == _expect(newest), symbol
        lake = story.lake_latest.filter(pc.equal(story.lake_latest["symbol"], symbol))
        later_load = sydney_day(12)[0]
        assert newest[-1].timestamp >= later_load > max(lake["timestamp"].to_pylist())  # the lake stopped on 11 March


def test_a_read_as_of_the_first_load_returns_exactly_the_first_load(story: Story) -> None:
    first_days = [sydney_day(10), sydney_day(11)]
    with QueryEngine(open_catalog(story.settings)) as engine:
        for as_of in (story.first_snapshot, story.first_loaded_at):
            then = events(engine, "trades", "BHP", None, None, as_of=as_of)
            expected = [r for r in raw_trades(story.sample / "trades" / "7078.csv") if r.timestamp < first_days[1][1]]
            assert _as_raw(then) == _expect(expected)
        now = events(engine, "trades", "BHP", None, None)
        assert _as_raw(now) == _expect(raw_trades(story.sample / "trades" / "7078.csv"))
        assert now.num_rows == 91_631
        assert engine.snapshot_ids["trades_v2"] != story.first_snapshot


def test_as_of_join_gives_each_bhp_trade_its_prevailing_quote(story: Story) -> None:
    start, end = sydney_day(12)
    # Stable sort: quotes at the same instant keep file order, so the last one at or before a trade is the later line.
    quotes = sorted(raw_quotes(story.sample / "quotes" / "7078.csv"), key=lambda q: q[0])
    instants = [q[0] for q in quotes]
    trades = raw_trades(story.sample / "trades" / "7078.csv", "03/12/2014")
    expected = []
    for trade in trades:
        at = bisect.bisect_right(instants, trade.timestamp)
        expected.append(quotes[at - 1][1:] if at else (None, None))
    with QueryEngine(open_catalog(story.settings)) as engine:
        joined = trades_with_quotes(engine, "BHP", start, end)
    assert _as_raw(joined) == _expect(trades)
    got = list(zip(joined["bid_price"].to_pylist(), joined["ask_price"].to_pylist(), strict=True))
    assert got == expected
    assert sum(1 for bid, ask in got if bid is not None and ask is not None) > len(trades) // 2


def test_replay_returns_exactly_the_raw_rows_in_event_order(story: Story) -> None:
    start, end = sydney_day(13)
    with QueryEngine(open_catalog(story.settings)) as engine:
        batches = list(replay(engine, "trades", "BHP", start, end, batch_rows=997))
    replayed = pa.Table.from_batches([batch.records for batch in batches])
    expected = raw_trades(story.sample / "trades" / "7078.csv", "03/13/2014")
    assert len(expected) == 16_309
    assert _as_raw(replayed) == _expect(expected)
    assert len(batches) == -(-len(expected) // 997)
