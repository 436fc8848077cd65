"""The reconciliation every ingestion run ends with: every record read is written, already stored, or rejected."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

from k2.core.batch import SourceBatch
from k2.lake.sink import SinkStats
from k2.schema.fields import STREAM_GAPS


class LoadTimeoutError(RuntimeError):
    pass


@dataclass
class Reconciliation:
    source: str
    read: int = 0
    produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by the source, per reason (all in DLQ)
    sink: SinkStats | None = None
    landed: bool = False  # every produced offset committed by the sink group
    seconds: float = 0.0
    empty_files: list[str] = field(default_factory=list)
    # read but not records by design: duplicate frames of a reconnect overlap, subscription acks, depth events
    skipped: Counter[str] = field(default_factory=Counter)
    # records K2 derives itself and sends alongside (stream_gaps audit rows): not read, but landed like the rest
    gap_records: int = 0

    def count_sent(self, batch: SourceBatch) -> None:
        """Account for a batch handed to the producer: its records (K2's own gap rows apart) and its rejects."""
        if batch.spec is STREAM_GAPS:
            self.gap_records += batch.record_count
            return
        self.produced += batch.record_count
        self.rejected.update(r.reason for r in batch.rejects)

    @property
    def sent(self) -> int:
        return self.produced + self.gap_records

    @property
    def source_balanced(self) -> bool:
        return self.read == self.produced + sum(self.rejected.values()) + sum(self.skipped.values())

    @property
    def sink_balanced(self) -> bool:
        # Only checkable when this run's own sink consumed exactly what this run produced.
        return self.sink is None or self.sink.consumed != self.sent or self.sink.accounted == self.sent

    @property
    def ok(self) -> bool:
        return self.landed and self.source_balanced and self.sink_balanced and not self.nothing_usable

    @property
    def nothing_usable(self) -> bool:
        """Rows were read and every one was rejected: balanced, and still a failed load."""
        return self.read > 0 and self.produced == 0 and sum(self.rejected.values()) == self.read

    def verdict(self) -> str:
        """The run's outcome in one line, without markup."""
        if self.nothing_usable:
            reasons = ", ".join(f"{r}: {n:,}" for r, n in self.rejected.most_common(3))
            return (
                f"every one of the {self.read:,} rows read was rejected ({reasons}); nothing was loaded; the rows"
                " are kept in the dlq.* topics with their reasons"
            )
        if self.ok:
            return "OK: every record accounted for"
        return "MISMATCH: records unaccounted for (see above)"

    def render(self, console: Console) -> None:
        # Reasons, names and descriptions come from data: print them as they are (`bad_field:a` is not an emoji,
        # `[x]` not markup).
        def say(text: str) -> None:
            console.print(text, emoji=False)

        rate = self.read / self.seconds if self.seconds else 0.0
        say(f"[bold]Reconciliation[/bold] — {escape(self.source)} ({self.seconds:.2f} s, {rate:,.0f} records/s)")
        rejected = sum(self.rejected.values())
        by_reason = ", ".join(f"{escape(r)}: {n:,}" for r, n in sorted(self.rejected.items())) or "none"
        skipped = ""
        if self.skipped:
            parts = ", ".join(f"{escape(r)}: {n:,}" for r, n in sorted(self.skipped.items()))
            skipped = f" + skipped {sum(self.skipped.values()):,} ({parts})"
        say(f"  read {self.read:,} = produced {self.produced:,} + rejected {rejected:,} ({by_reason}){skipped}")
        if self.sink is not None and self.sink.consumed == self.sent:
            s = self.sink
            sink_rejected = sum(s.rejected.values())
            sent = f"produced {self.produced:,}" + (f" + gap records {self.gap_records:,}" if self.gap_records else "")
            say(
                f"  {sent} = written {sum(s.written.values()):,}"
                f" + already in lake {sum(s.duplicates.values()):,} + rejected by sink {sink_rejected:,}"
            )
            for table in sorted(set(s.written) | set(s.duplicates)):
                say(f"    market_data.{table}: written {s.written[table]:,}, already in lake {s.duplicates[table]:,}")
            for reason, n in sorted(s.rejected.items()):
                say(f"    rejected by sink, {escape(reason)}: {n:,} (kept in dlq.* topics)")
        for name in self.empty_files:
            say(f"  {escape(name)}: no records (the file says so)")
        colour = "green" if self.ok else "red"
        say(f"  [{colour}]{escape(self.verdict())}[/{colour}]; landed in the lake: {'yes' if self.landed else 'NO'}")
