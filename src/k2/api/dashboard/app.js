// K2 dashboard: draws what the /v1 routes return. No build step; the only dependency is the vendored
// TradingView Lightweight Charts standalone build (global `LightweightCharts`).
// The candles and the trade tape load once per symbol over HTTP, then follow /v1/subscribe (WebSocket): bars of
// the drawn interval as they form, and trades. Symbols, quotes and pipeline health are polled.
"use strict";

(() => {
  const LWC = window.LightweightCharts;
  const REFRESH_MS = 4000; // 4 requests per refresh: ~60/min, far below the API's per-key limit
  const RECONNECT_MS = [250, 500, 1000, 2000, 5000, 10000]; // pauses before opening a dropped subscription again
  const TAPE_ROWS = 30;
  const KEY_STORE = "k2.dashboard.key";
  // Bar widths the API accepts (they divide a day); "auto" picks the smallest giving at most MAX_BARS bars.
  const INTERVALS = [["1s", 1], ["5s", 5], ["15s", 15], ["1m", 60], ["5m", 300], ["15m", 900], ["1h", 3600], ["1d", 86400]];
  const MAX_BARS = 1500;
  const COLORS = { up: "#26a69a", down: "#ef5350", text: "#d8dee9", grid: "#1e2632", bid: "#26a69a", ask: "#ef5350", spread: "#4c9aff" };

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    symbols: [], // rows of /v1/symbols?kind=trades
    quoted: new Set(), // "symbol|exchange" with quotes
    selected: null, // {symbol, exchange, first_seen, last_seen, count}
    interval: "auto",
    bars: [],
    barsInterval: null,
    barsAsked: null, // the /v1/bars parameters of the drawn candles
    tape: [],
    quotes: [],
    live: { bars: null, trades: null }, // the open subscriptions (Live) of the drawn symbol
    forming: null, // the last bar row the bars subscription sent that is not final yet
    liveBars: 0, // bar rows and trades that arrived over the subscriptions
    liveTrades: 0,
    reconnects: 0,
    pipeline: null,
    loadedFor: null, // "symbol|exchange|interval" whose charts are drawn
    lastTradeId: null,
    errors: [],
    refreshes: 0,
  };
  const charts = {};

  // --- API ------------------------------------------------------------------------------------------------
  class AuthError extends Error {}

  async function api(path, params = {}) {
    const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined));
    const response = await fetch(`/v1/${path}?${query}`, { headers: { "X-API-Key": state.key } });
    if (response.status === 401) throw new AuthError("the API key was refused (unknown or revoked)");
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
      throw new Error(`${path}: ${message}`);
    }
    // Snapshot ids are 64-bit: JSON numbers past 2^53 lose digits in JavaScript, the header's text does not.
    if (body && typeof body === "object") body.snapshot = response.headers.get("X-K2-Snapshot-Id");
    return body;
  }

  // --- formatting -----------------------------------------------------------------------------------------
  const seconds = (iso) => Date.parse(iso) / 1000;
  const num = (text) => (text === null || text === undefined ? null : Number(text));
  // Decimal strings arrive exact ("36.66700000"); show them without trailing zeros, keeping two decimals.
  function decimal(text) {
    if (text === null || text === undefined) return "–";
    const [whole, frac = ""] = String(text).split(".");
    const trimmed = frac.replace(/0+$/, "");
    return `${whole}.${trimmed.padEnd(2, "0")}`;
  }
  // A price scale shows as many decimals as its prices have (2 to 8): LRCBTC at 0.00000637 must not read 0.00.
  function showDecimals(seriesList, prices) {
    const places = prices.slice(-50).map((p) => (decimal(p).split(".")[1] || "").length);
    const precision = Math.min(8, Math.max(2, ...places));
    for (const s of seriesList) s.applyOptions({ priceFormat: { type: "price", precision, minMove: 10 ** -precision } });
  }
  const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  const clock = (iso) => (iso ? iso.replace("T", " ").replace(/\+00:00$|Z$/, "").slice(0, 23) : "–");
  const ago = (iso) => {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
  };
  const keyOf = (row) => `${row.symbol}|${row.exchange}`;

  function autoInterval(row) {
    const span = Math.max(1, seconds(row.last_seen) - seconds(row.first_seen));
    const fit = INTERVALS.find(([, width]) => span / width <= MAX_BARS);
    return fit ? fit[0] : "1d";
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  // --- charts ---------------------------------------------------------------------------------------------
  function baseOptions() {
    return {
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: COLORS.text, attributionLogo: true },
      grid: { vertLines: { color: COLORS.grid }, horzLines: { color: COLORS.grid } },
      timeScale: { timeVisible: true, secondsVisible: true, borderColor: COLORS.grid },
      rightPriceScale: { borderColor: COLORS.grid },
      localization: { timeFormatter: (t) => new Date(t * 1000).toISOString().slice(0, 19).replace("T", " ") },
    };
  }

  function makeCharts() {
    const main = LWC.createChart($("candles"), baseOptions());
    charts.main = main;
    charts.candles = main.addSeries(LWC.CandlestickSeries, {
      upColor: COLORS.up, downColor: COLORS.down, borderVisible: false, wickUpColor: COLORS.up, wickDownColor: COLORS.down,
    });
    charts.volume = main.addSeries(LWC.HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
    charts.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    charts.candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });

    const quotes = LWC.createChart($("quotes-chart"), baseOptions());
    charts.quotesChart = quotes;
    charts.bid = quotes.addSeries(LWC.LineSeries, { color: COLORS.bid, lineWidth: 1, title: "bid" });
    charts.ask = quotes.addSeries(LWC.LineSeries, { color: COLORS.ask, lineWidth: 1, title: "ask" });
    charts.spread = quotes.addSeries(LWC.LineSeries, { color: COLORS.spread, lineWidth: 1, title: "spread" }, 1);

    const throughput = LWC.createChart($("throughput-chart"), baseOptions());
    charts.throughputChart = throughput;
    charts.throughput = throughput.addSeries(LWC.HistogramSeries, { color: COLORS.spread, priceFormat: { type: "volume" } });
    // Room above the tallest bar for its price label, which would otherwise sit half outside the chart.
    charts.throughput.priceScale().applyOptions({ scaleMargins: { top: 0.15, bottom: 0 } });
  }

  // Lightweight Charts wants strictly increasing times: keep the last point per second-with-fraction.
  function series(points) {
    const out = [];
    for (const point of points) {
      if (out.length && out[out.length - 1].time >= point.time) {
        if (out[out.length - 1].time === point.time) out[out.length - 1] = point;
        continue;
      }
      out.push(point);
    }
    return out;
  }

  // --- symbols --------------------------------------------------------------------------------------------
  function renderSymbols() {
    const nav = $("symbols");
    nav.replaceChildren();
    const byExchange = new Map();
    for (const row of state.symbols) {
      if (!byExchange.has(row.exchange)) byExchange.set(row.exchange, []);
      byExchange.get(row.exchange).push(row);
    }
    for (const [exchange, rows] of byExchange) {
      nav.append(el("div", { class: "exchange" }, exchange));
      for (const row of rows) {
        const selected = state.selected && keyOf(state.selected) === keyOf(row);
        nav.append(
          el("button", {
            class: `symbol${selected ? " selected" : ""}`,
            "data-symbol": row.symbol,
            "data-exchange": row.exchange,
            title: `${row.quotesOnly ? "quotes only" : `${count(row.count)} trades`}, ${clock(row.first_seen)} – ${clock(row.last_seen)} UTC`,
            onclick: () => select(row.symbol, row.exchange),
          }, row.symbol, el("small", {}, row.quotesOnly ? "quotes" : count(row.count))),
        );
      }
    }
    if (!state.symbols.length) nav.append(el("p", { class: "note" }, "Nothing in the lake yet: waiting for the first commit…"));
  }

  async function loadSymbols() {
    const [trades, quotes] = await Promise.all([api("symbols", { kind: "trades" }), api("symbols", { kind: "quotes" })]);
    // Symbols with quotes and no trades (a book watched, nothing printed yet) are listed too, after the traded ones
    // of their exchange, with their quote times and no trade count.
    const traded = new Set(trades.data.map(keyOf));
    const quotedOnly = quotes.data.filter((row) => !traded.has(keyOf(row))).map((row) => ({ ...row, count: 0, quotesOnly: true }));
    state.symbols = [...trades.data, ...quotedOnly].sort((a, b) => a.exchange.localeCompare(b.exchange) || (a.quotesOnly ? 1 : 0) - (b.quotesOnly ? 1 : 0));
    state.quoted = new Set(quotes.data.map(keyOf));
    if (state.selected) {
      state.selected = state.symbols.find((row) => keyOf(row) === keyOf(state.selected)) || state.selected;
    } else if (state.symbols.length) {
      const wanted = new URLSearchParams(location.search);
      state.selected =
        state.symbols.find((r) => r.symbol === wanted.get("symbol") && (!wanted.get("exchange") || r.exchange === wanted.get("exchange"))) ||
        state.symbols[0];
    }
    renderSymbols();
  }

  // --- bars, tape, quotes ---------------------------------------------------------------------------------
  async function loadBars() {
    const row = state.selected;
    const interval = state.interval === "auto" ? autoInterval(row) : state.interval;
    const end = new Date(Date.parse(row.last_seen) + 1).toISOString(); // end is exclusive
    const body = await api("bars", { symbols: row.symbol, exchange: row.exchange, interval, start: row.first_seen, end });
    if (keyOf(state.selected) !== keyOf(row)) return; // another symbol was chosen meanwhile
    const bars = body.data;
    const drawnFor = `${keyOf(row)}|${interval}`;
    charts.candles.setData(bars.map((b) => ({ time: seconds(b.timestamp), open: num(b.open), high: num(b.high), low: num(b.low), close: num(b.close) })));
    charts.volume.setData(
      bars.map((b) => ({ time: seconds(b.timestamp), value: num(b.volume), color: num(b.close) >= num(b.open) ? "#26a69a80" : "#ef535080" })),
    );
    if (state.loadedFor !== drawnFor) charts.main.timeScale().fitContent();
    state.bars = bars;
    state.barsInterval = interval;
    state.loadedFor = drawnFor;
    // The request the candles answer, with the snapshot it read: asking it again with as_of gets the same bars.
    state.barsAsked = { symbols: row.symbol, exchange: row.exchange, interval, start: row.first_seen, end, as_of: body.snapshot };
    showDecimals([charts.candles], bars.map((b) => b.close));
    $("chart-title").textContent = `${row.symbol} · ${row.exchange} · ${interval} bars`;
    $("chart-note").textContent =
      `${count(bars.length)} bars from ${count(row.count)} trades, ${clock(row.first_seen)} – ${clock(row.last_seen)} UTC (snapshot ${body.snapshot}), then live`;
    // From the last bar drawn on (it may still be forming), the bars as they form and close.
    follow("bars", { kind: "bars", interval, symbols: row.symbol, exchange: row.exchange, since: bars.length ? bars[bars.length - 1].timestamp : null }, drawBars);
  }

  function drawBars(rows) {
    const candles = charts.candles.data();
    let last = candles.length ? candles[candles.length - 1].time : -Infinity;
    for (const b of rows) {
      const time = seconds(b.timestamp);
      if (time < last) continue; // older than what is drawn (the chart only appends or replaces its last bar)
      last = time;
      charts.candles.update({ time, open: num(b.open), high: num(b.high), low: num(b.low), close: num(b.close) });
      charts.volume.update({ time, value: num(b.volume), color: num(b.close) >= num(b.open) ? "#26a69a80" : "#ef535080" });
      state.forming = b.final ? null : b;
      state.liveBars += 1;
    }
  }

  async function loadTape() {
    const row = state.selected;
    const body = await api("trades/latest", { symbols: row.symbol, exchange: row.exchange, n: TAPE_ROWS });
    if (keyOf(state.selected) !== keyOf(row)) return;
    const sameSymbol = state.tape.length && state.tape[0].symbol === row.symbol && state.tape[0].exchange === row.exchange;
    renderTape(body.data.slice().reverse(), sameSymbol); // newest first
    // From the newest trade shown on (trades of that same microsecond come again and are dropped by message_id).
    const newest = state.tape.length ? state.tape[0].timestamp : null;
    follow("trades", { kind: "trades", symbols: row.symbol, exchange: row.exchange, since: newest }, addTrades);
  }

  function addTrades(trades) {
    const known = new Set(state.tape.map((t) => t.message_id));
    const fresh = trades.filter((t) => !known.has(t.message_id));
    if (!fresh.length) return;
    state.liveTrades += fresh.length;
    renderTape([...fresh.reverse(), ...state.tape].slice(0, TAPE_ROWS), true);
  }

  // `trades` newest first; rows not shown before are marked fresh when `highlight`.
  function renderTape(trades, highlight) {
    const row = state.selected;
    const known = new Set(state.tape.map((t) => t.message_id));
    const tbody = $("tape").querySelector("tbody");
    tbody.replaceChildren(
      ...trades.map((t) => {
        const side = t.side === "BUY" ? "buy" : t.side === "SELL" || t.side === "SELL_SHORT" ? "sell" : "";
        return el(
          "tr",
          { class: highlight && !known.has(t.message_id) ? "fresh" : "", "data-price": t.price, "data-message-id": t.message_id },
          el("td", {}, clock(t.timestamp)),
          el("td", { class: side }, decimal(t.price)),
          el("td", {}, decimal(t.quantity)),
          el("td", { class: side }, t.side === "UNKNOWN" ? "–" : t.side.toLowerCase()),
        );
      }),
    );
    state.tape = trades;
    state.lastTradeId = trades.length ? trades[0].message_id : null;
    $("tape-note").textContent = trades.length ? `${row.symbol}, newest first, live` : "none yet";
  }

  // --- live: a subscription that opens again from its cursor when it drops ----------------------------------
  class Live {
    constructor(params, onRecords) {
      this.params = params;
      this.onRecords = onRecords;
      this.cursor = null; // of the last frame received: resumes right after it
      this.phase = null;
      this.failures = 0;
      this.closed = false;
      this.open();
    }

    open() {
      const query = new URLSearchParams(Object.entries(this.params).filter(([, v]) => v !== null && v !== undefined));
      if (this.cursor) {
        query.delete("since"); // the cursor carries it
        query.set("cursor", this.cursor);
      }
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      // A browser cannot set headers on a WebSocket: the key travels as a subprotocol (answered with "k2"), which
      // keeps it out of the URL and so out of access logs and history.
      const ws = new WebSocket(`${scheme}://${location.host}/v1/subscribe?${query}`, ["k2", `k2.key.${state.key}`]);
      let refused = null;
      ws.onmessage = (event) => {
        const lines = String(event.data).split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
        const trailer = lines.pop();
        if (trailer.error) {
          refused = trailer.error; // the reason of the close that follows
          return;
        }
        this.failures = 0;
        this.cursor = trailer.cursor;
        this.phase = trailer.phase;
        if (lines.length) this.onRecords(lines);
      };
      ws.onclose = (event) => {
        if (this.closed) return;
        if (event.code === 4401) return askForKey(refused ? refused.message : "the API key was refused");
        if (event.code === 4400 || event.code === 4500) {
          const message = `live ${this.params.kind}: ${refused ? refused.message : `closed with ${event.code}`}`;
          state.errors.push(message);
          $("status").textContent = `error: ${message}`;
          return;
        }
        // A drop, too slow (4008), a busy key or server (4429, 4503): open it again from the cursor.
        const wait = RECONNECT_MS[Math.min(this.failures, RECONNECT_MS.length - 1)];
        this.failures += 1;
        state.reconnects += 1;
        this.timer = setTimeout(() => this.open(), wait);
      };
      this.ws = ws;
    }

    close() {
      this.closed = true;
      clearTimeout(this.timer);
      this.ws.close(1000);
    }
  }

  function follow(name, params, onRecords) {
    if (state.live[name]) state.live[name].close();
    state.live[name] = new Live(params, onRecords);
  }

  function unfollow() {
    for (const name of Object.keys(state.live)) {
      if (state.live[name]) state.live[name].close();
      state.live[name] = null;
    }
  }

  async function loadQuotes() {
    const row = state.selected;
    const now = $("quote-now");
    $("quotes-chart").hidden = !state.quoted.has(keyOf(row));
    if (!state.quoted.has(keyOf(row))) {
      state.quotes = [];
      charts.bid.setData([]);
      charts.ask.setData([]);
      charts.spread.setData([]);
      now.replaceChildren(el("span", { class: "note" }, `No quotes for ${row.symbol} on ${row.exchange} in the lake.`));
      return;
    }
    const body = await api("quotes/latest", { symbols: row.symbol, exchange: row.exchange, n: 300 });
    // An ASX ask of 0 (or a missing side) means no order on that side: no spread to draw.
    const quotes = body.data.filter((q) => num(q.bid_price) > 0 && num(q.ask_price) > 0);
    state.quotes = quotes;
    const point = (q, value) => ({ time: seconds(q.timestamp), value });
    charts.bid.setData(series(quotes.map((q) => point(q, num(q.bid_price)))));
    charts.ask.setData(series(quotes.map((q) => point(q, num(q.ask_price)))));
    charts.spread.setData(series(quotes.map((q) => point(q, num(q.ask_price) - num(q.bid_price)))));
    showDecimals([charts.bid, charts.ask, charts.spread], quotes.flatMap((q) => [q.bid_price, q.ask_price]));
    charts.quotesChart.timeScale().fitContent();
    const last = quotes[quotes.length - 1];
    if (!last) {
      now.replaceChildren(el("span", { class: "note" }, "No two-sided quote among the latest."));
      return;
    }
    const bid = num(last.bid_price);
    const ask = num(last.ask_price);
    const bps = ((ask - bid) / ((ask + bid) / 2)) * 10000;
    now.replaceChildren(
      el("span", { class: "bid" }, "bid ", el("b", {}, decimal(last.bid_price)), ` × ${decimal(last.bid_quantity)}`),
      el("span", { class: "ask" }, "ask ", el("b", {}, decimal(last.ask_price)), ` × ${decimal(last.ask_quantity)}`),
      el("span", {}, "spread ", el("b", {}, (ask - bid).toPrecision(4)), ` (${bps.toFixed(1)} bps)`),
      el("span", { class: "note" }, clock(last.timestamp)),
    );
  }

  // --- pipeline health ------------------------------------------------------------------------------------
  function card(label, value, warn = false) {
    return el("div", { class: `card${warn ? " warn" : ""}` }, el("b", {}, value), el("span", {}, label));
  }

  // The level, and which sources produce in the API's process now (their first word: Binance, ASX, ...).
  function degradationCard(d) {
    const names = [...new Set(d.producers.map((p) => p.source.split(" ")[0]))];
    const value = names.length ? `${d.level} · ${names.join(", ")} producing` : `${d.level} (idle: nothing producing)`;
    const box = card("degradation", value, d.level !== "NORMAL");
    box.id = "degradation-card";
    box.title = d.producers.map((p) => `${p.level}: ${p.source}`).join("\n") || d.note;
    return box;
  }

  async function loadPipeline() {
    const p = await api("pipeline");
    state.pipeline = p;
    const kafka = p.kafka;
    const badge = $("degradation");
    badge.textContent = p.degradation.level;
    badge.className = `badge ${p.degradation.level}`;
    badge.title = p.degradation.note;
    const lakeRows = p.tables.reduce((sum, t) => sum + t.rows, 0);
    $("health-cards").replaceChildren(
      card("rows in the lake", count(lakeRows)),
      card(`rows/s (last ${p.window_seconds} s)`, p.rows_per_second.toLocaleString("en-US", { maximumFractionDigits: 1 })),
      card("sink lag (records)", kafka.available ? count(kafka.total_lag) : "n/a"),
      card("dead letters", p.dlq.available ? count(p.dlq.total) : "n/a", p.dlq.total > 0),
      card("stream gaps (filled)", `${count(p.gaps.total)} (${count(p.gaps.filled)}/${count(p.gaps.missing)} ids)`, p.gaps.missing > p.gaps.filled),
      degradationCard(p.degradation),
    );
    $("health-tables").querySelector("tbody").replaceChildren(
      ...p.tables.map((t) =>
        el("tr", {}, el("td", {}, t.table.replace("market_data.", "")), el("td", {}, count(t.rows)), el("td", {}, count(t.data_files)),
          el("td", {}, count(t.snapshots)), el("td", {}, t.rows_per_second.toFixed(1)), el("td", {}, ago(t.last_commit_at)))),
    );
    const topics = kafka.available
      ? kafka.topics.map((t) =>
          el("tr", { class: t.lag > 0 ? "lagging" : "" }, el("td", {}, t.topic), el("td", {}, count(t.end_offset)),
            el("td", {}, count(t.committed)), el("td", {}, count(t.lag)), el("td", {}, count(p.dlq.topics[`dlq.${t.topic}`] ?? 0))))
      : [el("tr", {}, el("td", { colspan: 5, class: "message" }, kafka.reason))];
    $("health-topics").querySelector("tbody").replaceChildren(...topics);
    const perSecond = new Map();
    for (const c of p.commits) {
      const t = Math.floor(seconds(c.committed_at));
      perSecond.set(t, (perSecond.get(t) || 0) + c.rows);
    }
    charts.throughput.setData([...perSecond].map(([time, value]) => ({ time, value })));
    charts.throughputChart.timeScale().fitContent();
    $("health-note").textContent = `checked ${clock(p.checked_at)} UTC in ${p.seconds.toFixed(2)} s` +
      (kafka.available ? ` · Kafka ${kafka.bootstrap}, group ${kafka.group}` : "");
  }

  // --- refresh loop ---------------------------------------------------------------------------------------
  // Candles and tape: loaded once per symbol and interval, then kept current by their subscriptions.
  // A poll that comes while the same symbol and interval are still loading waits for that load rather than
  // starting another, which would open its subscriptions a second time and drop the first ones mid-stream.
  let loading = null;
  function loadSelected() {
    if (!state.selected) return Promise.resolve();
    const key = `${keyOf(state.selected)}|${state.interval}`;
    if (loading && loading.key === key) return loading.done;
    state.forming = null;
    const done = Promise.all([loadBars(), loadTape(), loadQuotes()]).finally(() => {
      if (loading && loading.done === done) loading = null;
    });
    loading = { key, done };
    return done;
  }

  // What the candles should be drawn for; "auto" keeps the width it picked while the symbol stays selected.
  function wantedFor() {
    const row = state.selected;
    return `${keyOf(row)}|${state.interval === "auto" ? state.barsInterval || autoInterval(row) : state.interval}`;
  }

  async function refreshSelected() {
    if (!state.selected) return;
    await (state.loadedFor === wantedFor() && state.live.bars ? loadQuotes() : loadSelected());
  }

  async function refresh() {
    try {
      await loadSymbols();
      await Promise.all([refreshSelected(), loadPipeline()]);
      state.refreshes += 1;
      state.errors = [];
      $("status").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC · every ${REFRESH_MS / 1000} s`;
      document.body.dataset.refreshes = String(state.refreshes);
    } catch (error) {
      state.errors.push(String(error));
      if (error instanceof AuthError) return askForKey(error.message);
      $("status").textContent = `error: ${error.message}`;
    }
  }

  let timer = null;
  async function select(symbol, exchange) {
    state.selected = state.symbols.find((r) => r.symbol === symbol && r.exchange === exchange) || state.selected;
    renderSymbols();
    const query = new URLSearchParams({ symbol, exchange });
    history.replaceState(null, "", `${location.pathname}?${query}`);
    await loadSelected();
  }

  function askForKey(message = "") {
    clearInterval(timer);
    unfollow();
    sessionStorage.removeItem(KEY_STORE);
    $("main").hidden = true;
    $("key-form").hidden = false;
    $("key-error").textContent = message;
  }

  function start(key) {
    state.key = key;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-form").hidden = true;
    $("main").hidden = false;
    if (!charts.main) makeCharts();
    refresh();
    clearInterval(timer);
    timer = setInterval(refresh, REFRESH_MS);
  }

  // The key comes in the URL fragment (never sent to the server) and is then dropped from the address bar.
  function keyFromUrl() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const key = fragment.get("key");
    if (key) history.replaceState(null, "", location.pathname + location.search);
    return key;
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (key) start(key);
  });
  $("interval").addEventListener("change", (event) => {
    state.interval = event.target.value;
    loadSelected();
  });

  // For tests and the curious: what the charts hold, straight from the charting library.
  window.k2dash = {
    state,
    charts,
    select,
    // symbol and exchange of the candles actually drawn (the selection may be a step ahead)
    drawn: () => ({
      symbol: state.loadedFor && state.loadedFor.split("|")[0],
      exchange: state.loadedFor && state.loadedFor.split("|")[1],
      interval: state.barsInterval,
      candles: charts.candles ? charts.candles.data().length : 0,
      volume: charts.volume ? charts.volume.data().length : 0,
      quotes: charts.bid ? charts.bid.data().length : 0,
      tape: state.tape.length,
      refreshes: state.refreshes,
      live: { bars: state.liveBars, trades: state.liveTrades, reconnects: state.reconnects },
    }),
  };

  const key = keyFromUrl() || sessionStorage.getItem(KEY_STORE);
  if (key) start(key);
  else askForKey();
})();
