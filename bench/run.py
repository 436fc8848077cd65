"""K2 benchmark suite (issue #6): every benchmark, one table of medians and ratios against baselines from the same run.

Rows (each module's docstring says exactly what it measures):
  1 bench_sink.py           sink Kafka → committed Iceberg vs the naive per-message fastavro loop
  2 bench_source.py         ASX parse + Avro encode + produce vs a naive csv/fastavro producer
  3 bench_load.py           ASX sample end to end (`k2 load asx`) vs naive produce then naive sink
  4 bench_binance_parse.py  Binance frame parse + normalize vs cryptofeed on the same captured frames
  5 bench_arctic.py         query p50/p99 on a 10 M-trade lake vs ArcticDB holding the same data
  6 bench_fresh.py          produce → visible (fresh read vs the API's lake read); peak memory under load
  7 bench_connect.py        K2's sink vs Apache Iceberg's Kafka Connect sink on Apache Kafka: throughput, freshness,
                            peak memory, kill -9 (needs a JDK 17+ and Maven; jars fetched once)
  8 bench_questdb.py        bulk ingest and latest / 1-min bars / as-of join vs a QuestDB server on the same lake
                            (needs a JDK 17+ and Maven; the server jar fetched once)
  9 bench_subscribe.py      live subscriptions: event → subscriber p50/p99 (library, WebSocket) under 20k msgs/s and
                            where the time goes, the fresh REST read at the same load vs the lake-only read; fan-out
  10 bench_book.py          an order book at 1,000 random instants of a 1 M-update symbol-day vs a naive snapshot +
                            Python replay

Ratios are always "how many times better K2 is" (baseline time / K2 time, or K2 rate / baseline rate): > 1 is K2
ahead. Run from the repo root: `make bench` (full, ~15 min: the first run also writes the 10 M-trade lake and its
ArcticDB copy under /tmp) or `make bench-quick` (smaller sizes, single runs, about a minute), i.e.
`python bench/run.py [--quick] [--only sink,fresh,questdb] [--markdown FILE]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from common import JSON_MARK, Row, machine
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
MODULES = {
    "sink": "bench_sink",
    "source": "bench_source",
    "load": "bench_load",
    "binance": "bench_binance_parse",
    "queries": "bench_arctic",
    "fresh": "bench_fresh",
    "connect": "bench_connect",
    "questdb": "bench_questdb",
    "subscribe": "bench_subscribe",
    "book": "bench_book",
}


def run_in_process(module: str, quick: bool) -> list[Row]:
    return importlib.import_module(module).rows(quick)


def run_isolated(module: str, quick: bool) -> list[Row]:
    """The module in its own Python process (its memory, threads and clients end with it); rows from its stdout."""
    command = [sys.executable, str(HERE / f"{module}.py"), "--json", *(["--quick"] if quick else [])]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(JSON_MARK):
            return [Row(**r) for r in json.loads(line[len(JSON_MARK) :])]
    raise RuntimeError(f"{module}.py exited {done.returncode} without results (its stderr is above)")


def failed(name: str, error: BaseException) -> Row:
    return Row(f"{name}: FAILED", "error", "-", "-", None, "-", None, f"{type(error).__name__}: {error}")


def table(rows: list[Row], title: str) -> Table:
    out = Table(title=title, title_justify="left")
    for header, justify in (
        ("benchmark", "left"),
        ("K2 (median)", "right"),
        ("baseline", "left"),
        ("baseline (median)", "right"),
        ("ratio", "right"),
        ("goal", "left"),
        ("reached", "center"),
    ):
        out.add_column(header, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        reached = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[r.reached]
        out.add_row(r.benchmark, r.k2, r.baseline_name, r.baseline, ratio, r.goal, reached)
    return out


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| benchmark | K2 (median) | baseline | baseline (median) | ratio | goal | reached |",
        "|---|---:|---|---:|---:|---|:-:|",
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        reached = {True: "yes", False: "no", None: "-"}[r.reached]
        lines.append(f"| {r.benchmark} | {r.k2} | {r.baseline_name} | {r.baseline} | {ratio} | {r.goal} | {reached} |")
    lines += ["", "Notes:", ""]
    lines += [f"- {r.benchmark}: {r.note}" for r in rows if r.note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, single runs, 1 M-trade lake (~1 min)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(MODULES)}")
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each benchmark in its own process (default: yes for the full run, no for --quick)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown to this file")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; pick from {list(MODULES)}")
    isolate = (not args.quick) if args.isolate is None else args.isolate
    if not isolate:
        from k2.logs import configure_logging

        configure_logging()

    before = machine()
    started = time.perf_counter()
    console = Console(stderr=True)
    rows: list[Row] = []
    for name in names:
        module = MODULES[name]
        console.print(f"[bold]{name}[/bold] ({module}.py)")
        try:
            rows.extend((run_isolated if isolate else run_in_process)(module, args.quick))
        except Exception as exc:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            rows.append(failed(name, exc))
    elapsed = time.perf_counter() - started
    after = machine()
    mode = "quick" if args.quick else "full"
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    title = (
        f"K2 benchmarks ({mode}, {elapsed:.0f} s) on {before['cpus']} CPUs / {before['memory']}, Python "
        f"{before['python']}; load average {before['load']} before, {after['load']} after"
    )
    out = Console(width=max(Console().width, 150))
    out.print(table(rows, title))
    for r in rows:
        if r.note:
            out.print(f"  [dim]{r.benchmark}:[/dim] {r.note}", soft_wrap=True)
    if args.markdown:
        header = (
            f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `{command.strip()}`, {mode} mode, "
            f"{elapsed:.0f} s. Machine: {before['cpus']} CPUs ({before['cpu']}), {before['memory']}, "
            f"{before['os']}, Python {before['python']}. Load average (1/5/15 min) {before['load']} before, "
            f"{after['load']} after."
        )
        args.markdown.write_text(markdown(rows, header))
        console.print(f"Markdown written to {args.markdown}")
    if os.environ.get("K2_BENCH_JSON"):
        Path(os.environ["K2_BENCH_JSON"]).write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
