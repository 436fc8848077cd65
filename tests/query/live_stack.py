"""A real embedded stack (broker + registry) beside a real lake, with the real producer and sink: what fresh reads and
subscriptions are tested on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka.admin import AdminClient

from k2.bus.clients import ensure_topics, producer_config
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Endpoints, Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink
from k2.query.engine import QueryEngine
from k2.query.fresh import FreshSource
from k2.schema import TRADES_V2
from k2.schema.fields import AssetClass, DataType

TOPIC = TopicName(AssetClass.EQUITIES, DataType.TRADES, "test")
DAY = datetime(2014, 3, 10, tzinfo=UTC)  # make_trade(n) is at DAY + n ms


@dataclass
class Live:
    stack: Stack
    endpoints: Endpoints
    settings: Settings
    registry: RegistryClient
    unsunk: dict[tuple[str, int], int] = field(default_factory=dict)  # end offsets produced since the last sink run

    @property
    def source(self) -> FreshSource:
        return FreshSource.from_endpoints(self.endpoints, self.settings, budget_seconds=20)

    def produce(self, records: list[dict]) -> None:
        """Send records to the trades topic and wait until the broker has acknowledged each of them."""
        self.produce_to("test", records)

    def produce_to(self, exchange: str, records: list[dict]) -> None:
        """Send records to `exchange`'s trades topic (created when missing) and wait for every acknowledgement."""
        topic = TopicName(AssetClass.EQUITIES, DataType.TRADES, exchange)
        ensure_topics(AdminClient({"bootstrap.servers": self.endpoints.bootstrap}), self.settings, [str(topic)])
        producer = RecordProducer(producer_config(self.settings, self.endpoints.bootstrap), self.registry)
        producer.send(SourceBatch(TRADES_V2, AssetClass.EQUITIES, exchange, records=records))
        producer.close()
        self.unsunk.update(producer.stats.end_offsets)

    def sink_everything(self) -> None:
        """Run the real sink on the topics produced to until all they hold is committed to the lake."""
        bootstrap = self.endpoints.bootstrap
        targets, self.unsunk = self.unsunk, {}
        topics = sorted({topic for topic, _partition in targets} | {str(TOPIC)})
        sink = IcebergSink(self.settings, bootstrap, self.registry, open_catalog(self.settings), topics=topics)
        sink.run(until=lambda s: all(s.committed.get(k, -1) >= end for k, end in targets.items()))

    def engine(self) -> QueryEngine:
        return QueryEngine(open_catalog(self.settings))
