"""Reconciliation arithmetic: what a run sent, rejected and skipped must add up to what it read."""

from __future__ import annotations

from collections import Counter

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
