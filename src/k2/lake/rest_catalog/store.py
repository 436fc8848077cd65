"""An Iceberg REST catalog server in front of any pyiceberg catalog (K2's SQL catalog by default).

One endpoint for many sink workers and readers, with the catalog database's credentials in one place: clients set
K2_CATALOG_PROPERTIES='{"type": "rest", "uri": "http://host:8181"}' and need no database access. The server speaks
the subset of the Apache Iceberg REST catalog API (open-api/rest-catalog-open-api.yaml) that pyiceberg's RestCatalog
uses: config, namespaces, tables, single-table commits and renames. Views, register, server-side scan planning,
multi-table transactions, metrics and credential vending are not served and not advertised in /v1/config.

Bodies are pyiceberg's own pydantic models (TableMetadata, CommitTableRequest, TableRequirement, TableUpdate...);
errors use the spec's ErrorModel, {"error": {"message", "type", "code"}}. Commits are delegated whole to the backend's
`commit_table`, which checks the requirements and swaps the metadata pointer atomically: a requirement not met or a
lost race is a 409 CommitFailedException, which pyiceberg clients (and the sink) retry.

Storage is not proxied: clients read and write data files themselves, with their own `s3.*` properties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import (
    DEFAULT_ENDPOINTS,
    Capability,
    CreateTableRequest,
    ListNamespaceResponse,
    ListTableResponseEntry,
    ListTablesResponse,
    NamespaceResponse,
    TableResponse,
    UpdateNamespacePropertiesResponse,
)
from pyiceberg.catalog.rest.response import ErrorResponse, ErrorResponseMessage
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchIdentifierError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io import load_file_io
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableRequest, StagedTable, Table, TableIdentifier
from pyiceberg.table.metadata import TableMetadata, TableMetadataV1, new_table_metadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortOrder
from pyiceberg.table.update import AssertCreate, update_table_metadata
from pyiceberg.typedef import IcebergBaseModel, Identifier
from starlette.exceptions import HTTPException as StarletteHTTPException

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.redact import redact

# Multipart namespaces in paths and `parent` are joined by the unit separator (the spec's default, %1F).
NAMESPACE_SEPARATOR = "\x1f"

# (status, ErrorModel type) per backend exception, as the spec's examples name them.
_ERRORS: dict[type[Exception], tuple[int, str]] = {
    NoSuchTableError: (404, "NoSuchTableException"),
    NoSuchNamespaceError: (404, "NoSuchNamespaceException"),
    TableAlreadyExistsError: (409, "AlreadyExistsException"),
    NamespaceAlreadyExistsError: (409, "AlreadyExistsException"),
    NamespaceNotEmptyError: (409, "NamespaceNotEmptyException"),
    CommitFailedException: (409, "CommitFailedException"),
    NoSuchIdentifierError: (400, "BadRequestException"),
    # pyiceberg raises ValueError for what the request asked that cannot be done (an update that does not apply,
    # no location to put a table): the client's fault, as the spec's 400 says.
    ValueError: (400, "BadRequestException"),
}


class CatalogHTTPError(Exception):
    """An error answered in the spec's ErrorModel with this status and type."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type = status, type_


# --- request bodies pyiceberg has no model for (its client sends plain dicts) ----------------------------------------
class CreateNamespaceRequest(BaseModel):
    namespace: list[str] = Field(min_length=1)
    properties: dict[str, str] = Field(default_factory=dict)


class UpdateNamespacePropertiesRequest(BaseModel):
    removals: list[str] = Field(default_factory=list)
    updates: dict[str, str] = Field(default_factory=dict)


class RenameTableRequest(IcebergBaseModel):
    source: TableIdentifier
    destination: TableIdentifier


class _CreateTableRequest(CreateTableRequest):
    # Optional in the spec; pyiceberg's client always sends them, other clients need not.
    location: str | None = Field(default=None)
    partition_spec: PartitionSpec | None = Field(alias="partition-spec", default=None)
    write_order: SortOrder | None = Field(alias="write-order", default=None)


class _CommitTableRequest(CommitTableRequest):
    identifier: TableIdentifier | None = Field(default=None)  # optional in the spec: the path names the table


