"""Order-book rows through the real broker, registry and sink into the lake, and the book read back from it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.ingest.pipeline import load
from k2.lake.catalog import open_catalog
from k2.query.book import book_at
from k2.query.engine import QueryEngine
from k2.schema.fields import BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2, AssetClass
from k2.sources.binance.book import DepthDiff
from k2.sources.binance.normalize_book import book_snapshot_records, book_update_records
from tests.integration.helpers import assert_k2_book_at_the_last_btcusdt_update_is_the_oracles, lake_query
from tests.sources.book_captures import CAPTURES, depth_events
from tests.sources.book_oracle import read_depth, replay

pytestmark = pytest.mark.integration
runner = CliRunner()


class CaptureBooks:
    """The 2021-10-12 capture's depth diffs and REST snapshots as book rows (what a depth-recording source yields)."""

    def describe(self) -> str:
        return "2021-10-12 capture depth"

    def check(self) -> None:
        pass

    def batches(self) -> Iterator[SourceBatch]:
        events = depth_events("2021-10-12")
        updates = [row for e in events if isinstance(e, DepthDiff) for row in book_update_records(e)]
        snapshots = [row for e in events if not isinstance(e, DepthDiff) for row in book_snapshot_records(e)]
        for spec, rows in ((BOOK_SNAPSHOTS_V2, snapshots), (BOOK_UPDATES_V2, updates)):
            yield SourceBatch(spec, AssetClass.CRYPTO, "binance", records=rows, rows_read=len(rows))


def test_book_rows_land_in_their_tables_and_book_at_reads_back_the_oracles_books(settings: Settings) -> None:
    recon = load(CaptureBooks(), settings)
    assert recon.ok, recon
    assert dict(recon.sink.written) == {"book_snapshots_v2": 4_648, "book_updates_v2": 422}
    diffs, snapshots = read_depth(*CAPTURES["2021-10-12"])
    with QueryEngine(open_catalog(settings)) as engine:
        for symbol, (snapshot,) in snapshots.items():
            *_, (last, bids, asks) = replay(snapshot, diffs[symbol])
            book = book_at(engine, symbol, last.event_ms * 1000 + 1_000_000, 100_000, exchange="binance")
            assert book.bids == sorted(bids.items(), reverse=True) and book.asks == sorted(asks.items()), symbol
            assert book.exact and book.last_update_id == last.last


def test_k2_load_capture_records_the_books_and_k2_book_reads_the_last_one(settings: Settings) -> None:
    (path,) = CAPTURES["2021-04-04"]
    loaded = runner.invoke(app, ["load", "capture", str(path)])
    assert loaded.exit_code == 0, loaded.output  # reconciled: read = written + rejected, all in the lake
    lines = [" ".join(line.split()) for line in loaded.stdout.splitlines()]
    # 6,133 of the rows are the books' checkpoints at 20:04:00 (K2_BOOK_CHECKPOINT_SECONDS 60): 3 symbols' books
    assert "read 42,483 = produced 42,483 + rejected 0 (none)" in lines
    assert "market_data.book_updates_v2: written 28,440, already in lake 0" in lines
    assert "market_data.book_snapshots_v2: written 12,133, already in lake 0" in lines
    counts = lake_query(
        settings,
        "SELECT 'updates', count(*), count(DISTINCT message_id) FROM market_data.book_updates_v2"
        " UNION ALL SELECT 'snapshots', count(*), count(DISTINCT message_id) FROM market_data.book_snapshots_v2"
        " UNION ALL SELECT 'trades', count(*), count(DISTINCT message_id) FROM market_data.trades_v2 ORDER BY 1",
    )
    assert counts == [("snapshots", 12_133, 12_133), ("trades", 1_910, 1_910), ("updates", 28_440, 28_440)]

    assert_k2_book_at_the_last_btcusdt_update_is_the_oracles(path)
