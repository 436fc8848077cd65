"""K2's schema registry: Confluent clients work against it, and it refuses schema changes that would corrupt data.

Server tests run the real EmbeddedRegistry on 127.0.0.1 in tmp_path; the compatibility rules are also tested
directly, without a server.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from k2.bus.compatibility import Level, canonical, check_compatibility, parse_schema, reader_problems
from k2.bus.registry import CONTENT_TYPE, EmbeddedRegistry
from k2.bus.registry_client import RegistryClient, RegistryError, SchemaIncompatibleError
from k2.bus.serde import encode, encoder
from k2.bus.topics import TopicName
from k2.schema.avro import avro_schema, parsed_schema
from k2.schema.fields import TRADES_V2, AssetClass, DataType

TOPIC = TopicName(AssetClass.CRYPTO, DataType.TRADES, "binance")
SUBJECT = TOPIC.subject

# --- schema variants -----------------------------------------------------------------------------------------


def trades(edit: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The real V2 trades schema, optionally edited in place by `edit`."""
    schema = copy.deepcopy(avro_schema(TRADES_V2))
    if edit is not None:
        edit(schema)
    return schema


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def price_scale_6(s: dict[str, Any]) -> None:
    field(s, "price")["type"]["scale"] = 6


def price_precision_20(s: dict[str, Any]) -> None:
    field(s, "price")["type"]["precision"] = 20


def timestamp_millis(s: dict[str, Any]) -> None:
    field(s, "timestamp")["type"]["logicalType"] = "timestamp-millis"


def add_optional_venue(s: dict[str, Any]) -> None:
    s["fields"].append({"name": "venue", "type": ["null", "string"], "default": None})


def add_required_venue(s: dict[str, Any]) -> None:
    s["fields"].append({"name": "venue", "type": "string"})


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[EmbeddedRegistry]:
    with EmbeddedRegistry(tmp_path / "registry") as running:
        yield running


@pytest.fixture
def confluent(registry: EmbeddedRegistry) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient({"url": registry.url}) as sr:
        yield sr


