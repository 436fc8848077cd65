"""A columnar batch (SourceBatch.table) reaches Kafka as exactly the messages its records would have made."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from k2.bus.clients import ensure_topics, producer_config
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.schema.fields import TRADES_V2, AssetClass, DataType
from k2.sources.asx import AsxSource

pytestmark = pytest.mark.integration


def read_all(bootstrap: str, topic: str, ends: dict[tuple[str, int], int]) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of every message of `topic` up to the produced end offsets."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False})
    wanted = {p: end for (t, p), end in ends.items() if t == topic}
    consumer.assign([TopicPartition(topic, p, 0) for p in wanted])
    got: list[tuple[int, int, bytes, bytes]] = []
    try:
        while len(got) < sum(wanted.values()):
            for msg in consumer.consume(10_000, timeout=5):
                assert msg.error() is None, msg.error()
                got.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return sorted(got)


def test_columnar_and_dict_batches_produce_the_same_messages(settings: Settings, asx_sample: Path) -> None:
    # The first four trades batches of the real sample (three files: 11, BHP's 50,000 + 41,631, 232), both ways.
    columnar = [b for b in AsxSource(asx_sample).batches() if b.spec is TRADES_V2][:4]
    rows = [b for b in AsxSource(asx_sample, columnar=False).batches() if b.spec is TRADES_V2][:4]
    assert all(b.table is not None and not b.records for b in columnar)
    assert [b.record_count for b in columnar] == [len(b.records) for b in rows] == [11, 50_000, 41_631, 232]
    for table_batch, dict_batch in zip(columnar, rows, strict=True):
        stamp = table_batch.table.column("ingestion_timestamp")[0].value  # one clock reading per chunk
        for record in dict_batch.records:
            record["ingestion_timestamp"] = stamp
        table_batch.exchange, dict_batch.exchange = "cmpcols", "cmprows"  # a topic per form

    topics = [str(TopicName(AssetClass.EQUITIES, DataType.TRADES, name)) for name in ("cmpcols", "cmprows")]
    with Stack(settings) as endpoints:
        ensure_topics(AdminClient({"bootstrap.servers": endpoints.bootstrap}), settings, topics)
        registry = RegistryClient(endpoints.registry_url)
        producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
        for batch in [*columnar, *rows]:
            producer.send(batch)
        producer.close()
        ends = producer.stats.end_offsets
        cols, dicts = (read_all(endpoints.bootstrap, topic, ends) for topic in topics)

    assert producer.stats.produced == {topics[0]: 91_874, topics[1]: 91_874}
    assert len(cols) == 91_874
    assert cols == dicts  # same partition (key = symbol), offset, key and bytes, message for message
