"""The dashboard in headless Chromium against a real `k2 up`: the charts show the lake's data, and a screenshot.

Set K2_SCREENSHOT_DIR (e.g. docs/img) to keep the screenshots; otherwise they go to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from k2.config import Settings
from tests.conftest import broker_incidental, lake_incidental
from tests.dashboard.browser import Browser, chromium_path
from tests.dashboard.k2up import k2_up, wait_for_exchanges
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, broker_incidental, lake_incidental]

# Pixels drawn in the candle colours (style.css / app.js): up #26a69a, down #ef5350.
COUNT_CANDLE_PIXELS = """
(() => {
  const colours = [[0x26, 0xa6, 0x9a], [0xef, 0x53, 0x50]];
  let hits = 0;
  for (const canvas of document.querySelectorAll('#candles canvas')) {
    if (!canvas.width || !canvas.height) continue;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] < 200) continue;
      const near = ([r, g, b]) => Math.abs(data[i] - r) < 8 && Math.abs(data[i + 1] - g) < 8
        && Math.abs(data[i + 2] - b) < 8;
      if (colours.some(near)) hits++;
    }
  }
  return hits;
})()
"""

DRAWN = "window.k2dash && window.k2dash.drawn()"

# Widths that scroll when content overflows its box: the page, the lake table and the box it scrolls in, each chart.
FITS = """
(() => {
  const table = document.getElementById('health-tables');
  return {
    page: document.documentElement.scrollWidth,
    lake_table: table.scrollWidth,
    lake_box: Math.min(table.clientWidth, table.parentElement.clientWidth),
    charts: [...document.querySelectorAll('.chart')].map(c => [c.scrollWidth, c.clientWidth]),
  };
})()
"""


def screenshot_dir(tmp_path: Path) -> Path:
    return Path(os.environ["K2_SCREENSHOT_DIR"]) if os.environ.get("K2_SCREENSHOT_DIR") else tmp_path


# The drawn candles and the request they answer, read in one go (the page refreshes every 4 s).
CANDLES_AND_REQUEST = """
(() => ({
  asked: window.k2dash.state.barsAsked,
  candles: window.k2dash.charts.candles.data().map(c => [c.open, c.high, c.low, c.close]),
  volume: window.k2dash.charts.volume.data().length,
}))()
"""


def bars_as_the_page_asked(client: httpx.Client, asked: dict) -> list[dict]:
    """The /v1/bars answer to the request the page drew, at the snapshot that request read (a live stream keeps
    committing, so the newest data may hold more bars by now)."""
    response = client.get("/v1/bars", params=asked)
    response.raise_for_status()
    return response.json()["data"]


def check_symbol(client: httpx.Client, browser: Browser, symbol: str, exchange: str) -> dict:
    """The page drew `symbol`: one candle per bar the API returns, with the same prices; the tape shows the latest
    trades the API has, price for price. Returns what was drawn."""
    browser.evaluate(f"window.k2dash.select({symbol!r}, {exchange!r})")
    drawn = browser.wait_for(
        f"(() => {{ const d = {DRAWN}; return d && d.symbol === {symbol!r} && d.candles > 0 && d.tape > 0 && d; }})()"
    )
    shown = browser.evaluate(CANDLES_AND_REQUEST)
    assert (shown["asked"]["symbols"], shown["asked"]["exchange"]) == (symbol, exchange)
    bars = bars_as_the_page_asked(client, shown["asked"])
    # The bars subscription goes on from the last bar asked: it may have changed since (a forming bar) and more
    # may follow; the ones before it are exactly the API's.
    assert len(shown["candles"]) == shown["volume"] >= len(bars) > 0
    expected = [[float(b[k]) for k in ("open", "high", "low", "close")] for b in bars]
    assert shown["candles"][: len(bars) - 1] == expected[:-1]
    assert shown["candles"][len(bars) - 1][0] == expected[-1][0]  # its open stays
    assert browser.evaluate(COUNT_CANDLE_PIXELS) > 200, "the candle canvas holds (almost) no candle-coloured pixels"

    # One read of the tape (id, data-price, shown text), then the API's latest trades. A live stream keeps adding
    # trades between the two, so the tape must be a contiguous run of the API's newest trades, price for price.
    tape = browser.evaluate(
        "[...document.querySelectorAll('#tape tbody tr')]"
        ".map(r => [r.dataset.messageId, r.dataset.price, r.cells[1].textContent])"
    )
    assert 0 < len(tape) <= 30
    # fresh: the lake and what Kafka holds beyond it, as the tape follows the live subscription ahead of the lake.
    params = {"symbols": symbol, "exchange": exchange, "n": 1000, "fresh": "true"}
    latest = client.get("/v1/trades/latest", params=params).json()["data"]
    newest_first = list(reversed(latest))
    ids = [t["message_id"] for t in newest_first]
    assert tape[0][0] in ids, "the tape's newest trade is not among the API's latest trades"
    start = ids.index(tape[0][0])
    expected = newest_first[start : start + len(tape)]
    assert [row[0] for row in tape] == [t["message_id"] for t in expected]
    assert [row[1] for row in tape] == [t["price"] for t in expected]
    assert [Decimal(row[2]) for row in tape] == [Decimal(t["price"]) for t in expected]
    if start == 0 or len(latest) < 1000:  # a symbol that stopped trading shows a full tape of its last trades
        assert len(tape) == min(30, len(latest) - start)
    return drawn


# What the live subscriptions changed, read in one go: the forming bar the bars subscription sent last, the chart's
# last candle and volume, the tape's newest trade, and the counters.
LIVE = """
(() => {
  const d = window.k2dash, s = d.state;
  const candles = d.charts.candles.data(), volume = d.charts.volume.data();
  const last = candles[candles.length - 1], lastVolume = volume[volume.length - 1];
  const f = s.forming;
  return {
    forming: f && [f.timestamp, f.close, f.volume, f.trade_count],
    drawn: f ? last.time === Date.parse(f.timestamp) / 1000 && last.close === Number(f.close)
      && lastVolume.value === Number(f.volume) : false,
    tape: s.tape.length ? s.tape[0].message_id : null,
    tape_shown: document.querySelector('#tape tbody tr') && document.querySelector('#tape tbody tr').dataset.messageId,
    bars: s.liveBars, trades: s.liveTrades, refreshes: s.refreshes,
    phases: [s.live.bars && s.live.bars.phase, s.live.trades && s.live.trades.phase],
    urls: [s.live.bars && s.live.bars.ws.url, s.live.trades && s.live.trades.ws.url],
  };
})()
"""


def check_live(browser: Browser, symbol: str, exchange: str) -> dict:
    """While the emulator streams `symbol`, the forming candle (close, volume, trade count) and the tape's newest
    trade change from what the subscriptions send, across a poll of the page, with no HTTP request for trades or
    bars meanwhile."""
    browser.evaluate(f"window.k2dash.select({symbol!r}, {exchange!r})")
    browser.wait_for(
        f"(() => {{ const d = {DRAWN}; const l = {LIVE.strip()}; return d && d.symbol === {symbol!r}"
        " && d.candles > 0 && l.phases[0] === 'live' && l.phases[1] === 'live'; })()"
    )
    asked = len(browser.requests)
    before = browser.evaluate(LIVE)
    after = browser.wait_for(
        f"(() => {{ const l = {LIVE.strip()}; const b = {json.dumps(before)}; return l.forming && l.drawn"
        " && JSON.stringify(l.forming) !== JSON.stringify(b.forming) && l.bars > b.bars"
        " && l.tape !== b.tape && l.tape === l.tape_shown && l.trades > b.trades"
        " && l.refreshes >= b.refreshes + 2 && l; })()",  # a whole poll of the page inside the window
        timeout=60,
    )
    polled = [url for url in browser.requests[asked:] if "/v1/trades" in url or "/v1/bars" in url]
    assert not polled, polled
    # The page kept polling what has no subscription (so a poll of trades or bars would have shown above).
    assert any("/v1/pipeline" in url for url in browser.requests[asked:]), browser.requests[asked:]
    assert all("key" not in url for url in after["urls"]), "the API key must not travel in the WebSocket URL"

    # A dropped socket opens again from its cursor: the tape goes on with new trades, none twice.
    browser.evaluate("window.k2dash.state.live.trades.ws.close(3000)")
    resumed = browser.wait_for(
        f"(() => {{ const l = {LIVE.strip()}; const s = window.k2dash.state; return s.reconnects > 0"
        f" && l.trades > {after['trades']} && l.phases[1] === 'live' && l; }})()",
        timeout=60,
    )
    assert "cursor=" in resumed["urls"][1] and "since=" not in resumed["urls"][1]
    tape = browser.evaluate("window.k2dash.state.tape.map(t => t.message_id)")
    assert len(tape) == len(set(tape)) == 30
    return after


def test_dashboard_draws_the_lake_in_headless_chromium(settings: Settings, asx_sample: Path, tmp_path: Path) -> None:
    if chromium_path() is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (the Makefile's test target does this)")
    with k2_up(settings.home_dir, "--binance", "emulator", "--asx", str(asx_sample)) as up, up.client() as client:
        wait_for_exchanges(client, {"asx", "binance"}, timeout=90)
        with Browser() as browser:
            browser.goto(f"{up.url}/dashboard#key={up.key}")
            browser.wait_for(f"{DRAWN} && window.k2dash.state.refreshes > 0")
            # The key left the address bar (it stays in the tab's sessionStorage).
            assert "key=" not in browser.evaluate("location.href")

            # While the emulator replays its 92 s of trades: the candle and the tape follow the subscriptions.
            live = check_live(browser, "BTCUSDT", "binance")
            assert live["forming"][3] >= 1 and not browser.blocked, browser.blocked

            up.wait_for_line(r"ASX: all [\d,]+ records are in the lake", 120)

            drawn = check_symbol(client, browser, "BHP", "asx")
            assert drawn["interval"] == "5m" and drawn["quotes"] > 0
            last_quote = [
                q
                for q in client.get("/v1/quotes/latest", params={"symbols": "BHP", "exchange": "asx", "n": 300}).json()[
                    "data"
                ]
                if Decimal(q["bid_price"] or 0) > 0 and Decimal(q["ask_price"] or 0) > 0
            ][-1]
            quote_text = browser.evaluate("document.getElementById('quote-now').textContent")
            assert f"bid {Decimal(last_quote['bid_price']).normalize():f}" in quote_text.replace("×", " ")

            # Pipeline health shows the real log end of the ASX trade topic and the NORMAL level.
            browser.wait_for("document.querySelector('#health-topics tbody tr td') !== null")
            topics = browser.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#health-topics tbody tr')]"
                ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))"
            )
            trades = sum(
                row["count"]
                for row in client.get("/v1/symbols", params={"kind": "trades", "exchange": "asx"}).json()["data"]
            )
            assert topics["market.equities.trades.asx"] == f"{trades:,}"
            assert browser.evaluate("document.getElementById('degradation').textContent") == "NORMAL"
            # The Binance stream produces in `k2 up`'s process under a degradation controller (the ASX load is done).
            card = "document.querySelector('#degradation-card b').textContent"
            assert browser.wait_for(f"{card}.includes('producing') && {card}") == "NORMAL · Binance producing"

            shots = screenshot_dir(tmp_path)
            browser.evaluate("window.scrollTo(0, 0)")
            asx_shot = browser.screenshot(shots / "dashboard.png")

            drawn = check_symbol(client, browser, "BTCUSDT", "binance")
            assert drawn["interval"] == "1s"  # 92 s of recorded trades
            binance_shot = browser.screenshot(shots / "dashboard-binance.png")

            # LRCBTC, quoted at 0.00000637 BTC, is in the sidebar (whether or not it traded) and its quote chart's
            # price scale keeps all eight decimals, not 0.00.
            def lrcbtc_quoted() -> bool:  # the October capture's bookTickers (replayed after April's trades)
                params = {"kind": "quotes", "exchange": "binance"}
                return any(r["symbol"] == "LRCBTC" for r in client.get("/v1/symbols", params=params).json()["data"])

            wait_until(lrcbtc_quoted, 240, "LRCBTC quotes in the lake")
            browser.wait_for("document.querySelector('button[data-symbol=\"LRCBTC\"]') !== null")
            browser.evaluate("window.k2dash.select('LRCBTC', 'binance')")
            browser.wait_for(f"(() => {{ const d = {DRAWN}; return d && d.symbol === 'LRCBTC' && d.quotes > 0; }})()")
            scales = browser.evaluate(
                "['bid', 'ask', 'spread'].map(name => window.k2dash.charts[name].options().priceFormat.precision)"
            )
            assert scales == [8, 8, 8]

            # At 1400 x 900 nothing scrolls sideways: not the page, not the lake table, not a chart.
            browser.set_viewport(1400, 900)
            widths = browser.evaluate(FITS)
            assert widths["page"] <= 1400, widths
            assert widths["lake_table"] <= widths["lake_box"], widths
            assert all(scroll <= client for scroll, client in widths["charts"]), widths
            browser.screenshot(shots / "dashboard-1400.png")

            errors = [line for line in browser.console if line.startswith(("exception", "console.error"))]
            assert not errors, errors
    assert asx_shot.stat().st_size > 50_000 and binance_shot.stat().st_size > 50_000
    print(f"screenshots: {asx_shot} {binance_shot}")
