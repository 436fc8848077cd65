"""Prometheus metrics of every long-running K2 part, in one registry per process.

Names and labels are the contract with the alert rules (deploy/prometheus/k2-alerts.yml) and the Grafana dashboard
(deploy/grafana/k2-dashboard.json); a test checks that every series those use is one K2 exports. Counters are bumped
once per batch or commit, never per record, so the hot loops pay nothing.

Exposure: the API serves GET /metrics (so `k2 up` and `k2 serve` export their in-process sink, stream and API
together); `k2 sink` and `k2 stream` take `--metrics-port` for a /metrics of their own on 127.0.0.1.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

# --- sources and producer ---------------------------------------------------------------------------------------
RECORDS_IN = Counter("k2_source_records_total", "Rows or frames read from a source", ["source"], registry=REGISTRY)
RECORDS_PRODUCED = Counter(
    "k2_produced_records_total", "Records acknowledged by Kafka, per topic", ["topic"], registry=REGISTRY
)
RECORDS_REJECTED = Counter(
    "k2_rejected_records_total",
    "Records sent to a DLQ, by the stage that refused them (source, sink) and the reason",
    ["stage", "reason"],
    registry=REGISTRY,
)
PRODUCE_FAILURES = Counter(
    "k2_produce_failures_total", "Records the broker did not acknowledge", ["topic"], registry=REGISTRY
)

# --- sink -----------------------------------------------------------------------------------------------------
SINK_CONSUMED = Counter("k2_sink_consumed_messages_total", "Messages read by sink workers", registry=REGISTRY)
SINK_WRITTEN = Counter(
    "k2_sink_written_rows_total", "Rows appended to Iceberg, per table", ["table"], registry=REGISTRY
)
SINK_DUPLICATES = Counter(
    "k2_sink_duplicate_rows_total",
    "Rows dropped because the lake already holds their message_id",
    ["table"],
    registry=REGISTRY,
)
SINK_COMMIT_SECONDS = Histogram(
    "k2_sink_commit_seconds",
    "Duration of one sink commit (Iceberg append of every table, DLQ flush, Kafka commit)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
SINK_COMMIT_FAILURES = Counter(
    "k2_sink_commit_failures_total", "Sink commits that failed, by the part that failed", ["part"], registry=REGISTRY
)
SINK_LAST_COMMIT = Gauge(
    "k2_sink_last_commit_timestamp_seconds", "Unix time of the last successful sink commit", registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "k2_consumer_lag_messages",
    "Messages in a partition the sink group has not committed (log end from real fetches, not ListOffsets)",
    ["topic", "partition"],
    registry=REGISTRY,
)

# --- Binance stream -------------------------------------------------------------------------------------------
STREAM_GAPS = Counter(
    "k2_stream_gaps_total",
    "Id gaps met on a stream, by how they ended",
    ["symbol", "channel", "outcome"],
    registry=REGISTRY,
)
STREAM_RECONNECTS = Counter(
    "k2_stream_reconnects_total",
    "WebSocket connections opened again after a drop or a planned rollover",
    ["reason"],
    registry=REGISTRY,
)

# --- Binance emulator ----------------------------------------------------------------------------------------
EMULATOR_FRAMES = Counter("k2_emulator_frames_total", "Frames the emulator sent to clients", registry=REGISTRY)
EMULATOR_CONNECTIONS = Gauge("k2_emulator_connections", "Client connections open on the emulator", registry=REGISTRY)
EMULATOR_CLOSES = Counter(
    "k2_emulator_closes_total",
    "Connections the emulator closed, by reason (faults, limits, lifetime)",
    ["reason"],
    registry=REGISTRY,
)

# --- lake and queries -----------------------------------------------------------------------------------------
LAKE_DATA_FILES = Gauge("k2_lake_data_files", "Data files in a table's current snapshot", ["table"], registry=REGISTRY)
API_REQUEST_SECONDS = Histogram(
    "k2_api_request_seconds",
    "HTTP API request duration by route template and status class",
    ["route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
API_SUBSCRIPTIONS = Gauge("k2_api_subscriptions", "WebSocket subscriptions open on the API", registry=REGISTRY)
API_SUBSCRIPTIONS_CLOSED = Counter(
    "k2_api_subscriptions_closed_total",
    "Subscriptions ended, by reason: client (it left), slow (4008: fell behind live), error (4xxx)",
    ["reason"],
    registry=REGISTRY,
)
API_SUBSCRIPTION_RECORDS = Counter(
    "k2_api_subscription_records_total",
    "Records sent to subscribers, by phase: history, tail, live",
    ["phase"],
    registry=REGISTRY,
)

# --- protection -----------------------------------------------------------------------------------------------
DEGRADATION_LEVEL = Gauge(
    "k2_degradation_level",
    "0 NORMAL, 1 SOFT, 2 GRACEFUL, 3 AGGRESSIVE, 4 CIRCUIT_BREAK (stays 0 until a controller drives it)",
    registry=REGISTRY,
)


DEGRADATION_TRANSITIONS = Counter(
    "k2_degradation_transitions_total", "Level changes, from and to", ["frm", "to"], registry=REGISTRY
)
SPILLED = Counter(
    "k2_spilled_records_total",
    "Records set aside on local disk by degradation, by priority",
    ["priority"],
    registry=REGISTRY,
)
REPLAYED = Counter("k2_replayed_records_total", "Spilled records sent on once the level allowed", registry=REGISTRY)
BREAKER_OPEN = Gauge("k2_breaker_open", "1 while a circuit breaker is open", ["breaker"], registry=REGISTRY)


def exposition() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
    """GET /metrics of this process's registry on host:port (port 0 picks a free one), in a daemon thread."""
    return start_http_server(port, addr=host, registry=REGISTRY)
