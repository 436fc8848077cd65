"""The `k2` command."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from k2.config import BrokerKind, Settings, describe_errors, settings_table
from k2.core.errors import UserError
from k2.logs import configure_logging
from k2.sources.binance.capture import ReplayClock

if TYPE_CHECKING:
    from k2.ingest.reconcile import Reconciliation
    from k2.sources.binance.symbols import SymbolDirectory

err = Console(stderr=True)
out = Console()


def _for_the_user(exc: Exception) -> bool:
    """A mistake the user fixes (k2.core.errors.UserError) or a refusal they answer for: a login Kafka or the
    registry refused, an untrusted certificate, a missing ACL."""
    from k2.bus.clients import KafkaAccessError  # imported when needed: most commands never touch Kafka
    from k2.bus.registry_client import RegistryError

    return isinstance(exc, UserError | KafkaAccessError | RegistryError)


class _K2Command(TyperGroup):
    """`k2` itself: a user's mistake or a refused login anywhere below is one line on stderr (secrets redacted) and
    exit code 2, not a traceback (`k2 --debug ...` lets it through)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if ctx.params.get("debug") or not _for_the_user(exc):
                raise
            from k2.redact import redact

            err.print(f"error: {redact(str(exc))}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_K2Command, help="K2 market data platform: exchanges → Kafka → Iceberg → DuckDB.", no_args_is_help=True
)
load_app = typer.Typer(help="Load data from a source through Kafka into the lake.", no_args_is_help=True)
app.add_typer(load_app, name="load")
stream_app = typer.Typer(help="Stream live market data through Kafka into the lake.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")
keys_app = typer.Typer(help="API keys for `k2 serve` (stored hashed under K2_HOME).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
emulate_app = typer.Typer(
    help="Run a local exchange emulator (live venues are unreachable here).", no_args_is_help=True
)
app.add_typer(emulate_app, name="emulate")


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (structured) to stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback behind a one-line error."),
) -> None:
    # Every command reads the same K2_* settings: a malformed one is one clear line here, not a traceback later.
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        for line in describe_errors(exc):
            err.print(f"error: {line}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    configure_logging(verbose, settings.log)


@app.command("settings")
def show_settings(
    markdown: bool = typer.Option(False, "--markdown", help="Print the table of every variable (README.md's)."),
) -> None:
    """The effective K2_* settings of this environment, secrets masked; --markdown: every variable documented."""
    if markdown:
        out.print(settings_table(), markup=False, end="")
        return
    out.print(repr(Settings()), markup=False, soft_wrap=True)


@load_app.command("asx")
def load_asx(
    directory: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder with trades/, quotes/, ..."),
) -> None:
    """Load ASX trades, quotes and reference data; print the reconciliation; exit 1 if anything is unaccounted."""
    from k2.ingest.pipeline import load
    from k2.sources.asx.source import AsxSource

    _finish_load(load(AsxSource(directory), Settings(), err))


_EXCHANGE_INFO = typer.Option(
    None,
    exists=True,
    dir_okay=False,
    help="A saved GET /api/v3/exchangeInfo response (.json or .json.gz) naming each symbol's quote asset"
    " (default: the 2021-10-12 response shipped in data/samples)",
)


def _binance_symbols(exchange_info: Path | None) -> SymbolDirectory:
    """The symbol metadata a Binance load resolves currencies with: `--exchange-info` or the shipped response."""
    from k2.sources.binance.symbols import SymbolDirectory, shipped_directory

    try:
        return SymbolDirectory.from_file(exchange_info) if exchange_info else shipped_directory()
    except ValueError as exc:
        raise UserError(f"--exchange-info: {exc}") from None


@load_app.command("binance-files")
def load_binance_files(
    paths: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="data.binance.vision CSV or zip files"),
    exchange_info: Path = _EXCHANGE_INFO,
) -> None:
    """Load Binance public-data files (trades, aggTrades, klines, futures bookTicker and bookDepth; .CHECKSUM
    verified when present)."""
    from k2.ingest.pipeline import load
    from k2.sources.binance.files import BinanceFileSource

    _finish_load(load(BinanceFileSource(paths, symbols=_binance_symbols(exchange_info)), Settings(), err))


