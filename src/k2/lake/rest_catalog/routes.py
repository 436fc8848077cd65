"""The REST catalog's HTTP API, one router per part of the spec's paths: config, namespaces, tables, rename.

Handlers are thin: read the path, query and body, ask the backend catalog (the app's `state.backend`) or the store's
functions, answer in pyiceberg's models. Handlers are plain functions: FastAPI runs them in its thread pool, so slow
catalog calls (a database round trip per commit) never block the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import (
    ListNamespaceResponse,
    ListTableResponseEntry,
    ListTablesResponse,
    NamespaceResponse,
    TableResponse,
    UpdateNamespacePropertiesResponse,
)
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

from k2.lake.rest_catalog import store
from k2.lake.rest_catalog.store import (
    SERVED_ENDPOINTS,
    CatalogHTTPError,
    CommitTableBody,
    CreateNamespaceRequest,
    CreateTableBody,
    RenameTableRequest,
    UpdateNamespacePropertiesRequest,
    namespace_from_path,
    table_ident,
)


def _backend(request: Request) -> Catalog:
    return request.app.state.backend


Backend = Annotated[Catalog, Depends(_backend)]


def _json(model: BaseModel) -> Response:
    # IcebergBaseModel dumps by alias without nulls ("metadata-location", "format-version"), as the spec spells them.
    return Response(model.model_dump_json(), media_type="application/json")


# --- configuration ------------------------------------------------------------------------------------------------

config = APIRouter(prefix="/v1/config")


@config.get("")
def get_config(warehouse: str | None = None) -> JSONResponse:
    """No defaults or overrides: the backend owns the warehouse. `endpoints` lists what this server serves."""
    # Not pyiceberg's ConfigResponse: it dumps endpoints as objects, and the spec (and its parser) wants strings.
    return JSONResponse({"defaults": {}, "overrides": {}, "endpoints": list(SERVED_ENDPOINTS)})


# --- namespaces ---------------------------------------------------------------------------------------------------

namespaces = APIRouter(prefix="/v1/namespaces")


@namespaces.get("")
def list_namespaces(
    backend: Backend, parent: str | None = None, pageToken: str | None = None, pageSize: int | None = None
) -> Response:
    found = backend.list_namespaces(namespace_from_path(parent) if parent else ())
    listed, token = store.page(sorted(found), pageToken, pageSize)
    return _json(ListNamespaceResponse(namespaces=listed, next_page_token=token))


@namespaces.post("")
def create_namespace(backend: Backend, body: CreateNamespaceRequest) -> Response:
    namespace = tuple(body.namespace)
    backend.create_namespace(namespace, body.properties)
    return _json(NamespaceResponse(namespace=namespace, properties=backend.load_namespace_properties(namespace)))


@namespaces.get("/{namespace}")
def load_namespace(backend: Backend, namespace: str) -> Response:
    ident = namespace_from_path(namespace)
    return _json(NamespaceResponse(namespace=ident, properties=backend.load_namespace_properties(ident)))


@namespaces.head("/{namespace}", status_code=204)
def namespace_exists(backend: Backend, namespace: str) -> Response:
    if not backend.namespace_exists(namespace_from_path(namespace)):
        raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
    return Response(status_code=204)


@namespaces.delete("/{namespace}", status_code=204)
def drop_namespace(backend: Backend, namespace: str) -> Response:
    backend.drop_namespace(namespace_from_path(namespace))
    return Response(status_code=204)


@namespaces.post("/{namespace}/properties")
def update_namespace_properties(backend: Backend, namespace: str, body: UpdateNamespacePropertiesRequest) -> Response:
    if both := sorted(set(body.removals) & body.updates.keys()):
        raise CatalogHTTPError(422, "UnprocessableEntityException", f"Keys both removed and updated: {both}")
    summary = backend.update_namespace_properties(namespace_from_path(namespace), set(body.removals), body.updates)
    return _json(
        UpdateNamespacePropertiesResponse(removed=summary.removed, updated=summary.updated, missing=summary.missing)
    )


# --- tables -------------------------------------------------------------------------------------------------------

tables = APIRouter(prefix="/v1/namespaces/{namespace}/tables")


@tables.get("")
def list_tables(
    backend: Backend, namespace: str, pageToken: str | None = None, pageSize: int | None = None
) -> Response:
    found = sorted(backend.list_tables(namespace_from_path(namespace)))
    listed, token = store.page(found, pageToken, pageSize)
    entries = [ListTableResponseEntry(namespace=ident[:-1], name=ident[-1]) for ident in listed]
    return _json(ListTablesResponse(identifiers=entries, next_page_token=token))


@tables.post("")
def create_table(backend: Backend, namespace: str, body: CreateTableBody) -> Response:
    """Create the table, or with `stage-create` only its initial metadata (no metadata-location): the table
    comes to exist when the client commits the create transaction, asserting `assert-create`."""
    return _json(store.create_table(backend, table_ident(namespace, body.name), body))


@tables.get("/{table}")
def load_table(backend: Backend, namespace: str, table: str, snapshots: str | None = None) -> Response:
    loaded = backend.load_table(table_ident(namespace, table))
    metadata = store.with_snapshots(loaded.metadata, snapshots)
    return _json(TableResponse(metadata_location=loaded.metadata_location, metadata=metadata))


@tables.head("/{table}", status_code=204)
def table_exists(backend: Backend, namespace: str, table: str) -> Response:
    if not backend.table_exists(table_ident(namespace, table)):
        raise NoSuchTableError(f"Table does not exist: {namespace}.{table}")
    return Response(status_code=204)


@tables.delete("/{table}", status_code=204)
def drop_table(backend: Backend, namespace: str, table: str, purgeRequested: bool = False) -> Response:
    ident = table_ident(namespace, table)
    if purgeRequested:
        backend.purge_table(ident)
    else:
        backend.drop_table(ident)
    return Response(status_code=204)


@tables.post("/{table}")
def commit_table(backend: Backend, namespace: str, table: str, body: CommitTableBody) -> Response:
    """Check the requirements against the table as it is now and apply the updates, atomically (the backend's
    compare-and-swap of the metadata location): 409 CommitFailedException when a requirement does not hold,
    e.g. another writer committed first."""
    return _json(store.commit(backend, table_ident(namespace, table), body))


# --- rename -------------------------------------------------------------------------------------------------------

rename = APIRouter(prefix="/v1/tables")


@rename.post("/rename", status_code=204)
def rename_table(backend: Backend, body: RenameTableRequest) -> Response:
    source = (*body.source.namespace.root, body.source.name)
    destination = (*body.destination.namespace.root, body.destination.name)
    backend.rename_table(source, destination)
    return Response(status_code=204)


ROUTERS = (config, namespaces, tables, rename)
