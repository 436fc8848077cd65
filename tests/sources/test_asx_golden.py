"""The ASX loader's output on the whole real sample is pinned, record for record.

`golden/asx-sample.json` holds digests of every record as the per-row parser of November 2026 produced it (in
chunks of `CHUNK` records per kind, so a mismatch names the stretch to look at). Each record enters its digest as
`repr()` of the whole dict, which pins key order, map order, value types and each Decimal's exponent, with
`ingestion_timestamp` (the clock) set to 0. Regenerate only for an intended change of the records:
`.venv/bin/python -m tests.sources.test_asx_golden`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from k2.samples import ASX_SAMPLE as SAMPLE
from k2.sources.asx import AsxSource

GOLDEN = Path(__file__).parent / "golden" / "asx-sample.json"
CHUNK = 5_000


def digests(directory: Path = SAMPLE) -> dict[str, Any]:
    """Per record kind: record count, reject count and one 16-hex-digit digest per `CHUNK` records."""
    out: dict[str, Any] = {}
    hashers: dict[str, Any] = {}
    # The row parser's own records (the columnar path is checked against it file by file in test_asx_columnar).
    source = AsxSource(directory, chunk_rows=7_777, columnar=False)  # an odd chunk size: batch edges must not matter
    for batch in source.batches():
        kind = out.setdefault(batch.spec.name, {"records": 0, "rejects": 0, "chunks": []})
        kind["rejects"] += len(batch.rejects)
        for record in batch.records:
            if kind["records"] % CHUNK == 0:
                hashers[batch.spec.name] = hashlib.sha256()
                kind["chunks"].append("")
            hasher = hashers[batch.spec.name]
            hasher.update(repr({**record, "ingestion_timestamp": 0}).encode())
            kind["chunks"][-1] = hasher.hexdigest()[:16]
            kind["records"] += 1
    return out


def test_every_sample_record_is_exactly_what_the_golden_digests_pin() -> None:
    golden = json.loads(GOLDEN.read_text())
    actual = digests()
    for name, expected in golden.items():
        got = actual[name]
        assert (got["records"], got["rejects"]) == (expected["records"], expected["rejects"]), name
        wrong = [i for i, (a, b) in enumerate(zip(got["chunks"], expected["chunks"], strict=True)) if a != b]
        assert not wrong, f"{name}: records {[(i * CHUNK, (i + 1) * CHUNK) for i in wrong][:5]} differ"
    assert actual.keys() == golden.keys()


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(digests(), indent=1) + "\n")
