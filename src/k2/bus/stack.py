"""Where the log and the registry are: configured endpoints, a running K2 stack, or ones started right now.

Resolution order for each of Kafka and the registry:
  1. K2_KAFKA_BOOTSTRAP / K2_SCHEMA_REGISTRY_URL when set (real clusters);
  2. a stack another K2 process runs on this $K2_HOME (recorded in run/stack.json while it lives);
  3. otherwise this process starts its own (a broker subprocess + registry thread), records it in
     run/stack.json for the duration so sink workers can find it, and stops both on exit.

The broker it starts is the embedded Tansu by default, or a local Apache Kafka node with `broker="kafka"`
(`k2 stack --broker kafka`, k2.bus.apache_kafka). Other processes find either one the same way, in run/stack.json.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from k2.bus.apache_kafka import ApacheKafkaCluster
from k2.bus.broker import EmbeddedBroker
from k2.bus.clients import check_access
from k2.bus.registry import EmbeddedRegistry
from k2.bus.registry_client import RegistryClient
from k2.config import BrokerKind, Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    registry_url: str
    embedded: bool  # True when this process or another K2 process on this home owns them


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reachable(hostports: str) -> bool:
    """Something accepts TCP connections at host:port, or at one of a comma-separated list (within half a second
    each)."""
    for hostport in hostports.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            continue
    return False


def _state_file(settings: Settings) -> Path:
    return settings.run_dir / "stack.json"


def running_stack(settings: Settings) -> Endpoints | None:
    """The stack another live K2 process serves on this home, if any (stale records are ignored)."""
    path = _state_file(settings)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state["pid"])) or not reachable(state["bootstrap"]):
        return None
    return Endpoints(state["bootstrap"], state["registry_url"], embedded=True)


NO_KAFKA = (
    "no Kafka/registry to read from: start the stack with `k2 stack` on this K2_HOME, "
    "or set K2_KAFKA_BOOTSTRAP and K2_SCHEMA_REGISTRY_URL"
)


def existing_endpoints(settings: Settings) -> Endpoints | None:
    """The Kafka and registry a process should use without starting any: configured ones (K2_KAFKA_BOOTSTRAP and
    K2_SCHEMA_REGISTRY_URL) first, else the stack another K2 process serves on this home; None when neither is."""
    shared = None if (settings.kafka_bootstrap and settings.schema_registry_url) else running_stack(settings)
    bootstrap = settings.kafka_bootstrap or (shared.bootstrap if shared else None)
    registry_url = settings.schema_registry_url or (shared.registry_url if shared else None)
    if bootstrap is None or registry_url is None:
        return None
    return Endpoints(bootstrap, registry_url, embedded=settings.kafka_bootstrap is None)


def check_configured(settings: Settings, endpoints: Endpoints) -> None:
    """Fail at once, with one line, when a configured Kafka or registry refuses K2's credentials or certificate
    (clients.KafkaAccessError, registry_client.RegistryError), before a run has produced or consumed anything.
    Endpoints K2 started itself on loopback are not checked: they take no credentials."""
    if settings.kafka_bootstrap:
        check_access(settings, endpoints.bootstrap)
    if settings.schema_registry_url:
        with RegistryClient.for_settings(settings, endpoints.registry_url) as registry:
            registry.check()


class Stack:
    """Context manager yielding Endpoints; stops whatever it started (and only that) on exit."""

    def __init__(
        self,
        settings: Settings,
        broker_port: int = 0,
        registry_port: int = 0,
        broker: BrokerKind | str = BrokerKind.tansu,
    ) -> None:
        self.settings = settings
        self._broker_port = broker_port
        self._registry_port = registry_port
        self._kind = BrokerKind(broker)
        self._exit = ExitStack()
        self.broker: EmbeddedBroker | ApacheKafkaCluster | None = None
        self.registry: EmbeddedRegistry | None = None
        self._owns_state = False

    def __enter__(self) -> Endpoints:
        s = self.settings
        shared = None if (s.kafka_bootstrap and s.schema_registry_url) else running_stack(s)
        try:
            bootstrap = s.kafka_bootstrap or (shared.bootstrap if shared else None)
            if bootstrap is None:
                self.broker = self._new_broker()
                self._exit.enter_context(self.broker)
                bootstrap = self.broker.bootstrap
            registry_url = s.schema_registry_url or (shared.registry_url if shared else None)
            if registry_url is None:
                self.registry = EmbeddedRegistry(s.home_dir / "registry", port=self._registry_port)
                self.registry.start()
                self._exit.callback(self.registry.stop)
                registry_url = self.registry.url
            check_configured(s, Endpoints(bootstrap, registry_url, embedded=False))
        except BaseException:
            self._exit.close()
            raise
        # Recorded whenever this process serves something others need: its broker, or the registry beside a
        # configured Kafka (a `k2 sink` on this home then finds the registry, and the bootstrap is the same).
        if self.broker is not None or self.registry is not None:
            state = {"pid": os.getpid(), "bootstrap": bootstrap, "registry_url": registry_url}
            if self.broker is not None:
                state["broker"] = self._kind.value
            _state_file(s).write_text(json.dumps(state))
            self._owns_state = True
        embedded = self.broker is not None or shared is not None
        return Endpoints(bootstrap, registry_url, embedded=embedded)

    def _new_broker(self) -> EmbeddedBroker | ApacheKafkaCluster:
        if self._kind is BrokerKind.kafka:
            return ApacheKafkaCluster.for_settings(self.settings, port=self._broker_port)
        return EmbeddedBroker.for_settings(self.settings, port=self._broker_port)

    def __exit__(self, *exc: object) -> None:
        if self._owns_state:
            _state_file(self.settings).unlink(missing_ok=True)
        self._exit.close()
