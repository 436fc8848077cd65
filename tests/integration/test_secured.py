"""K2 on a secured cluster: Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512, TLS from a CA made for this module,
Kafka's StandardAuthorizer) and K2's registry behind HTTPS and basic auth, reached only through the typed
K2_KAFKA_* / K2_SCHEMA_REGISTRY_* settings.

Proven: `k2 load` + `k2 sink` land the ASX sample with exact counts, a Binance stream (the emulator) lands every
aggTrade once, `k2 up` serves both and stops cleanly, and a fresh=true read through the HTTP API sees records only
Kafka holds. A wrong password, an untrusted CA or a user without ACLs stop the command with one line
and exit code 2, nothing produced or committed, and no password in any output or file under $K2_HOME.
"""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from rich.console import Console

from k2.api import create_key
from k2.bus.apache_kafka import ApacheKafkaCluster, SaslSslListener
from k2.bus.broker import free_port
from k2.bus.registry import EmbeddedRegistry, RegistryTls
from k2.bus.stack import Endpoints
from k2.config import Settings
from k2.ingest.streaming import stream_binance
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.samples import BINANCE_CAPTURE_2021_04_04
from k2.sources.binance.emulator.server import BinanceEmulator
from tests.apache_kafka import INTERNAL_PREFIX, empty
from tests.api.conftest import FAST, serving
from tests.dashboard.k2up import k2_up, wait_for_exchanges
from tests.integration.helpers import lake_count, produce_test_trades
from tests.tls import make_ca, make_server_certificate

pytestmark = pytest.mark.apache_kafka

TRADES, QUOTES = 200_545, 169_629  # the ASX sample (tests/conftest.py, asx_sample)
SAMPLE_RECORDS = "370,180"  # trades, quotes and 6 reference-data records
K2_USER, OUTSIDER = "k2", "outsider"  # OUTSIDER logs in fine but has no ACL
# Settings the tests own: the machine's or another test's must not leak in.
OWNED = (
    "K2_KAFKA_BOOTSTRAP",
    "K2_KAFKA_EXTRA",
    "K2_SCHEMA_REGISTRY_URL",
    "K2_CATALOG_URI",
    "K2_CATALOG_PROPERTIES",
    "K2_WAREHOUSE",
    "K2_BROKER_STORAGE",
)


@dataclass(frozen=True)
class SecuredCluster:
    kafka: ApacheKafkaCluster
    registry_url: str
    ca: Path  # signed the broker's and the registry's certificates
    other_ca: Path  # a CA nobody's certificate comes from
    passwords: dict[str, str]  # Kafka SCRAM users
    registry_password: str  # basic auth of K2_USER on the registry

    def environment(self, **changes: str) -> dict[str, str]:
        """K2's settings for this cluster as user K2_USER, with `changes` (K2_* name -> value) over them."""
        env = {
            "K2_KAFKA_BOOTSTRAP": self.kafka.secured_bootstrap,
            "K2_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "K2_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "K2_KAFKA_SASL_USERNAME": K2_USER,
            "K2_KAFKA_SASL_PASSWORD": self.passwords[K2_USER],
            "K2_KAFKA_SSL_CA_LOCATION": str(self.ca),
            "K2_SCHEMA_REGISTRY_URL": self.registry_url,
            "K2_SCHEMA_REGISTRY_USERNAME": K2_USER,
            "K2_SCHEMA_REGISTRY_PASSWORD": self.registry_password,
            "K2_SCHEMA_REGISTRY_CA_LOCATION": str(self.ca),
        }
        return {**env, **changes}

    @property
    def secrets(self) -> list[str]:
        return [*self.passwords.values(), self.registry_password]


