"""IdSet: exact membership of many message_ids at once, whatever the hashes do."""

from __future__ import annotations

import random
import uuid

import numpy as np
import pyarrow as pa
import pytest

from k2.lake import dedup
from k2.lake.dedup import IdSet


def ids(texts: list[str]) -> pa.Array:
    return pa.array(texts, pa.string())


def test_membership_after_many_batches_and_merges() -> None:
    rng = random.Random(7)
    stored: set[str] = set()
    index = IdSet()
    for size in [1, 5, 100, 3, 2_000, 17, 1, 640, 4_096, 12]:
        batch = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(size)]
        index.add(ids(batch))
        stored.update(batch)
    probe = rng.sample(sorted(stored), 500) + [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(500)]

    assert index.contains(ids(probe)).tolist() == [p in stored for p in probe]
    assert len(index) == len(stored) == 6_875
    assert len(index._runs) <= 4  # merged as it grew


def test_colliding_hashes_never_pass_for_a_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every id hashes to one of 3 values: each lookup meets thousands of equal hashes and must compare the ids.
    real = dedup.hash64
    monkeypatch.setattr(dedup, "hash64", lambda values: real(values) % np.uint64(3))
    index = IdSet(ids([f"t-{k}" for k in range(0, 3_000, 2)]))  # even numbers
    index.add(ids(["t-3001", "t-3003"]))

    probe = [f"t-{k}" for k in range(0, 3_010)]
    assert index.contains(ids(probe)).tolist() == [
        (k % 2 == 0 and k < 3_000) or k in (3_001, 3_003) for k in range(3_010)
    ]


def test_empty_set_and_empty_batch() -> None:
    assert IdSet().contains(ids(["a"])).tolist() == [False]
    assert IdSet(ids(["a"])).contains(ids([])).tolist() == []
    index = IdSet(ids(["a", "a"]))  # the same id twice is harmless
    assert index.contains(ids(["a", "b"])).tolist() == [True, False]