@load_app.command("capture")
def load_capture(
    paths: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Recorded cryptofeed capture files"),
    exchange_info: Path = _EXCHANGE_INFO,
) -> None:
    """Load the trades, quotes and order books (depth diffs, REST snapshots) of recorded Binance captures."""
    from k2.ingest.pipeline import load
    from k2.sources.binance.capture_source import CaptureSource

    settings = Settings()
    source = CaptureSource(
        paths, symbols=_binance_symbols(exchange_info), book_checkpoint_us=settings.book_checkpoint_us
    )
    _finish_load(load(source, settings, err))


def _finish_load(recon: Reconciliation) -> None:
    """Print the reconciliation; exit 1 when something is unaccounted for or nothing usable was read."""
    recon.render(Console(soft_wrap=True))
    if recon.nothing_usable:
        err.print(f"error: {recon.verdict()}", markup=False, soft_wrap=True)
    raise typer.Exit(0 if recon.ok else 1)


_METRICS_PORT = typer.Option(None, help="Serve Prometheus /metrics of this process on 127.0.0.1:PORT")


def _serve_metrics(port: int | None) -> None:
    if port is not None:
        from k2.core.metrics import serve_metrics

        serve_metrics(port)
        err.print(f"metrics: http://127.0.0.1:{port}/metrics")


@stream_app.command("binance")
def stream_binance_cmd(
    symbols: str = typer.Option("BTCUSDT,ETHUSDT", help="Comma-separated symbols"),
    channels: str = typer.Option(
        "trade,aggTrade,bookTicker",
        help="Comma-separated: trade, aggTrade, bookTicker, depth or depth@100ms (order books: diffs every 1000 or"
        " 100 ms, with REST snapshots), depth5, depth10 or depth20 (each also @100ms: the top levels, stored as partial"
        " snapshots)",
    ),
    endpoint: str = typer.Option(None, help="WebSocket base, e.g. ws://127.0.0.1:9443 (default: Binance)"),
    rest_endpoint: str = typer.Option(None, help="REST base, e.g. http://127.0.0.1:9444 (default: Binance)"),
    duration: float = typer.Option(None, help="Stop after this many seconds (default: until SIGTERM/Ctrl-C)"),
    metrics_port: int = _METRICS_PORT,
) -> None:
    """Stream Binance spot trades, quotes and order books; on stop, flush and return once everything produced is in
    the lake."""
    _serve_metrics(metrics_port)
    from k2.ingest.streaming import stream_binance
    from k2.sources.binance.client import DEFAULT_REST_ENDPOINT, DEFAULT_WS_ENDPOINT

    recon, live = stream_binance(
        Settings(),
        [s.strip().upper() for s in symbols.split(",") if s.strip()],
        [c.strip() for c in channels.split(",") if c.strip()],
        endpoint or DEFAULT_WS_ENDPOINT,
        rest_endpoint or DEFAULT_REST_ENDPOINT,
        duration,
        console=err,
    )
    recon.render(Console(soft_wrap=True))
    gaps = live.stats.gaps
    filled = sum(1 for g in gaps if g.status == "filled")
    out.print(f"  gaps: {len(gaps)} found, {filled} filled from REST, {len(gaps) - filled} not (fully) recoverable")
    raise typer.Exit(0 if recon.ok else 1)


