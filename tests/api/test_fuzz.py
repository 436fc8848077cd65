"""Property test over the OpenAPI description: schemathesis turns each documented GET into hypothesis strategies of
schema-valid and schema-violating requests and runs every one of its checks on each answer: no 5xx, only declared
statuses, content types, headers and bodies, schema-violating requests refused, schema-valid ones accepted, and the
authentication checks (the same request without a key must be refused).

Schema-valid requests may still break a rule JSON Schema cannot state (start before end, a real calendar date, a
known time zone, a cursor this API issued): those answer 400 `invalid_query`, which the description documents, so
400 counts as an acceptance of valid data only with that code. Anything the schema can state it states (422).

The server is a whole deployment — its own lake and a running Kafka + registry — so `fresh=true` reads really read
a tail; without Kafka they answer a documented 503 (tests/api/test_reads.py).

Driven by hand rather than through schemathesis' pytest plugin, which does not load under pytest 9.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation

from k2.api import create_key
from k2.api.params import MULTI_VALUED, SYMBOLS_PATTERN
from k2.bus.stack import Stack
from tests.api.conftest import build_lake, serving

EXAMPLES_PER_MODE = 8
# schemathesis' default for positive_data_acceptance plus 400 (the rules above) and 414: the URL limit counts the
# encoded bytes of all parameters together, which no parameter's schema can state.
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "414", "429", "5xx"]
# schemathesis' default for negative_data_rejection plus 414: a long enough invalid request is refused for its length
# before any parameter is read, which is a refusal too.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "5xx"]


def test_every_check_passes_on_generated_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_hypothesis_home_dir(tmp_path / "hypothesis")  # its caches go to the test's directory, not the repository
    lake = build_lake(tmp_path / "k2home")
    for var in ("K2_KAFKA_BOOTSTRAP", "K2_SCHEMA_REGISTRY_URL"):
        monkeypatch.delenv(var, raising=False)
    with Stack(lake.settings), serving(lake.settings) as server:
        _fuzz(server.url, create_key(lake.settings, "fuzz"))


def _fuzz(url: str, api_key: str) -> None:
    load_all_checks()
    assert len(CHECKS.get_all()) >= 14  # all of them, the authentication and negative-data checks included
    config = SchemathesisConfig.from_dict(
        {
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REJECTED},
            }
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:
        # Without parameters there is nothing to make invalid (/health, /ready, /metrics).
        negatable = bool(operation.query or operation.headers) and operation.path.startswith("/v1")
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,):
            _check(operation, mode, url, api_key)


def _check(operation: APIOperation, mode: GenerationMode, url: str, api_key: str) -> None:
    """EXAMPLES_PER_MODE requests of `mode` to `operation`, each answer through every check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def every_check(case: schemathesis.Case) -> None:
        assume(not _not_negative_on_the_wire(case))
        if case.path == "/v1/replay" and _valid_pace((case.query or {}).get("speed", 0)):
            # A slow pace is a valid request that takes hours; the pacing has its own test. An invalid one stays.
            case.query = {**(case.query or {}), "speed": 0}
        response = case.call_and_validate(base_url=url, headers={"X-API-Key": api_key}, checks=CHECKS.get_all())
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"], response.text
            if mode is GenerationMode.POSITIVE and response.status_code == 400:
                assert error["code"] == "invalid_query", response.text

    every_check()


def _not_negative_on_the_wire(case: schemathesis.Case) -> bool:
    """Whether serialising undid the mutation of a negative case, so the server gets a valid request that
    schemathesis would still expect refused: a query value of {} or [] sends no parameter at all, and a scalar, an
    object's keys or items of another type given to the `symbols` array are sent as text, valid when each is a name."""
    lists = _list_parameters(case.operation)
    for name, value in (case.query or {}).items():
        if value == {} or value == []:
            return True
        if name in lists and value is not None:
            items = list(value) if isinstance(value, (list, dict)) else [value]
            mutated = not isinstance(value, list) or not all(isinstance(item, str) for item in items)
            if mutated and all(re.fullmatch(SYMBOLS_PATTERN, _as_sent(item)) for item in items):
                return True
    return False


def _list_parameters(operation: APIOperation) -> set[str]:
    """The operation's query parameters that may repeat and are lists in its schema (`symbol` is one name on the
    order-book routes, a list elsewhere)."""
    names = set()
    for parameter in operation.query:
        schema = parameter.definition.get("schema", {})
        if parameter.name in MULTI_VALUED and any(s.get("type") == "array" for s in [schema, *schema.get("anyOf", [])]):
            names.add(parameter.name)
    return names


def _valid_pace(speed: object) -> bool:
    """Whether the server would take `speed` as a pace (a number from 0 to 1000000, as text on the wire)."""
    try:
        return 0 <= float(_as_sent(speed)) <= 1_000_000
    except (TypeError, ValueError):
        return False


def _as_sent(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
