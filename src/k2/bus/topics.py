"""Topic naming, the one place it is defined: market.{asset_class}.{data_type}.{exchange}, DLQ = dlq.<topic>."""

from __future__ import annotations

from dataclasses import dataclass

from k2.schema.fields import RECORDS_BY_TYPE, AssetClass, DataType, RecordSpec

DLQ_PREFIX = "dlq."
TOPIC_PREFIX = "market."
# Subscribing by pattern lets one sink follow every venue, including topics created after it started.
MARKET_TOPIC_PATTERN = r"^market\.[a-z_]+\.[a-z_]+\.[a-z0-9_]+$"


@dataclass(frozen=True)
class TopicName:
    asset_class: AssetClass
    data_type: DataType
    exchange: str

    def __str__(self) -> str:
        return f"{TOPIC_PREFIX}{self.asset_class.value}.{self.data_type.value}.{self.exchange.lower()}"

    @property
    def spec(self) -> RecordSpec:
        return RECORDS_BY_TYPE[self.data_type]

    @property
    def subject(self) -> str:
        """Registry subject (TopicNameStrategy, as confluent-kafka's serializers use by default)."""
        return f"{self}-value"

    @property
    def dlq(self) -> str:
        return dlq_topic(str(self))

    @classmethod
    def parse(cls, topic: str) -> TopicName:
        parts = topic.split(".")
        if len(parts) != 4 or parts[0] != TOPIC_PREFIX.rstrip("."):
            raise ValueError(f"not a K2 market topic (market.<asset_class>.<data_type>.<exchange>): {topic!r}")
        return cls(AssetClass(parts[1]), DataType(parts[2]), parts[3])


def dlq_topic(topic: str) -> str:
    return f"{DLQ_PREFIX}{topic}"