# Advertised in /v1/config; a pyiceberg client refuses an endpoint not listed. Register and the metrics/transactions
# routes of the spec's default set are not served, so the list is explicit.
SERVED_ENDPOINTS: tuple[str, ...] = tuple(
    sorted(
        str(e)
        for e in (
            *(e for e in DEFAULT_ENDPOINTS if e != Capability.V1_REGISTER_TABLE),
            Capability.V1_NAMESPACE_EXISTS,
            Capability.V1_TABLE_EXISTS,
        )
    )
)


def _json(model: BaseModel) -> Response:
    # IcebergBaseModel dumps by alias without nulls ("metadata-location", "format-version"), as the spec spells them.
    return Response(model.model_dump_json(), media_type="application/json")


def _error(status: int, type_: str, message: str) -> JSONResponse:
    body = ErrorResponse(error=ErrorResponseMessage(message=message, type=type_, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


def namespace_from_path(text: str) -> Identifier:
    """A namespace path parameter (or `parent`), already URL-decoded: its parts joined by the unit separator."""
    parts = tuple(text.split(NAMESPACE_SEPARATOR))
    if not all(parts):
        raise CatalogHTTPError(400, "BadRequestException", f"Invalid namespace {text!r}: empty level")
    return parts


def _page(items: Sequence[Any], token: str | None, size: int | None) -> tuple[list[Any], str | None]:
    """Offset pagination: the token is the index of the next item. Without a page size, everything at once."""
    start = int(token) if token else 0
    if start < 0 or (size is not None and size <= 0):
        raise CatalogHTTPError(400, "BadRequestException", "pageToken must be >= 0 and pageSize > 0")
    if size is None:
        return list(items[start:]), None
    end = start + size
    return list(items[start:end]), (str(end) if end < len(items) else None)


def _with_snapshots(metadata: TableMetadata, mode: str | None) -> TableMetadata:
    """`snapshots=refs` keeps only the snapshots a branch or tag points at; `all` (the default) keeps every one."""
    if mode in (None, "all"):
        return metadata
    if mode != "refs":
        raise CatalogHTTPError(400, "BadRequestException", f"snapshots must be 'all' or 'refs', not {mode!r}")
    referenced = {ref.snapshot_id for ref in metadata.refs.values()}
    return metadata.model_copy(update={"snapshots": [s for s in metadata.snapshots if s.snapshot_id in referenced]})


def _staged_for_create(backend: Catalog, identifier: Identifier, request: CommitTableRequest) -> StagedTable:
    """The not-yet-existing table a create transaction (stage-create, then a commit asserting `assert-create`)
    commits to, its metadata built from the commit's own updates; the backend then creates it atomically."""
    metadata = update_table_metadata(
        TableMetadataV1.model_construct(last_column_id=-1, schema=Schema()), request.updates, enforce_validation=True
    )
    return StagedTable(
        identifier=identifier,
        metadata=metadata,
        metadata_location="",
        io=load_file_io(backend.properties, metadata.location),
        catalog=backend,
    )


def _staged_metadata(backend: Catalog, ident: Identifier, args: dict[str, Any]) -> TableMetadata:
    """The metadata a stage-create answers: the new table as `create_table` would make it, not yet committed.

    Not pyiceberg's `create_table_transaction(...).table_metadata`: that applies the create's own updates on top of
    the new metadata, so it lists the schema, spec and sort order twice under the same ids. pyiceberg's client does
    not mind; Iceberg Java's parser refuses it ("Multiple entries with same key"), which failed every Spark
    CREATE TABLE ... AS SELECT and REPLACE TABLE through this server. The transaction still resolves the location.
    """
    location = backend.create_table_transaction(ident, **args).table_metadata.location
    return new_table_metadata(
        schema=args["schema"],
        partition_spec=args["partition_spec"],
        sort_order=args["sort_order"],
        location=location,
        properties=dict(args["properties"]),  # a copy: new_table_metadata pops format-version from it
    )


def rest_catalog_app(backend: Catalog) -> FastAPI:
    """The REST catalog API over `backend`. Handlers are plain functions: FastAPI runs them in its thread pool,
    so slow catalog calls (a database round trip per commit) never block the event loop."""
    # No /docs or /redoc: clients speak the Iceberg REST protocol, and FastAPI's pages load from a CDN (blank offline).
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        title="K2 Iceberg REST catalog",
        description="The Apache Iceberg REST catalog API (namespaces, tables, commits) over K2's catalog.",
        version="1",
    )

    @app.exception_handler(CatalogHTTPError)
    async def _catalog_error(_request: Request, exc: CatalogHTTPError) -> JSONResponse:
        return _error(exc.status, exc.type, redact(str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No such route or method: still the ErrorModel, e.g. {"type": "NotFoundException", "code": 404}
        kind = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "") + "Exception"
        return _error(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return _error(400, "BadRequestException", f"Malformed request: {problems}")

    def _handler(status: int, type_: str) -> Callable[[Request, Exception], Any]:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return _error(status, type_, redact(str(exc)) or type(exc).__name__)

        return handle

    for exc_type, (status, type_) in _ERRORS.items():
        app.add_exception_handler(exc_type, _handler(status, type_))
    # Anything else is the server's fault; uvicorn still logs the traceback.
    app.add_exception_handler(Exception, _handler(500, "InternalServerError"))

    def table_ident(namespace: str, table: str) -> Identifier:
        return (*namespace_from_path(namespace), table)

    # --- configuration --------------------------------------------------------------------------------------------
    @app.get("/v1/config")
    def get_config(warehouse: str | None = None) -> JSONResponse:
        """No defaults or overrides: the backend owns the warehouse. `endpoints` lists what this server serves."""
        # Not pyiceberg's ConfigResponse: it dumps endpoints as objects, and the spec (and its parser) wants strings.
        return JSONResponse({"defaults": {}, "overrides": {}, "endpoints": list(SERVED_ENDPOINTS)})

    # --- namespaces -----------------------------------------------------------------------------------------------
    @app.get("/v1/namespaces")
    def list_namespaces(
        parent: str | None = None, pageToken: str | None = None, pageSize: int | None = None
    ) -> Response:
        found = backend.list_namespaces(namespace_from_path(parent) if parent else ())
        page, token = _page(sorted(found), pageToken, pageSize)
        return _json(ListNamespaceResponse(namespaces=page, next_page_token=token))

    @app.post("/v1/namespaces")
    def create_namespace(body: CreateNamespaceRequest) -> Response:
        namespace = tuple(body.namespace)
        backend.create_namespace(namespace, body.properties)
        return _json(NamespaceResponse(namespace=namespace, properties=backend.load_namespace_properties(namespace)))

    @app.get("/v1/namespaces/{namespace}")
    def load_namespace(namespace: str) -> Response:
        ident = namespace_from_path(namespace)
        return _json(NamespaceResponse(namespace=ident, properties=backend.load_namespace_properties(ident)))

    @app.head("/v1/namespaces/{namespace}", status_code=204)
    def namespace_exists(namespace: str) -> Response:
        if not backend.namespace_exists(namespace_from_path(namespace)):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        return Response(status_code=204)

    @app.delete("/v1/namespaces/{namespace}", status_code=204)
    def drop_namespace(namespace: str) -> Response:
        backend.drop_namespace(namespace_from_path(namespace))
        return Response(status_code=204)

    @app.post("/v1/namespaces/{namespace}/properties")
    def update_namespace_properties(namespace: str, body: UpdateNamespacePropertiesRequest) -> Response:
        if both := sorted(set(body.removals) & body.updates.keys()):
            raise CatalogHTTPError(422, "UnprocessableEntityException", f"Keys both removed and updated: {both}")
        summary = backend.update_namespace_properties(namespace_from_path(namespace), set(body.removals), body.updates)
        return _json(
            UpdateNamespacePropertiesResponse(removed=summary.removed, updated=summary.updated, missing=summary.missing)
        )

    # --- tables ---------------------------------------------------------------------------------------------------
    @app.get("/v1/namespaces/{namespace}/tables")
    def list_tables(namespace: str, pageToken: str | None = None, pageSize: int | None = None) -> Response:
        found = sorted(backend.list_tables(namespace_from_path(namespace)))
        page, token = _page(found, pageToken, pageSize)
        entries = [ListTableResponseEntry(namespace=ident[:-1], name=ident[-1]) for ident in page]
        return _json(ListTablesResponse(identifiers=entries, next_page_token=token))

    @app.post("/v1/namespaces/{namespace}/tables")
    def create_table(namespace: str, body: _CreateTableRequest) -> Response:
        """Create the table, or with `stage-create` only its initial metadata (no metadata-location): the table
        comes to exist when the client commits the create transaction, asserting `assert-create`."""
        ident = table_ident(namespace, body.name)
        args: dict[str, Any] = {
            "schema": body.table_schema,
            "location": body.location,
            "partition_spec": body.partition_spec or UNPARTITIONED_PARTITION_SPEC,
            "sort_order": body.write_order or UNSORTED_SORT_ORDER,
            "properties": body.properties,
        }
        if not body.stage_create:
            created = backend.create_table(ident, **args)
            return _json(TableResponse(metadata_location=created.metadata_location, metadata=created.metadata))
        if backend.table_exists(ident):
            raise TableAlreadyExistsError(f"Table already exists: {'.'.join(ident)}")
        return _json(TableResponse(metadata_location=None, metadata=_staged_metadata(backend, ident, args)))

    @app.get("/v1/namespaces/{namespace}/tables/{table}")
    def load_table(namespace: str, table: str, snapshots: str | None = None) -> Response:
        loaded = backend.load_table(table_ident(namespace, table))
        metadata = _with_snapshots(loaded.metadata, snapshots)
        return _json(TableResponse(metadata_location=loaded.metadata_location, metadata=metadata))

    @app.head("/v1/namespaces/{namespace}/tables/{table}", status_code=204)
    def table_exists(namespace: str, table: str) -> Response:
        if not backend.table_exists(table_ident(namespace, table)):
            raise NoSuchTableError(f"Table does not exist: {namespace}.{table}")
        return Response(status_code=204)

    @app.delete("/v1/namespaces/{namespace}/tables/{table}", status_code=204)
    def drop_table(namespace: str, table: str, purgeRequested: bool = False) -> Response:
        ident = table_ident(namespace, table)
        if purgeRequested:
            backend.purge_table(ident)
        else:
            backend.drop_table(ident)
        return Response(status_code=204)

    @app.post("/v1/namespaces/{namespace}/tables/{table}")
    def commit_table(namespace: str, table: str, body: _CommitTableRequest) -> Response:
        """Check the requirements against the table as it is now and apply the updates, atomically (the backend's
        compare-and-swap of the metadata location): 409 CommitFailedException when a requirement does not hold,
        e.g. another writer committed first."""
        ident = table_ident(namespace, table)
        if body.identifier is not None and (*body.identifier.namespace.root, body.identifier.name) != ident:
            raise CatalogHTTPError(400, "BadRequestException", "The body's identifier is not the table in the path")
        try:
            return _commit(backend, ident, body)
        except tuple(_ERRORS):
            raise
        except Exception as exc:
            # The backend failed mid-commit (its database, the warehouse): the new metadata may or may not have
            # landed, which the spec says with a 500 CommitStateUnknownException (the client must not just retry).
            raise CatalogHTTPError(500, "CommitStateUnknownException", f"{type(exc).__name__}: {exc}") from exc

    # --- rename ---------------------------------------------------------------------------------------------------
    @app.post("/v1/tables/rename", status_code=204)
    def rename_table(body: RenameTableRequest) -> Response:
        source = (*body.source.namespace.root, body.source.name)
        destination = (*body.destination.namespace.root, body.destination.name)
        backend.rename_table(source, destination)
        return Response(status_code=204)

    return app


def _commit(backend: Catalog, ident: Identifier, body: CommitTableRequest) -> Response:
    try:
        current: Table = backend.load_table(ident)
    except NoSuchTableError:
        if not any(isinstance(r, AssertCreate) for r in body.requirements):
            raise
        current = _staged_for_create(backend, ident, body)
    result = backend.commit_table(current, tuple(body.requirements), tuple(body.updates))
    return _json(result)


def backend_settings(settings: Settings) -> Settings:
    """The settings of the catalog a server fronts. When K2_CATALOG_PROPERTIES points K2 at a REST catalog (this
    server, most likely), the backend is the SQL catalog of K2_CATALOG_URI / K2_WAREHOUSE instead: the REST
    client's `type` and `uri` are dropped, or the server would call itself."""
    props = settings.catalog_properties
    if props.get("type") != "rest":
        return settings
    sql_props = {k: v for k, v in props.items() if k not in ("type", "uri")}
    return settings.model_copy(update={"catalog_properties": sql_props})


def serve_rest_catalog(
    settings: Settings, host: str = "127.0.0.1", port: int = 8181, *, log_level: str = "info"
) -> None:
    """Serve the REST catalog over K2's configured catalog until interrupted. The API has no authentication:
    binding another host than 127.0.0.1 lets anyone who can reach it change every table."""
    import uvicorn

    app = rest_catalog_app(open_catalog(backend_settings(settings)))
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
