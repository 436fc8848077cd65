"""Shared pieces of the benchmark suite: the result row, timing helpers, data paths, machine facts.

Every benchmark module exposes `rows(quick: bool) -> list[Row]` and can be run alone
(`python bench/bench_sink.py [--quick] [--json]`); `bench/run.py` runs each in its own process (so peak memory and
leftover threads of one do not leak into the next) and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from k2.samples import ASX_SAMPLE

REPO = Path(__file__).resolve().parents[1]
JSON_MARK = "K2-BENCH-ROWS "  # the line run.py reads from a module's stdout


@dataclass
class Row:
    """One line of the suite's table. `ratio` > 1 always means K2 is better than the baseline."""

    benchmark: str
    k2: str  # K2's median (or p50/p99), formatted with its unit
    baseline_name: str
    baseline: str
    ratio: float | None
    goal: str
    reached: bool | None  # None: not measured (skipped or failed)
    note: str = ""


def skipped(benchmark: str, goal: str, why: str, baseline_name: str = "-") -> Row:
    return Row(benchmark, "skipped", baseline_name, "-", None, goal, None, why)


def rate(n: int, seconds: float) -> str:
    value = n / seconds
    return f"{value / 1e6:.2f}M/s" if value >= 1e6 else f"{value / 1e3:.0f}k/s"


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(k2: Callable[[], float], baseline: Callable[[], float], runs: int) -> tuple[list[float], list[float]]:
    """Run baseline and K2 alternately (`runs` each) so both see the same machine load; each returns seconds."""
    k2_times, base_times = [], []
    for _ in range(runs):
        base_times.append(baseline())
        k2_times.append(k2())
    return k2_times, base_times


@contextmanager
def temp_home(prefix: str) -> Iterator[Path]:
    """A throwaway K2_HOME, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"k2-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def asx_sample(quick: bool, lines: int = 5_000) -> Iterator[Path]:
    """The real ASX sample; in quick mode a copy holding the first `lines` rows of each tick file (same reference
    data), so a quick run still goes through every code path on real rows."""
    if not quick:
        yield ASX_SAMPLE
        return
    with temp_home("asx-quick") as root:
        (root / "reference-data").symlink_to(ASX_SAMPLE / "reference-data")
        for kind in ("trades", "quotes"):
            (root / kind).mkdir()
            for path in sorted((ASX_SAMPLE / kind).glob("*.csv")):
                with path.open("rb") as f:
                    head = [line for _, line in zip(range(lines), f, strict=False)]
                (root / kind / path.name).write_bytes(b"".join(head))
        yield root


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, str]:
    """What RESULTS.md records about the machine a run happened on."""
    memory = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line for line in f if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main_for(rows: Callable[[bool], list[Row]], doc: str | None) -> None:
    """The command line every benchmark module shares: `--quick`, and `--json` for run.py."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON line (for run.py)")
    args = parser.parse_args()
    from k2.logs import configure_logging  # warnings only, to stderr: the product's default

    configure_logging()
    result = rows(args.quick)
    if args.json:
        print(JSON_MARK + json.dumps([asdict(r) for r in result]), flush=True)
        return
    for r in result:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        reached = {True: "yes", False: "no", None: "-"}[r.reached]
        print(f"{r.benchmark}: k2 {r.k2} | {r.baseline_name} {r.baseline} | {ratio} | goal {r.goal}: {reached}")
        if r.note:
            print(f"    {r.note}")
