"""K2's registry as a secured peer (HTTPS + basic auth) and K2's client of it: the credentials and the CA come from
the typed K2_SCHEMA_REGISTRY_* settings; a refusal is one RegistryError line without the password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from k2.bus.registry import EmbeddedRegistry, RegistryTls
from k2.bus.registry_client import RegistryClient, RegistryError
from k2.config import Settings
from tests.tls import ServerCertificate, make_ca, make_server_certificate

PASSWORD = "registry-s3cret-pw"
SCHEMA = {"type": "record", "name": "T", "fields": [{"name": "a", "type": "long"}]}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    return make_server_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def registry(tmp_path: Path, certificate: ServerCertificate) -> Iterator[EmbeddedRegistry]:
    tls = RegistryTls(certificate.certificate, certificate.key)
    with EmbeddedRegistry(tmp_path / "registry", tls=tls, users={"k2": PASSWORD}) as running:
        yield running


def _settings(tmp_path: Path, ca: Path, password: str = PASSWORD) -> Settings:
    return Settings(
        home=tmp_path / "home",
        schema_registry_username="k2",
        schema_registry_password=password,
        schema_registry_ca_location=ca,
    )


def test_the_settings_credentials_and_ca_register_over_https(
    registry: EmbeddedRegistry, certificate: ServerCertificate, tmp_path: Path
) -> None:
    assert registry.url.startswith("https://127.0.0.1:")
    with RegistryClient.for_settings(_settings(tmp_path, certificate.ca), registry.url) as client:
        client.check()
        schema_id = client.register("t-value", SCHEMA)
        assert client.latest("t-value")[0] == schema_id


def test_no_credentials_answer_401_in_confluents_envelope(
    registry: EmbeddedRegistry, certificate: ServerCertificate
) -> None:
    response = httpx.get(f"{registry.url}/subjects", verify=str(certificate.ca))
    assert response.status_code == 401
    assert response.json() == {"error_code": 40101, "message": "Unauthorized"}
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_a_wrong_password_is_one_line_naming_the_settings_without_the_password(
    registry: EmbeddedRegistry, certificate: ServerCertificate, tmp_path: Path
) -> None:
    wrong = "not-the-" + PASSWORD
    with (
        RegistryClient.for_settings(_settings(tmp_path, certificate.ca, wrong), registry.url) as client,
        pytest.raises(RegistryError) as raised,
    ):
        client.check()
    message = str(raised.value)
    assert raised.value.status == 401
    assert "refused K2's credentials (401)" in message and "K2_SCHEMA_REGISTRY_PASSWORD" in message
    assert "\n" not in message and wrong not in message


def test_an_untrusted_certificate_is_one_line_naming_the_ca_setting(registry: EmbeddedRegistry, tmp_path: Path) -> None:
    _, _, other_ca = make_ca(tmp_path / "other", "other-ca")
    with (
        RegistryClient.for_settings(_settings(tmp_path, other_ca), registry.url) as client,
        pytest.raises(RegistryError) as raised,
    ):
        client.check()
    message = str(raised.value)
    assert "failed the TLS handshake" in message and "K2_SCHEMA_REGISTRY_CA_LOCATION" in message
    assert "\n" not in message and PASSWORD not in message


@pytest.mark.parametrize(
    "authorization",
    ["Basic !!!not-base64", "Bearer abc", "Basic " + "azI=", "Basic " + "bm9ib2R5OnJlZ2lzdHJ5LXMzY3JldC1wdw=="],
)
def test_malformed_or_unknown_credentials_answer_401(
    registry: EmbeddedRegistry, certificate: ServerCertificate, authorization: str
) -> None:
    # "azI=" is "k2" without a password; the last is nobody:<the right password>
    response = httpx.get(
        f"{registry.url}/subjects", headers={"Authorization": authorization}, verify=str(certificate.ca)
    )
    assert response.status_code == 401