def _allow_everything(kafka: ApacheKafkaCluster, user: str) -> None:
    """ACLs letting `user` do anything on every topic and group and the cluster (created as the super user on the
    loopback PLAINTEXT listener)."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    resources = ((ResourceType.TOPIC, "*"), (ResourceType.GROUP, "*"), (ResourceType.BROKER, "kafka-cluster"))
    acls = [
        AclBinding(
            kind, name, ResourcePatternType.LITERAL, f"User:{user}", "*", AclOperation.ALL, AclPermissionType.ALLOW
        )
        for kind, name in resources
    ]
    for future in admin.create_acls(acls).values():
        future.result()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredCluster]:
    root = tmp_path_factory.mktemp("secured")
    certificate = make_server_certificate(root / "tls")
    _, _, other_ca = make_ca(root / "other-tls", "someone-elses-ca")
    # Random per run, so a password found in a log can only have come from this run's settings.
    passwords = {K2_USER: f"k2-{secrets.token_hex(12)}", OUTSIDER: f"out-{secrets.token_hex(12)}"}
    listener = SaslSslListener(certificate.certificate, certificate.key, passwords)
    registry_password = f"reg-{secrets.token_hex(12)}"
    registry = EmbeddedRegistry(
        root / "registry",
        tls=RegistryTls(certificate.certificate, certificate.key),
        users={K2_USER: registry_password},
    )
    try:
        with ApacheKafkaCluster(root / "kafka", secured=listener) as kafka, registry:
            _allow_everything(kafka, K2_USER)
            yield SecuredCluster(kafka, registry.url, certificate.ca, other_ca, passwords, registry_password)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def home(secured: SecuredCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh K2_HOME on the secured cluster, emptied of the previous test's topics; exported for subprocesses."""
    empty(secured.kafka.bootstrap)
    for name in OWNED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("K2_HOME", str(tmp_path / "k2home"))
    for name, value in secured.environment().items():
        monkeypatch.setenv(name, value)
    return Settings()


def _k2(*args: str) -> list[str]:
    return [sys.executable, "-m", "k2.cli", *args]