@emulate_app.command("binance")
def emulate_binance(
    capture: list[Path] = typer.Option([], exists=True, dir_okay=False, help="Recorded capture file (repeatable)"),
    speed: float = typer.Option(1.0, help="Replay speed factor; 0 = as fast as possible"),
    clock: ReplayClock = typer.Option(
        ReplayClock.NOW, help="now: re-base each capture's times to when its replay starts; recorded: as recorded"
    ),
    port: int = typer.Option(9443, help="WebSocket port; REST listens on port + 1"),
    synthetic: bool = typer.Option(False, help="Serve a synthetic market too"),
    symbol_count: int = typer.Option(3, "--symbols", help="Synthetic symbols"),
    rate: float = typer.Option(100.0, help="Synthetic frames per second"),
    faults: str = typer.Option(
        "",
        help="Faults to inject, comma-separated: drop, duplicate, reorder, malformed (per-frame probabilities),"
        " disconnect-every, stall-every, stall-seconds, shutdown-after (seconds; serverShutdown), seed, streams"
        " (kinds joined by +), e.g. drop=0.01,disconnect-every=30,streams=aggTrade",
    ),
    exchange_info: Path = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="A saved GET /api/v3/exchangeInfo response (.json or .json.gz) to serve, e.g. a full one for captures"
        " of symbols the shipped 2021-10-12 excerpt does not list",
    ),
    metrics_port: int = _METRICS_PORT,
) -> None:
    """Serve the Binance spot WebSocket + REST API on 127.0.0.1 from captures or synthetic traffic."""
    from k2.sources.binance.emulator.faults import FaultSpec
    from k2.sources.binance.emulator.server import main as emulator_main

    FaultSpec.parse(faults)  # a mistake is one line here, before anything starts
    argv = ["--speed", str(speed), "--port", str(port), "--symbols", str(symbol_count), "--rate", str(rate)]
    argv += ["--faults", faults, "--clock", clock.value]
    if exchange_info is not None:
        _binance_symbols(exchange_info)  # not an exchangeInfo response: one line, before anything starts
        argv += ["--exchange-info", str(exchange_info)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    for path in capture:
        argv += ["--capture", str(path)]
    if synthetic:
        argv.append("--synthetic")
    raise typer.Exit(emulator_main(argv))


@app.command()
def sql(
    query: str = typer.Argument(..., help="DuckDB SQL over market_data.trades_v2, quotes_v2, reference_data_v2"),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table, csv or json"),
) -> None:
    """Run a SQL query over the Iceberg tables (decimals exact, timestamps in UTC)."""
    _run_query(lambda engine: engine.sql(query), fmt)


def _instant(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not ISO-8601, e.g. 2014-03-11T00:00:00Z", param_hint=name) from None
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no zone: add one, e.g. Z or +11:00", param_hint=name)
    return moment


def _as_of(text: str | None) -> int | datetime | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else _instant(text, "--as-of")


def _print_result(result: Any, fmt: OutputFormat) -> None:
    from k2.query.formats import print_table, write_csv, write_json

    if fmt is OutputFormat.csv:
        write_csv(result, sys.stdout)
    elif fmt is OutputFormat.json:
        write_json(result, sys.stdout)
    else:
        print_table(result, out)


def _lake_settings() -> Settings:
    """Settings of a lake that exists: reading a mistyped K2_HOME must not create an empty one and answer 0 rows."""
    settings = Settings()
    local_catalog = settings.catalog_uri is None and "uri" not in settings.catalog_properties
    home = settings.home.expanduser().resolve()
    if local_catalog and not (home / "catalog.db").exists():
        where = "does not exist" if not home.exists() else "holds no lake yet (no catalog.db)"
        raise UserError(
            f"K2_HOME={home} {where}: check K2_HOME, or load data first (make run; k2 load asx data/samples/asx)"
        )
    return settings


def _run_query(
    fn: Callable[[Any], Any], fmt: OutputFormat, *, limit: int | None = None, note: str = "", empty: str = ""
) -> None:
    """Open the engine over this K2_HOME, run `fn(engine)`, print the table; bad input exits 2 with the reason.
    `fn` asked for `limit` + 1 rows when `limit` is given: the extra row, not printed, says the answer was cut.
    `empty` is the note for an answer with no rows. Notes go to stderr, never into the CSV/JSON on stdout."""
    from k2.lake.catalog import open_catalog
    from k2.query.engine import QueryEngine, QueryError
    from k2.query.filters import InvalidQueryError

    settings = _lake_settings()
    try:
        with QueryEngine(open_catalog(settings)) as engine:
            result = fn(engine)
    except (QueryError, InvalidQueryError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if limit is not None and result.num_rows > limit:
        result = result.slice(0, limit)
        note = f"the first {limit:,} rows (oldest first); more match: raise --limit or narrow --start/--end"
    if empty and result.num_rows == 0:
        note = empty
    if note:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    _print_result(result, fmt)


_START = typer.Option(None, "--start", help="ISO-8601 with zone, inclusive, e.g. 2014-03-11T00:00:00Z")
_END = typer.Option(None, "--end", help="ISO-8601 with zone, exclusive")
_FORMAT = typer.Option(OutputFormat.table, "--format", "-f", help="table, csv or json")
_AS_OF = typer.Option(None, "--as-of", help="Snapshot id or ISO time: read the lake as it was then")


def _events_command(kind: str) -> Callable[..., None]:
    def command(
        symbol: str = typer.Argument(..., help="Symbol, or a comma-separated list"),
        start: str = _START,
        end: str = _END,
        exchange: str = typer.Option(None, help="Venue code, e.g. asx, binance"),
        limit: int = typer.Option(100, min=1, help="At most this many rows (oldest first within the range)"),
        latest: bool = typer.Option(False, "--latest", help="The newest LIMIT rows instead of the oldest"),
        fmt: OutputFormat = _FORMAT,
        as_of: str = _AS_OF,
    ) -> None:
        from k2.query import market

        symbols = [s.strip() for s in symbol.split(",") if s.strip()]
        begin, finish, pinned = _instant(start, "--start"), _instant(end, "--end"), _as_of(as_of)
        if latest:
            _run_query(
                lambda e: market.latest(
                    e, kind, symbols, limit, exchange=exchange, start=begin, end=finish, as_of=pinned
                ),
                fmt,
                note=f"the newest {limit:,} {kind} of each symbol, printed oldest first",
                empty=_no_rows(kind, symbols, start, end),
            )
        else:
            _run_query(
                lambda e: market.events(
                    e, kind, symbols, begin, finish, exchange=exchange, limit=limit + 1, as_of=pinned
                ),
                fmt,
                limit=limit,
                empty=_no_rows(kind, symbols, start, end),
            )

    command.__doc__ = f"{kind.capitalize()} of SYMBOL in [--start, --end), in event order."
    return command


app.command("trades")(_events_command("trades"))
app.command("quotes")(_events_command("quotes"))


@app.command()
def bars(
    symbol: str = typer.Argument(..., help="Symbol, or a comma-separated list"),
    interval: str = typer.Option("1m", help="1s .. 1d, e.g. 1m, 15m, 1h, 1d"),
    start: str = _START,
    end: str = _END,
    exchange: str = typer.Option(None, help="Venue code, e.g. asx"),
    gap_fill: bool = typer.Option(False, "--gap-fill", help="Emit empty intervals carrying the previous close"),
    tz: str = typer.Option(
        None, help="Zone whose midnight starts bars' days, e.g. UTC; default: each exchange's trading day (asx: Sydney)"
    ),
    exclude_conditions: str = typer.Option(
        None,
        help="Trade condition codes left out of bars, e.g. 1,3,9, or 'none' to count every trade;"
        " default: each exchange's (asx: 1,3,9, its off-book prints)",
    ),
    exclude_venues: str = typer.Option(None, help="Venue marks (vendor_data venue) left out of bars, e.g. X"),
    fmt: OutputFormat = _FORMAT,
    as_of: str = _AS_OF,
) -> None:
    """OHLCV bars with VWAP, trade count and a partial flag (the range cuts the bar), computed from trades_v2."""
    from k2.query.bars import bars as compute_bars
    from k2.query.bars import parse_codes

    symbols = [s.strip() for s in symbol.split(",") if s.strip()]
    begin, finish, pinned = _instant(start, "--start"), _instant(end, "--end"), _as_of(as_of)
    _run_query(
        lambda e: compute_bars(
            e,
            symbols,
            interval,
            begin,
            finish,
            exchange=exchange,
            gap_fill=gap_fill,
            tz=tz,
            exclude_conditions=parse_codes(exclude_conditions, "--exclude-conditions"),
            exclude_venues=parse_codes(exclude_venues, "--exclude-venues") or (),
            as_of=pinned,
        ),
        fmt,
        empty=_no_rows("trades", symbols, start, end),
    )


@app.command()
def book(
    symbol: str = typer.Argument(..., help="One symbol, e.g. BTCUSDT"),
    at: str = typer.Option(None, "--at", help="ISO-8601 with zone: the book as it stood then"),
    start: str = typer.Option(None, "--start", help="With --end: the top of the book at every --every from here"),
    end: str = typer.Option(None, "--end", help="Exclusive end of the series, ISO-8601 with zone"),
    every: str = typer.Option("1s", "--every", help="Interval of the series, 1s .. 1d, e.g. 1s, 1m"),
    depth: int = typer.Option(10, min=1, help="Levels per side, best first (a series sums them for its depths)"),
    exchange: str = typer.Option("binance", help="Venue code"),
    fmt: OutputFormat = _FORMAT,
    as_of: str = _AS_OF,
) -> None:
    """The order book of SYMBOL at --at (the newest snapshot at or before it, then the updates after it; a ladder as a
    table, /v1/book's rows of side, level, price, quantity as csv or json), or with --start/--end its top at every
    --every boundary: best bid/ask, mid, spread, depths and imbalance."""
    from k2.query.book import BookAt, book_at, ladder
    from k2.query.book_series import book_series, levels_table
    from k2.schema.codecs import micros_from_datetime

    pinned = _as_of(as_of)
    if (at is None) == (start is None and end is None):
        raise UserError("pass --at for the book at a moment, or --start and --end for a series (not both)")
    if at is None:
        if start is None or end is None:
            raise UserError("a book series needs both --start and --end")
        begin, finish = cast(datetime, _instant(start, "--start")), cast(datetime, _instant(end, "--end"))
        _run_query(
            lambda engine: book_series(engine, symbol, begin, finish, every, depth, exchange=exchange, as_of=pinned),
            fmt,
            empty=f"no {every} boundary in [{start}, {end})",
        )
        return
    at_us = micros_from_datetime(cast(datetime, _instant(at, "--at")))
    found: list[BookAt] = []

    def read(engine: Any) -> Any:
        found.append(book_at(engine, symbol, at_us, depth, exchange=exchange, as_of=pinned))
        # A person reads bids beside asks; csv and json are /v1/book's rows: side, level, price, quantity, origin.
        return ladder(found[0]) if fmt is OutputFormat.table else levels_table(found[0])

    _run_query(read, fmt)
    err.print(f"note: {found[0].describe()}", markup=False, soft_wrap=True)


@app.command("trades-with-book")
def trades_with_book_cmd(
    symbol: str = typer.Argument(..., help="One symbol, e.g. BTCUSDT"),
    start: str = typer.Option(..., "--start", help="ISO-8601 with zone, inclusive"),
    end: str = typer.Option(..., "--end", help="ISO-8601 with zone, exclusive"),
    depth: int = typer.Option(10, min=1, help="Levels per side summed for bid_depth, ask_depth and imbalance"),
    exchange: str = typer.Option("binance", help="Venue code"),
    fmt: OutputFormat = _FORMAT,
    as_of: str = _AS_OF,
) -> None:
    """Each trade of SYMBOL in [--start, --end) with the order book that stood strictly before it."""
    from k2.query.book_series import trades_with_book

    begin, finish, pinned = _instant(start, "--start"), _instant(end, "--end"), _as_of(as_of)
    _run_query(
        lambda engine: trades_with_book(
            engine, symbol, cast(datetime, begin), cast(datetime, finish), depth, exchange=exchange, as_of=pinned
        ),
        fmt,
        empty=_no_rows("trades", [symbol], start, end),
    )


@app.command("symbols")
def list_symbols(
    quotes: bool = typer.Option(False, "--quotes", help="Symbols of quotes_v2 instead of trades_v2"),
    exchange: str = typer.Option(None, help="Venue code, e.g. asx, binance"),
    fmt: OutputFormat = _FORMAT,
    as_of: str = _AS_OF,
) -> None:
    """The symbols in the lake: exchange, first and last event time (UTC) and row count of each."""
    from k2.query.summary import symbols

    kind = "quotes" if quotes else "trades"
    _run_query(
        lambda e: symbols(e, kind, exchange=exchange, as_of=_as_of(as_of)),
        fmt,
        empty=f"no {kind} in the lake yet",
    )


@app.command("snapshots")
def list_snapshots(
    table: str = typer.Argument("trades", help="trades, quotes, bars or reference_data"),
    fmt: OutputFormat = _FORMAT,
) -> None:
    """The table's snapshots, oldest first: the ids and times --as-of accepts, what each commit added."""
    from k2.query.snapshots import snapshots

    _run_query(
        lambda e: snapshots(e, table).select(["snapshot_id", "committed_at", "operation", "rows"]),
        fmt,
        empty=f"{table} has no snapshot yet: nothing was committed to it",
    )


def _no_rows(kind: str, symbols: list[str], start: str | None, end: str | None) -> str:
    window = f" in [{start or 'the first'}, {end or 'the last'})" if start or end else ""
    return f"no {kind} of {', '.join(symbols)}{window}; `k2 symbols` lists what the lake holds"


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Bind address; loopback unless you mean to expose it"),
    port: int = typer.Option(8000, help="TCP port"),
) -> None:
    """Serve the HTTP API (/v1, docs at /docs) over this K2_HOME's lake until Ctrl-C."""
    from k2.api import serve as serve_api

    out.print(f"K2 API on http://{host}:{port}  (docs: /docs; every /v1 route needs an X-API-Key: `k2 keys create`)")
    serve_api(Settings(), host=host, port=port)


@app.command("catalog-serve")
def catalog_serve(
    host: str = typer.Option("127.0.0.1", help="Bind address; loopback unless you mean to expose it (no auth)"),
    port: int = typer.Option(8181, help="TCP port"),
) -> None:
    """Serve this K2_HOME's Iceberg catalog as an Iceberg REST catalog until Ctrl-C."""
    import json

    from k2.lake.rest_catalog import serve_rest_catalog

    uri = f"http://{host}:{port}"
    out.print(f"Iceberg REST catalog on {uri}")
    out.print(f"clients: K2_CATALOG_PROPERTIES='{json.dumps({'type': 'rest', 'uri': uri})}'", soft_wrap=True)
    serve_rest_catalog(Settings(), host=host, port=port)


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who the key is for, e.g. research-notebook"),
    rate_limit: int = typer.Option(None, "--rate-limit", help="Requests per minute for this key (default: K2_API_*)"),
) -> None:
    """Create an API key and print it once (only a salted hash is stored)."""
    from k2.api import create_key

    key = create_key(Settings(), name, rate_limit_per_minute=rate_limit)
    err.print("Store this key now; it cannot be shown again:")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (ids and names; never the secrets)."""
    from k2.api import list_keys

    for key in list_keys(Settings()):
        state = "active" if key.active else f"revoked {key.revoked_at}"
        out.print(f"{key.key_id}  {key.name}  created {key.created_at}  {state}")


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id from `k2 keys list`, or the key itself")) -> None:
    """Revoke an API key at once."""
    from k2.api import revoke_key

    if not revoke_key(Settings(), key_id):
        err.print(f"[red]error:[/red] no active key {escape(key_id)}: see `k2 keys list`")
        raise typer.Exit(2)
    out.print(f"revoked {key_id}")


@app.command()
def maintain(
    table: list[str] = typer.Option(None, "--table", help="Table(s) to maintain (default: all market_data tables)"),
    target_file_mb: int = typer.Option(128, help="Compact partitions whose files are smaller than this"),
    min_files: int = typer.Option(4, help="Compact a partition once it has at least this many small files"),
    expire_days: float = typer.Option(7.0, help="Expire snapshots older than this many days"),
    retain_last: int = typer.Option(10, help="Always keep this many newest snapshots"),
    retention_days: int = typer.Option(None, help="Drop day partitions older than this (default: keep all)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report what would change; change nothing"),
) -> None:
    """Compact small files, expire snapshots, remove orphan files (safe while sinks commit); report before/after."""
    from datetime import timedelta

    from k2.lake.catalog import open_catalog
    from k2.lake.maintenance import maintain as run_maintenance
    from k2.query.latency import LatencyProbe

    settings = Settings()
    with LatencyProbe(open_catalog(settings)) as probe:
        report = run_maintenance(
            settings,
            tables=table or None,
            target_file_mb=target_file_mb,
            min_files=min_files,
            expire_older_than=timedelta(days=expire_days),
            retain_last=retain_last,
            retention_days=retention_days,
            dry_run=dry_run,
            measure=probe,
        )
    report.render(out if out.is_terminal else Console(width=200))  # piped: no screen width to fit


@app.command()
def cost(
    price_per_gb_month: float = typer.Option(None, help="Storage price per GB-month (default: S3 Standard list, USD)"),
    currency: str = typer.Option(None, help="Currency of --price-per-gb-month (default: USD)"),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table or json"),
) -> None:
    """Stored bytes and CPU seconds per million records, compression ratio, monthly storage: measured, not guessed."""
    import json

    from k2.lake.catalog import open_catalog
    from k2.ops.cost import cost_report, render

    if fmt is OutputFormat.csv:
        raise typer.BadParameter("table or json", param_hint="--format")
    given = {"price_per_gb_month": price_per_gb_month, "currency": currency}
    report = cost_report(open_catalog(Settings()), **{k: v for k, v in given.items() if v is not None})
    if fmt is OutputFormat.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render(report, out if out.is_terminal else Console(width=200))


@app.command()
def sink(
    group: str = typer.Option(None, help="Consumer group (default: K2_SINK_GROUP or k2-sink)"),
    metrics_port: int = _METRICS_PORT,
) -> None:
    """Run a sink worker: market.* topics → Iceberg, exactly once, until SIGTERM/Ctrl-C (then commit, exit)."""
    _serve_metrics(metrics_port)
    from k2.bus.registry_client import RegistryClient
    from k2.bus.stack import NO_KAFKA, check_configured, existing_endpoints
    from k2.lake.catalog import open_catalog
    from k2.lake.sink import IcebergSink

    settings = Settings(sink_group=group) if group else Settings()
    endpoints = existing_endpoints(settings)
    if endpoints is None:
        err.print(f"[red]error:[/red] {NO_KAFKA}.")
        raise typer.Exit(2)
    check_configured(settings, endpoints)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    registry = RegistryClient.for_settings(settings, endpoints.registry_url)
    worker = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings))
    stats = worker.run(stop=stop)
    err.print(f"sink stopped: consumed {stats.consumed:,}, written {dict(stats.written)}, commits {stats.commits}")


@app.command()
def up(
    port: int = typer.Option(8000, help="API and dashboard port on 127.0.0.1"),
    asx: Path = typer.Option(None, help="ASX sample folder (default: K2_ASX_SAMPLE or data/samples/asx)"),
    no_asx: bool = typer.Option(False, "--no-asx", help="Do not load the ASX sample"),
    binance: str = typer.Option("auto", help="auto (live when reachable, else emulator), emulator, live or off"),
    symbols: str = typer.Option(None, help="Binance symbols (default: the captures' symbols, or BTCUSDT,ETHUSDT live)"),
    capture: list[Path] = typer.Option([], exists=True, dir_okay=False, help="Capture file(s) for the emulator"),
    replay_speed: float = typer.Option(1.0, help="Emulator replay speed; 0 = as fast as possible"),
    maintain_every: float = typer.Option(600.0, help="Seconds between maintenance runs (compaction...); 0: never"),
) -> None:
    """Start broker, registry, sink, API and dashboard; load the ASX sample; stream Binance. Ctrl-C stops it all."""
    from k2.up import BinanceMode, UpOptions, default_asx_dir
    from k2.up import up as run_up

    try:
        mode = BinanceMode(binance)
    except ValueError:
        raise typer.BadParameter("one of auto, emulator, live, off", param_hint="--binance") from None
    settings = Settings()
    options = UpOptions(port=port, asx=None if no_asx else (asx or default_asx_dir(settings)), binance=mode)
    if symbols:
        options.symbols = [s.strip().upper() for s in symbols.split(",") if s.strip()]
    if capture:
        options.captures = tuple(capture)
    options.replay_speed = replay_speed
    options.maintain_every = maintain_every
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        if stop.is_set():  # a second Ctrl-C: no more waiting (the broker dies with this process)
            err.print("stopping now")
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    raise typer.Exit(run_up(settings, options, Console(soft_wrap=True, highlight=False), stop))


class StreamFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"


class EventKind(StrEnum):
    trades = "trades"
    quotes = "quotes"
    bars = "bars"


@app.command("subscribe")
def subscribe_cmd(
    kind: EventKind = typer.Argument(..., help="trades, quotes or bars (of --interval, built from trades)"),
    symbols: str = typer.Option(None, "--symbols", help="Comma-separated symbols; omit for every symbol"),
    exchange: str = typer.Option(None, help="Venue code, e.g. asx, binance"),
    since: str = typer.Option(
        None, "--since", help="ISO-8601 with zone: the lake's records from then first; omit to start live"
    ),
    cursor: str = typer.Option(None, "--cursor", help="A cursor this command printed: resume right after it"),
    count: int = typer.Option(
        None, "--count", min=1, help="Stop after this many records (bars: at the end of the batch reaching it)"
    ),
    duration: float = typer.Option(None, "--duration", min=0, help="Stop after this many seconds"),
    fmt: StreamFormat = typer.Option(StreamFormat.ndjson, "--format", "-f", help="ndjson or csv"),
    interval: str = typer.Option(None, "--interval", help="Bar width for bars, e.g. 1s, 1m, 15m"),
) -> None:
    """Print records as they arrive: with --since the lake's history first, then what Kafka holds beyond the lake,
    then live ones (each message_id once). `bars --interval 1m`: bars of the trades as they form (`final` false)
    and once closed (`final` true). Ctrl-C, --count or --duration stops; the cursor to resume from is printed
    on stderr (`cursor: ...`). Needs the stack (`k2 stack`, or K2_KAFKA_BOOTSTRAP and K2_SCHEMA_REGISTRY_URL)."""
    import time

    from k2.bus.stack import NO_KAFKA, check_configured, existing_endpoints
    from k2.lake.catalog import open_catalog
    from k2.query.bar_stream import subscribe_bars
    from k2.query.engine import QueryEngine
    from k2.query.filters import InvalidQueryError
    from k2.query.formats import write_csv, write_ndjson
    from k2.query.fresh import FreshSource
    from k2.query.subscribe import subscribe

    if count is not None and duration is not None:
        raise UserError("--count and --duration both stop the subscription: give one of them")
    if (kind is EventKind.bars) != (interval is not None):
        raise UserError("--interval goes with bars, and bars need one (e.g. --interval 1m)")
    begin = _instant(since, "--since")
    names = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
    settings = _lake_settings()
    endpoints = existing_endpoints(settings)
    if endpoints is None:
        raise UserError(f"{NO_KAFKA}.")
    check_configured(settings, endpoints)
    deadline = None if duration is None else time.monotonic() + duration
    last_cursor, header = cursor, fmt is StreamFormat.csv
    printed = 0
    with QueryEngine(open_catalog(settings)) as engine:
        kafka = FreshSource.from_endpoints(endpoints, settings)
        try:
            if kind is EventKind.bars:
                batches = subscribe_bars(engine, kafka, names, interval, exchange=exchange, since=begin, cursor=cursor)
            else:
                batches = subscribe(
                    engine, kafka, kind.value, names, exchange=exchange, since=begin, cursor=cursor, limit=count
                )
        except InvalidQueryError as exc:
            raise UserError(str(exc)) from None
        try:
            for batch in batches:
                if batch.records.num_rows:
                    if fmt is StreamFormat.csv:
                        write_csv(batch.records, sys.stdout, header=header)
                        header = False
                    else:
                        write_ndjson(batch.records, sys.stdout)
                    sys.stdout.flush()
                last_cursor = batch.cursor
                printed += batch.records.num_rows
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if kind is EventKind.bars and count is not None and printed >= count:
                    break  # a bars cursor resumes after a whole batch: the one that reached --count
        except KeyboardInterrupt:
            pass
        except InvalidQueryError as exc:
            raise UserError(str(exc)) from None
        finally:
            batches.close()
    if last_cursor is not None:
        err.print(f"cursor: {last_cursor}", markup=False, soft_wrap=True)


@app.command()
def stack(
    broker: BrokerKind = typer.Option(
        BrokerKind.tansu,
        help="tansu: the embedded broker (memory storage); kafka: Apache Kafka (KRaft) with its log under "
        "$K2_HOME/kafka, jars fetched once with Maven (needs a JDK 17+ and mvn)",
    ),
) -> None:
    """Run a broker and the registry for this K2_HOME in the foreground until Ctrl-C/SIGTERM."""
    from k2.bus.apache_kafka import ApacheKafkaError
    from k2.bus.stack import Stack
    from k2.redact import redact

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with Stack(Settings(), broker=broker) as endpoints:
            out.print(f"Kafka bootstrap: {endpoints.bootstrap}\nSchema registry: {redact(endpoints.registry_url)}")
            out.print("Ctrl-C stops both.")
            while not stop.wait(0.5):
                pass
    except ApacheKafkaError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
