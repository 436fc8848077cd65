"""What the REST catalog does with its backend catalog and the protocol's data, with no HTTP routing: the request
and response bodies, the spec's errors (`CatalogHTTPError`, `ERRORS`), namespace paths, paging, staged creates,
table metadata with or without every snapshot, and the commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import (
    DEFAULT_ENDPOINTS,
    Capability,
    CreateTableRequest,
    TableResponse,
)
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
from pyiceberg.table import CommitTableRequest, CommitTableResponse, StagedTable, Table, TableIdentifier
from pyiceberg.table.metadata import TableMetadata, TableMetadataV1, new_table_metadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortOrder
from pyiceberg.table.update import AssertCreate, update_table_metadata
from pyiceberg.typedef import IcebergBaseModel, Identifier

# Multipart namespaces in paths and `parent` are joined by the unit separator (the spec's default, %1F).
NAMESPACE_SEPARATOR = "\x1f"

# (status, ErrorModel type) per backend exception, as the spec's examples name them.
ERRORS: dict[type[Exception], tuple[int, str]] = {
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


# The two below keep their underscore names, as a model's class name is its schema's name in /openapi.json; the
# routes call them by the public aliases after them.
class _CreateTableRequest(CreateTableRequest):
    # Optional in the spec; pyiceberg's client always sends them, other clients need not.
    location: str | None = Field(default=None)
    partition_spec: PartitionSpec | None = Field(alias="partition-spec", default=None)
    write_order: SortOrder | None = Field(alias="write-order", default=None)


class _CommitTableRequest(CommitTableRequest):
    identifier: TableIdentifier | None = Field(default=None)  # optional in the spec: the path names the table


CreateTableBody = _CreateTableRequest
CommitTableBody = _CommitTableRequest

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


def namespace_from_path(text: str) -> Identifier:
    """A namespace path parameter (or `parent`), already URL-decoded: its parts joined by the unit separator."""
    parts = tuple(text.split(NAMESPACE_SEPARATOR))
    if not all(parts):
        raise CatalogHTTPError(400, "BadRequestException", f"Invalid namespace {text!r}: empty level")
    return parts


def table_ident(namespace: str, table: str) -> Identifier:
    """A table's identifier from its path parameters."""
    return (*namespace_from_path(namespace), table)


def page(items: Sequence[Any], token: str | None, size: int | None) -> tuple[list[Any], str | None]:
    """Offset pagination: the token is the index of the next item. Without a page size, everything at once."""
    start = int(token) if token else 0
    if start < 0 or (size is not None and size <= 0):
        raise CatalogHTTPError(400, "BadRequestException", "pageToken must be >= 0 and pageSize > 0")
    if size is None:
        return list(items[start:]), None
    end = start + size
    return list(items[start:end]), (str(end) if end < len(items) else None)


def with_snapshots(metadata: TableMetadata, mode: str | None) -> TableMetadata:
    """`snapshots=refs` keeps only the snapshots a branch or tag points at; `all` (the default) keeps every one."""
    if mode in (None, "all"):
        return metadata
    if mode != "refs":
        raise CatalogHTTPError(400, "BadRequestException", f"snapshots must be 'all' or 'refs', not {mode!r}")
    referenced = {ref.snapshot_id for ref in metadata.refs.values()}
    return metadata.model_copy(update={"snapshots": [s for s in metadata.snapshots if s.snapshot_id in referenced]})


def create_table(backend: Catalog, ident: Identifier, body: CreateTableBody) -> TableResponse:
    """The created table, or with `stage-create` only its initial metadata (no metadata-location)."""
    args: dict[str, Any] = {
        "schema": body.table_schema,
        "location": body.location,
        "partition_spec": body.partition_spec or UNPARTITIONED_PARTITION_SPEC,
        "sort_order": body.write_order or UNSORTED_SORT_ORDER,
        "properties": body.properties,
    }
    if not body.stage_create:
        created = backend.create_table(ident, **args)
        return TableResponse(metadata_location=created.metadata_location, metadata=created.metadata)
    if backend.table_exists(ident):
        raise TableAlreadyExistsError(f"Table already exists: {'.'.join(ident)}")
    return TableResponse(metadata_location=None, metadata=_staged_metadata(backend, ident, args))


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


def commit(backend: Catalog, ident: Identifier, body: CommitTableBody) -> CommitTableResponse:
    """Check the requirements against the table as it is now and apply the updates, atomically (the backend's
    compare-and-swap of the metadata location); a create transaction's commit creates the table."""
    if body.identifier is not None and (*body.identifier.namespace.root, body.identifier.name) != ident:
        raise CatalogHTTPError(400, "BadRequestException", "The body's identifier is not the table in the path")
    try:
        return _commit(backend, ident, body)
    except tuple(ERRORS):
        raise
    except Exception as exc:
        # The backend failed mid-commit (its database, the warehouse): the new metadata may or may not have
        # landed, which the spec says with a 500 CommitStateUnknownException (the client must not just retry).
        raise CatalogHTTPError(500, "CommitStateUnknownException", f"{type(exc).__name__}: {exc}") from exc


def _commit(backend: Catalog, ident: Identifier, body: CommitTableRequest) -> CommitTableResponse:
    try:
        current: Table = backend.load_table(ident)
    except NoSuchTableError:
        if not any(isinstance(r, AssertCreate) for r in body.requirements):
            raise
        current = _staged_for_create(backend, ident, body)
    return backend.commit_table(current, tuple(body.requirements), tuple(body.updates))
