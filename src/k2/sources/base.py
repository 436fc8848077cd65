"""The one small interface every source adapter implements.

A source turns outside bytes into V2 records and knows nothing of Kafka or Iceberg. It yields `SourceBatch`es
(k2.core.batch): records ready for the bus, plus every row it could not use as a `Reject`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from k2.core.batch import SourceBatch


class Source(Protocol):
    """Anything that yields SourceBatches. `describe()` names it in logs and reconciliation output; `check()`
    raises k2.core.errors.UserError when the source cannot be read at all (a wrong folder, a corrupt download), and
    runs before any broker or sink starts, so such a mistake costs one line and nothing else."""

    def batches(self) -> Iterator[SourceBatch]: ...

    def describe(self) -> str: ...

    def check(self) -> None: ...