@pytest.fixture
def client(registry: EmbeddedRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(registry.url) as k2_client:
        yield k2_client


def register(url: str, subject: str, schema: dict[str, Any]) -> int:
    """Register with a fresh confluent-kafka client, so its cache cannot answer for the server."""
    with SchemaRegistryClient({"url": url}) as fresh:
        return fresh.register_schema(subject, Schema(json.dumps(schema), "AVRO"))


def versions(url: str, subject: str) -> list[int]:
    with SchemaRegistryClient({"url": url}) as fresh:
        return fresh.get_versions(subject)


def assert_refused(url: str, schema: dict[str, Any], field_name: str) -> None:
    register(url, SUBJECT, trades())
    with pytest.raises(SchemaRegistryError) as refused:
        register(url, SUBJECT, schema)
    assert (refused.value.http_status_code, refused.value.error_code) == (409, 409)
    assert f"field '{field_name}'" in refused.value.error_message
    assert versions(url, SUBJECT) == [1]


# --- the server, through confluent-kafka's own client ----------------------------------------------------------


def test_trade_round_trips_through_confluent_serializers_with_exact_decimal(
    confluent: SchemaRegistryClient,
) -> None:
    record = {
        "message_id": "6f1c2d3e-0000-5000-8000-000000000001",
        "trade_id": "4242",
        "symbol": "BTCUSDT",
        "exchange": "binance",
        "asset_class": "crypto",
        "timestamp": datetime(2026, 11, 2, 3, 4, 5, 123456, tzinfo=UTC),
        "price": Decimal("36.66700000"),
        "quantity": Decimal("0.00100000"),
        "currency": "USDT",
        "side": "BUY",
        "trade_conditions": ["X"],
        "source_sequence": 4242,
        "ingestion_timestamp": datetime(2026, 11, 2, 3, 4, 5, 200000, tzinfo=UTC),
        "platform_sequence": 7,
        "vendor_data": {"is_buyer_maker": "false"},
    }
    ctx = SerializationContext(str(TOPIC), MessageField.VALUE)
    framed = AvroSerializer(confluent, json.dumps(avro_schema(TRADES_V2)))(record, ctx)

    schema_id = confluent.get_latest_version(SUBJECT).schema_id
    assert framed[0] == 0 and struct.unpack(">I", framed[1:5])[0] == schema_id
    assert framed == encode(record, parsed_schema(TRADES_V2), schema_id)  # K2's own codec: byte-identical
    assert framed == encoder(TRADES_V2, schema_id)(record)  # and the producer's compiled one
    # K2's own records carry integer micros: the compiled encoder's fast path, against Confluent's serializer
    micros = {**record, "timestamp": 1_793_588_645_123_456, "ingestion_timestamp": 1_793_588_645_200_000}
    serialize = AvroSerializer(confluent, json.dumps(avro_schema(TRADES_V2)))
    assert serialize(micros, ctx) == encoder(TRADES_V2, schema_id)(micros)
    decoded = AvroDeserializer(confluent)(framed, ctx)
    assert str(decoded["price"]) == "36.66700000"
    assert decoded == record


def test_registering_the_same_schema_twice_returns_the_same_id(registry: EmbeddedRegistry) -> None:
    first = register(registry.url, SUBJECT, trades())
    reformatted = json.loads(json.dumps(trades(), indent=4, sort_keys=True))  # same schema, other text
    assert register(registry.url, SUBJECT, reformatted) == first
    assert versions(registry.url, SUBJECT) == [1]


def test_same_schema_under_two_subjects_shares_one_id(registry: EmbeddedRegistry) -> None:
    assert register(registry.url, SUBJECT, trades()) == register(registry.url, "other-value", trades())


def test_optional_field_with_default_is_accepted_as_version_2(confluent: SchemaRegistryClient) -> None:
    first = register(confluent.config()["url"], SUBJECT, trades())
    second = register(confluent.config()["url"], SUBJECT, trades(add_optional_venue))
    latest = confluent.get_latest_version(SUBJECT)
    assert (latest.version, latest.schema_id) == (2, second) and second != first


def test_new_field_without_default_is_refused(registry: EmbeddedRegistry) -> None:
    assert_refused(registry.url, trades(add_required_venue), "venue")


def test_decimal_scale_change_is_refused(registry: EmbeddedRegistry) -> None:
    assert_refused(registry.url, trades(price_scale_6), "price")


def test_decimal_precision_change_is_refused(registry: EmbeddedRegistry) -> None:
    assert_refused(registry.url, trades(price_precision_20), "price")


def test_timestamp_micros_to_millis_is_refused(registry: EmbeddedRegistry) -> None:
    assert_refused(registry.url, trades(timestamp_millis), "timestamp")


def test_unknown_subject_answers_404_with_40401(confluent: SchemaRegistryClient, registry: EmbeddedRegistry) -> None:
    with pytest.raises(SchemaRegistryError) as missing:
        confluent.get_latest_version("no-such-value")
    assert (missing.value.http_status_code, missing.value.error_code) == (404, 40401)
    response = httpx.get(f"{registry.url}/subjects/no-such-value/versions")
    assert response.headers["content-type"] == CONTENT_TYPE
    assert "POST /subjects/no-such-value/versions" in response.json()["message"]  # says what to do next


def test_compatibility_check_names_the_broken_field(registry: EmbeddedRegistry) -> None:
    register(registry.url, SUBJECT, trades())
    response = httpx.post(
        f"{registry.url}/compatibility/subjects/{SUBJECT}/versions/latest?verbose=true",
        json={"schema": json.dumps(trades(price_scale_6))},
    )
    body = response.json()
    assert body["is_compatible"] is False
    assert any("field 'price'" in m and "decimal(18,6)" in m for m in body["messages"])


def test_non_avro_schema_is_refused_with_42201(confluent: SchemaRegistryClient) -> None:
    with pytest.raises(SchemaRegistryError) as refused:
        confluent.register_schema(SUBJECT, Schema('{"type": "object"}', "JSON"))
    assert (refused.value.http_status_code, refused.value.error_code) == (422, 42201)
    assert "AVRO" in refused.value.error_message


def test_restart_on_the_same_storage_keeps_ids_and_versions(tmp_path: Path) -> None:
    with EmbeddedRegistry(tmp_path) as first:
        v1 = register(first.url, SUBJECT, trades())
        v2 = register(first.url, SUBJECT, trades(add_optional_venue))
    with EmbeddedRegistry(tmp_path) as second:
        with SchemaRegistryClient({"url": second.url}) as again:
            assert [again.get_version(SUBJECT, n).schema_id for n in (1, 2)] == [v1, v2]
        assert register(second.url, SUBJECT, trades()) == v1


def test_two_servers_on_one_store_hand_out_one_id_per_schema(tmp_path: Path) -> None:
    schemas = [trades(lambda s, n=n: s.update(name=f"record_{n}")) for n in range(8)]

    def register_all(url: str) -> list[int]:
        return [register(url, f"s{n}-value", schema) for n, schema in enumerate(schemas)]

    with EmbeddedRegistry(tmp_path) as a, EmbeddedRegistry(tmp_path) as b, ThreadPoolExecutor(2) as pool:
        from_a, from_b = pool.map(register_all, [a.url, b.url])  # racing writers on one SQLite file
    assert from_a == from_b
    assert sorted(from_a) == list(range(1, 9))


# --- K2's client ---------------------------------------------------------------------------------------------


def test_k2_client_raises_incompatible_with_the_registry_messages(client: RegistryClient) -> None:
    client.register(SUBJECT, trades())
    with pytest.raises(SchemaIncompatibleError) as refused:
        client.register(SUBJECT, trades(price_scale_6))
    assert refused.value.subject == SUBJECT
    assert any("field 'price'" in m for m in refused.value.messages)


def test_k2_client_answers_from_cache_once_it_has_asked(registry: EmbeddedRegistry, client: RegistryClient) -> None:
    schema_id = client.register(SUBJECT, trades())
    latest = client.latest(SUBJECT)
    registry.stop()  # nothing is listening now: every answer below must come from the cache
    assert client.register(SUBJECT, trades()) == schema_id
    assert client.schema_by_id(schema_id) == trades()
    assert client.latest(SUBJECT) == latest == (schema_id, 1, trades())
    with pytest.raises(RegistryError, match="unreachable"):
        client.schema_by_id(schema_id + 1)


def test_k2_client_compatibility_none_lets_a_breaking_change_through(client: RegistryClient) -> None:
    first = client.register(SUBJECT, trades())
    assert client.set_compatibility(SUBJECT, "none") == "NONE"
    assert client.register(SUBJECT, trades(price_scale_6)) != first


# --- compatibility rules, no server --------------------------------------------------------------------------


def problems(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    return reader_problems(parse_schema(new), parse_schema(old))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (price_scale_6, "decimal(18,8) became decimal(18,6)"),
        (price_precision_20, "decimal(18,8) became decimal(20,8)"),
        (timestamp_millis, "timestamp-micros became timestamp-millis"),
        (lambda s: field(s, "timestamp")["type"].pop("logicalType"), "became no logical type"),
    ],
    ids=["scale", "precision", "timestamp-unit", "logical-type-removed"],
)
def test_logical_type_changes_break_what_avro_alone_calls_compatible(
    edit: Callable[[dict[str, Any]], None], needle: str
) -> None:
    found = problems(trades(edit), trades())
    assert len(found) == 1 and needle in found[0]


