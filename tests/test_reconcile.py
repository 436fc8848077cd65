"""Reconciliation arithmetic: what a run sent, rejected and skipped must add up to what it read."""

from __future__ import annotations

from collections import Counter

from rich.console import Console

from k2.core.batch import Reject, SourceBatch
from k2.ingest.reconcile import Reconciliation
from k2.schema import TRADES_V2
from k2.schema.fields import STREAM_GAPS, AssetClass


def test_count_sent_keeps_records_rejects_and_gap_rows_apart() -> None:
    recon = Reconciliation("test", read=5)
    bad = Reject("bad_price", "price 'x' on line 3", b"x", "file.csv", 3)
    recon.count_sent(SourceBatch(TRADES_V2, AssetClass.CRYPTO, "binance", records=[{}, {}, {}], rejects=[bad, bad]))
    recon.count_sent(SourceBatch(STREAM_GAPS, AssetClass.CRYPTO, "binance", records=[{}]))
    assert (recon.produced, recon.gap_records, recon.sent) == (3, 1, 4)
    assert recon.rejected == Counter({"bad_price": 2})
    assert recon.source_balanced  # read 5 = produced 3 + rejected 2; the gap row is K2's own, never "read"


def test_reasons_and_names_from_the_data_print_as_they_are() -> None:
    recon = Reconciliation("files in [data]", read=3, seconds=1.0)
    recon.rejected.update({"bad_field:a": 2, "bad_field:x": 1})
    recon.empty_files.append("[empty].csv")
    console = Console(record=True, width=200)
    recon.render(console)
    text = console.export_text()
    assert "Reconciliation — files in [data] (1.00 s, 3 records/s)" in text
    assert "rejected 3 (bad_field:a: 2, bad_field:x: 1)" in text  # not 🅰 or ❌
    assert "[empty].csv: no records" in text


def test_a_balanced_run_that_rejected_every_row_is_not_ok() -> None:
    recon = Reconciliation("file", read=3, landed=True)
    recon.rejected.update({"unknown_symbol": 3})
    assert recon.source_balanced and not recon.ok
    assert recon.verdict().startswith("every one of the 3 rows read was rejected (unknown_symbol: 3)")
    fine = Reconciliation("file", read=3, produced=2, landed=True)
    fine.rejected.update({"unknown_symbol": 1})
    assert fine.ok and fine.verdict() == "OK: every record accounted for"
