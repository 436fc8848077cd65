"""The `k2` command."""

from __future__ import annotations

import signal
import sys
import threading
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from k2.config import Settings
from k2.logs import configure_logging

app = typer.Typer(help="K2 market data platform: exchanges → Kafka → Iceberg → DuckDB.", no_args_is_help=True)
load_app = typer.Typer(help="Load data from a source through Kafka into the lake.", no_args_is_help=True)
app.add_typer(load_app, name="load")

err = Console(stderr=True)
out = Console()


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (structured) to stderr."),
) -> None:
    configure_logging(verbose)


@load_app.command("asx")
def load_asx(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder with trades/, quotes/, ..."),
) -> None:
    """Load ASX trades, quotes and reference data; print the reconciliation; exit 1 if anything is unaccounted."""
    from k2.pipeline import load
    from k2.sources.asx import AsxSource

    recon = load(AsxSource(directory), Settings(), err)
    recon.render(Console(soft_wrap=True))
    raise typer.Exit(0 if recon.ok else 1)


@app.command()
def sql(
    query: str = typer.Argument(..., help="DuckDB SQL over market_data.trades_v2, quotes_v2, reference_data_v2"),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, csv or json"),
) -> None:
    """Run a SQL query over the Iceberg tables (decimals exact, timestamps in UTC)."""
    from k2.lake.catalog import open_catalog
    from k2.query.engine import QueryEngine, QueryError
    from k2.query.formats import print_table, write_csv, write_json

    try:
        with QueryEngine(open_catalog(Settings())) as engine:
            result = engine.sql(query)
    except QueryError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if fmt is OutputFormat.csv:
        write_csv(result, sys.stdout)
    elif fmt is OutputFormat.json:
        write_json(result, sys.stdout)
    else:
        print_table(result, out)


@app.command()
def sink(
    group: str = typer.Option(None, help="Consumer group (default: K2_SINK_GROUP or k2-sink)"),
) -> None:
    """Run a sink worker: market.* topics → Iceberg, exactly once, until SIGTERM/Ctrl-C (then commit, exit)."""
    from k2.bus.registry_client import RegistryClient
    from k2.bus.stack import running_stack
    from k2.lake.catalog import open_catalog
    from k2.lake.sink import IcebergSink

    settings = Settings(sink_group=group) if group else Settings()
    shared = running_stack(settings)
    bootstrap = settings.kafka_bootstrap or (shared.bootstrap if shared else None)
    registry_url = settings.schema_registry_url or (shared.registry_url if shared else None)
    if not bootstrap or not registry_url:
        err.print(
            "[red]error:[/red] no Kafka/registry to read from: start the stack with `k2 stack` on this K2_HOME, "
            "or set K2_KAFKA_BOOTSTRAP and K2_SCHEMA_REGISTRY_URL."
        )
        raise typer.Exit(2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker = IcebergSink(settings, bootstrap, RegistryClient(registry_url), open_catalog(settings))
    stats = worker.run(stop=stop)
    err.print(f"sink stopped: consumed {stats.consumed:,}, written {dict(stats.written)}, commits {stats.commits}")


@app.command()
def stack() -> None:
    """Run the embedded broker and registry for this K2_HOME in the foreground until Ctrl-C/SIGTERM."""
    from k2.bus.stack import Stack

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Stack(Settings()) as endpoints:
        out.print(f"Kafka bootstrap: {endpoints.bootstrap}\nSchema registry: {endpoints.registry_url}")
        out.print("Ctrl-C stops both.")
        while not stop.wait(0.5):
            pass


if __name__ == "__main__":
    app()