def test_adding_a_logical_type_is_a_break() -> None:
    old = {"type": "record", "name": "r", "fields": [{"name": "t", "type": "long"}]}
    micros = {"type": "long", "logicalType": "timestamp-micros"}
    new = {"type": "record", "name": "r", "fields": [{"name": "t", "type": micros}]}
    assert problems(new, old) == [
        "field 't': no logical type became timestamp-micros, which changes what the stored bytes mean; "
        "revert to no logical type or publish the change under a new subject"
    ]


def test_logical_changes_are_found_inside_unions_arrays_and_maps() -> None:
    def money(scale: int) -> dict[str, Any]:
        return {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": scale}

    def record(scale: int) -> dict[str, Any]:
        return {
            "type": "record",
            "name": "r",
            "fields": [
                {"name": "maybe", "type": ["null", money(scale)], "default": None},
                {"name": "many", "type": {"type": "array", "items": money(scale)}},
                {"name": "by_key", "type": {"type": "map", "values": money(scale)}},
            ],
        }

    found = problems(record(6), record(8))
    assert [m.split(":")[0] for m in found] == ["field 'maybe'", "field 'many.[]'", "field 'by_key.{}'"]


def test_optional_field_with_default_is_compatible() -> None:
    assert problems(trades(add_optional_venue), trades()) == []


def test_structural_breaks_name_the_field() -> None:
    retyped = trades(lambda s: field(s, "source_sequence").update(type=["null", "string"]))
    fewer_sides = trades(lambda s: field(s, "side")["type"].update(symbols=["BUY", "SELL"]))
    assert problems(trades(add_required_venue), trades())[0].startswith("field 'venue': new field without a default")
    assert problems(retyped, trades())[0].startswith("field 'source_sequence'")
    assert problems(fewer_sides, trades())[0].startswith("field 'side'")


def test_transitive_levels_check_every_earlier_version() -> None:
    v1, v2 = parse_schema(trades()), parse_schema(trades(add_optional_venue))
    v3 = parse_schema(trades(lambda s: s["fields"].append({"name": "venue", "type": "string", "default": ""})))
    history = {1: v1, 2: v2}
    assert check_compatibility(v3, history, Level.BACKWARD).messages[0].startswith("against version 2: ")
    assert check_compatibility(v3, history, Level.NONE).is_compatible
    three = {1: v1, 2: parse_schema(trades(price_scale_6)), 3: v1}
    assert check_compatibility(v1, three, Level.BACKWARD).is_compatible
    assert not check_compatibility(v1, three, Level.BACKWARD_TRANSITIVE).is_compatible


def test_forward_asks_whether_old_readers_can_read_new_data() -> None:
    old, new = parse_schema(trades()), parse_schema(trades(add_required_venue))
    assert check_compatibility(new, {1: old}, Level.FORWARD).is_compatible
    assert not check_compatibility(old, {1: new}, Level.FORWARD).is_compatible


def test_canonical_form_ignores_whitespace_and_key_order_but_not_defaults() -> None:
    assert canonical(parse_schema(json.dumps(trades(), indent=2, sort_keys=True))) == canonical(parse_schema(trades()))
    no_default = trades(lambda s: field(s, "source_sequence").pop("default"))
    assert canonical(parse_schema(no_default)) != canonical(parse_schema(trades()))


def test_decimal_avro_would_silently_drop_is_an_invalid_schema() -> None:
    with pytest.raises(ValueError, match="scale"):
        parse_schema({"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 8})