def _assert_no_secret(secured: SecuredCluster, home: Path, *outputs: str) -> None:
    """No password in `outputs`, nor in any file under `home` (logs, catalog, run state, the lake itself)."""
    for password in secured.secrets:
        assert not any(password in text for text in outputs), "a password reached a command's output"
        leaked = [p for p in home.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
        assert leaked == [], f"a password was written to {leaked}"


def _market_topics(secured: SecuredCluster) -> list[str]:
    admin = AdminClient({"bootstrap.servers": secured.kafka.bootstrap})
    return sorted(t for t in admin.list_topics(timeout=10).topics if not t.startswith(INTERNAL_PREFIX))


def test_load_and_a_sink_worker_land_the_sample_exactly_over_sasl_ssl_and_the_secured_registry(
    secured: SecuredCluster, home: Settings, asx_sample: Path, tmp_path: Path
) -> None:
    sink_log = tmp_path / "sink.log"
    with open(sink_log, "wb") as out:
        sink = subprocess.Popen(_k2("-v", "sink"), stdout=out, stderr=subprocess.STDOUT)
    try:
        load = subprocess.run(_k2("load", "asx", str(asx_sample)), capture_output=True, text=True, timeout=900)
        assert load.returncode == 0, load.stdout + load.stderr
        assert f"read {SAMPLE_RECORDS} = produced {SAMPLE_RECORDS} + rejected 0" in load.stdout, load.stdout
        assert "OK: every record accounted for; landed in the lake: yes" in load.stdout, load.stdout
        assert lake_count(home, "trades_v2") == TRADES
        assert lake_count(home, "quotes_v2") == QUOTES
        assert sink.poll() is None, sink_log.read_text()
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(120)
    assert sink.returncode == 0, sink_log.read_text()
    # The worker shared the partitions with the load's own sink (one consumer group): it wrote part of the lake.
    stopped = re.search(r"sink stopped: consumed ([\d,]+)", sink_log.read_text())
    assert stopped is not None, sink_log.read_text()
    assert 0 < int(stopped[1].replace(",", "")) <= TRADES + QUOTES + 6
    # The topics were created by K2 over SASL_SSL: the PLAINTEXT side sees them too.
    assert "market.equities.trades.asx" in _market_topics(secured)
    _assert_no_secret(secured, home.home_dir, load.stdout, load.stderr, sink_log.read_text())


def test_a_fresh_read_through_the_api_sees_what_only_kafka_holds(secured: SecuredCluster, home: Settings) -> None:
    endpoints = Endpoints(home.kafka_bootstrap or "", home.schema_registry_url or "", embedded=False)
    registry, _ = produce_test_trades(home, endpoints, 300)
    registry.close()
    ensure_tables(open_catalog(home))  # the lake has the table, but none of these rows
    key = create_key(home, "secured")
    with serving(home, FAST) as server, httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as http:
        params = {"symbols": "TST", "start": "2014-03-10T00:00:00Z", "end": "2014-03-11T00:00:00Z", "limit": 1000}
        assert http.get("/v1/trades", params=params).json()["data"] == []
        fresh = http.get("/v1/trades", params={**params, "fresh": "true"})
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["X-K2-Fresh-Caught-Up"] == "true"
        rows = fresh.json()["data"]
    assert sorted(int(row["trade_id"]) for row in rows) == list(range(300))
    assert lake_count(home, "trades_v2") == 0


def test_a_binance_stream_lands_every_aggtrade_once_over_sasl_ssl(secured: SecuredCluster, home: Settings) -> None:
    with BinanceEmulator([BINANCE_CAPTURE_2021_04_04], speed=0).run_in_thread() as venue:
        recon, _live = stream_binance(
            home,
            ["BTCUSDT", "ETHUSDT", "DOTUSDT"],
            ["aggTrade"],
            venue.ws_url,
            venue.rest_url,
            duration=6,
            console=Console(quiet=True),
        )
    assert recon.ok
    assert recon.produced == 1910  # every aggTrade frame of the three symbols in the capture
    assert lake_count(home, "trades_v2", "WHERE exchange = ?", ["binance"]) == 1910


def test_k2_up_serves_asx_and_binance_from_the_secured_cluster_and_stops_cleanly(
    secured: SecuredCluster, home: Settings
) -> None:
    with k2_up(home.home_dir, "--binance", "emulator", "--maintain-every", "0") as up:
        with up.client() as client:
            wait_for_exchanges(client, {"asx", "binance"}, timeout=180)
            up.wait_for_line(r"ASX: all [\d,]+ records are in the lake", 240)
            asx = client.get("/v1/symbols", params={"kind": "trades", "exchange": "asx"}).json()["data"]
            assert sum(row["count"] for row in asx) == TRADES
            # The lag probe reads the secured cluster too: every ASX trade produced, all of it committed.
            topics = {t["topic"]: t for t in client.get("/v1/pipeline").json()["kafka"]["topics"]}
            assert topics["market.equities.trades.asx"]["end_offset"] == TRADES
            assert topics["market.equities.trades.asx"]["lag"] == 0
            assert topics["market.crypto.trades.binance"]["end_offset"] > 0
        assert up.stop(timeout=60) == 0, up.output
    assert "stopped." in up.output
    _assert_no_secret(secured, home.home_dir, up.output)


@pytest.mark.parametrize(
    ("case", "command", "expected"),
    [
        ("wrong_kafka_password", "load", "refused K2's SASL login"),
        ("wrong_kafka_password", "sink", "refused K2's SASL login"),
        ("wrong_kafka_password", "up", "refused K2's SASL login"),
        ("untrusted_kafka_ca", "load", "failed the TLS handshake"),
        ("user_without_acl", "load", "lacks an ACL"),
        ("user_without_acl", "sink", "lacks an ACL"),
        ("wrong_registry_password", "load", "refused K2's credentials (401)"),
        ("wrong_registry_password", "up", "refused K2's credentials (401)"),
        ("untrusted_registry_ca", "load", "failed the TLS handshake"),
    ],
)
def test_a_refusal_is_one_line_exit_2_nothing_written_no_secret(
    secured: SecuredCluster,
    home: Settings,
    asx_sample: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    command: str,
    expected: str,
) -> None:
    changes = {
        "wrong_kafka_password": {"K2_KAFKA_SASL_PASSWORD": "not-" + secured.passwords[K2_USER]},
        "untrusted_kafka_ca": {"K2_KAFKA_SSL_CA_LOCATION": str(secured.other_ca)},
        "user_without_acl": {
            "K2_KAFKA_SASL_USERNAME": OUTSIDER,
            "K2_KAFKA_SASL_PASSWORD": secured.passwords[OUTSIDER],
        },
        "wrong_registry_password": {"K2_SCHEMA_REGISTRY_PASSWORD": "not-" + secured.registry_password},
        "untrusted_registry_ca": {"K2_SCHEMA_REGISTRY_CA_LOCATION": str(secured.other_ca)},
    }[case]
    for name, value in changes.items():
        monkeypatch.setenv(name, value)
    args = {
        "load": ("load", "asx", str(asx_sample)),
        "sink": ("sink",),
        "up": ("up", "--port", str(free_port()), "--binance", "off", "--no-asx"),
    }[command]
    done = subprocess.run(_k2(*args), capture_output=True, text=True, timeout=120)

    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    # Nothing half done: no topic created, no table written.
    assert _market_topics(secured) == []
    assert not (home.home_dir / "warehouse").exists() or lake_count(home, "trades_v2") == 0
    _assert_no_secret(secured, home.home_dir, done.stdout, done.stderr)
