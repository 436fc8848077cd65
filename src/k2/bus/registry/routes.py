"""The registry's HTTP API, one router per resource family, as Confluent's Schema Registry names them.

Handlers are thin: parse the request, ask the store (the app's `state.store`), shape the answer. Every error,
the store's and the framework's, leaves as Confluent's `{"error_code": ..., "message": ...}` with Confluent's
content type, which is what confluent-kafka's SchemaRegistryClient parses (docs/stack-notes.md, "Schema registry").
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from k2.bus.compatibility import InvalidSchemaError, Level
from k2.bus.registry.store import LATEST, RegistryError, SchemaStore

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryResponse(JSONResponse):
    media_type = CONTENT_TYPE


def _store(request: Request) -> SchemaStore:
    return request.app.state.store


Store = Annotated[SchemaStore, Depends(_store)]


class SchemaRequest(BaseModel):
    """Body of register / lookup / compatibility calls, as Confluent clients send it."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")  # metadata, ruleSet: accepted, ignored

    schema_text: str = Field(alias="schema")
    schema_type: str = Field(default="AVRO", alias="schemaType")
    references: list[dict[str, Any]] = Field(default_factory=list)

    def avro_text(self) -> str:
        if self.schema_type.upper() != "AVRO":
            raise RegistryError(42201, f"schemaType {self.schema_type} is not supported: K2 stores AVRO only.")
        if self.references:
            raise RegistryError(42201, "Schema references are not supported: inline the referenced named types.")
        return self.schema_text


class ConfigRequest(BaseModel):
    compatibility: str

    def level(self) -> Level:
        try:
            return Level(self.compatibility.upper())
        except ValueError:
            choices = ", ".join(Level)
            raise RegistryError(42203, f"Invalid compatibility {self.compatibility!r}; use one of {choices}.") from None


def _version_number(version: str) -> int:
    if version in ("latest", str(LATEST)):
        return LATEST
    if version.isdigit() and int(version) > 0:
        return int(version)
    raise RegistryError(42202, f"Invalid version {version!r}: use a positive integer or 'latest'.")


def _error(status: int, error_code: int, message: str, **extra: Any) -> RegistryResponse:
    return RegistryResponse({"error_code": error_code, "message": message, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure in Confluent's error envelope: store refusals, bad schemas, malformed requests and
    unknown endpoints alike (Confluent clients read `error_code`, never FastAPI's `detail`)."""

    @app.exception_handler(RegistryError)
    def registry_error(_: Request, exc: RegistryError) -> RegistryResponse:
        return _error(exc.status, exc.error_code, exc.message, **exc.extra)

    @app.exception_handler(InvalidSchemaError)
    def invalid_schema(_: Request, exc: InvalidSchemaError) -> RegistryResponse:
        return _error(422, 42201, f"Invalid schema: {exc}. Send the Avro schema JSON as a string in 'schema'.")

    @app.exception_handler(RequestValidationError)
    def malformed(_: Request, exc: RequestValidationError) -> RegistryResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, 422, f'Malformed request ({problems}). Expected e.g. {{"schema": "<Avro JSON>"}}.')

    @app.exception_handler(HTTPException)
    def no_route(_: Request, exc: HTTPException) -> RegistryResponse:
        return _error(exc.status_code, exc.status_code, f"{exc.detail}: K2's registry does not serve this endpoint.")


# --- / ------------------------------------------------------------------------------------------------------------

root = APIRouter(default_response_class=RegistryResponse)


@root.get("/")
def index() -> dict[str, Any]:
    return {}


# --- /subjects: a subject's versions, registering and looking up schemas under it ----------------------------------

subjects = APIRouter(prefix="/subjects", default_response_class=RegistryResponse)


@subjects.get("")
def list_subjects(store: Store, deleted: bool = False) -> list[str]:
    return store.subjects(deleted)


@subjects.get("/{subject}/versions")
def versions(store: Store, subject: str, deleted: bool = False) -> list[int]:
    return store.versions(subject, deleted)


@subjects.post("/{subject}/versions")
def register(store: Store, subject: str, body: SchemaRequest) -> dict[str, Any]:
    schema_id, version = store.register(subject, body.avro_text())
    return {"id": schema_id, "subject": subject, "version": version}


@subjects.post("/{subject}")
def lookup(store: Store, subject: str, body: SchemaRequest, deleted: bool = False) -> dict[str, Any]:
    schema_id, version = store.lookup(subject, body.avro_text(), deleted)
    return {"subject": subject, "id": schema_id, "version": version, "schema": body.schema_text}


@subjects.get("/{subject}/versions/{version}")
def get_version(store: Store, subject: str, version: str, deleted: bool = False) -> dict[str, Any]:
    found = store.version(subject, _version_number(version), deleted)
    return {"subject": subject, "id": found.id, "version": found.version, "schema": found.text}


@subjects.delete("/{subject}")
def delete_subject(store: Store, subject: str, permanent: bool = False) -> list[int]:
    return store.delete_subject(subject, permanent)


# --- /schemas: schemas by global id --------------------------------------------------------------------------------

schemas = APIRouter(prefix="/schemas", default_response_class=RegistryResponse)


@schemas.get("/ids/{schema_id}")
def schema_by_id(store: Store, schema_id: int, subject: str | None = None) -> dict[str, Any]:
    # `subject` only picks a schema context in Confluent; K2 has one context, so any subject finds the id.
    return {"schema": store.schema(schema_id)}


@schemas.get("/ids/{schema_id}/versions")
def schema_versions(store: Store, schema_id: int, deleted: bool = False) -> list[dict[str, Any]]:
    return [{"subject": s, "version": v} for s, v in store.usages(schema_id, deleted)]


# --- /compatibility: would a schema be accepted? -------------------------------------------------------------------

compatibility = APIRouter(prefix="/compatibility", default_response_class=RegistryResponse)


# Stacked routes: one handler serves both the all-versions and the one-version form.
@compatibility.post("/subjects/{subject}/versions")
@compatibility.post("/subjects/{subject}/versions/{version}")
def test(
    store: Store, subject: str, body: SchemaRequest, version: str | None = None, verbose: bool = False
) -> dict[str, Any]:
    number = None if version is None else _version_number(version)
    result = store.test(subject, body.avro_text(), number)
    return {"is_compatible": result.is_compatible} | ({"messages": list(result.messages)} if verbose else {})


# --- /config: compatibility levels, registry-wide and per subject -------------------------------------------------

config = APIRouter(prefix="/config", default_response_class=RegistryResponse)


@config.get("")
@config.get("/{subject}")
def get_config(store: Store, subject: str | None = None) -> dict[str, str]:
    # A subject without a level of its own reports the level in force (Confluent's ?defaultToGlobal=true).
    return {"compatibilityLevel": store.level(subject)}


@config.put("")
@config.put("/{subject}")
def put_config(store: Store, body: ConfigRequest, subject: str | None = None) -> dict[str, str]:
    store.set_level(subject, body.level())
    return {"compatibility": body.level()}


# --- /associations: not kept -----------------------------------------------------------------------------------------

associations = APIRouter(prefix="/associations", default_response_class=RegistryResponse)


@associations.get("/resources/{namespace}/{resource}")
def resource_associations(namespace: str, resource: str) -> RegistryResponse:
    # confluent-kafka asks first; a 404 makes it fall back to TopicNameStrategy (<topic>-value).
    return _error(404, 40401, f"No associations for {resource!r}: K2 names subjects <topic>-value.")


ROUTERS = (root, subjects, schemas, compatibility, config, associations)
