"""K2's own Confluent-compatible schema registry (Avro only), stored in one SQLite file.

It serves the endpoints confluent-kafka's SchemaRegistryClient and Avro serializers call (STACK-NOTES.md), so K2
and any Confluent client agree on schema ids. SQLite in WAL mode, with every write under BEGIN IMMEDIATE, lets
several processes serve the same store: ids and version numbers are allocated inside the write lock.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn
from avro.schema import Schema
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from k2.bus.compatibility import (
    DEFAULT_LEVEL,
    CompatibilityResult,
    InvalidSchemaError,
    Level,
    canonical,
    check_compatibility,
    parse_schema,
)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
DB_FILE = "registry.db"
LATEST = -1  # Confluent accepts "latest" and -1 for the newest live version
_GLOBAL = ""  # config row of the registry-wide level; no subject can be named "" in a URL

_DDL = """
CREATE TABLE IF NOT EXISTS schemas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an id is never handed out twice
    canonical TEXT NOT NULL UNIQUE,
    schema TEXT NOT NULL                   -- the text as first registered
);
CREATE TABLE IF NOT EXISTS versions (
    subject TEXT NOT NULL, version INTEGER NOT NULL, schema_id INTEGER NOT NULL REFERENCES schemas(id),
    deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS config (subject TEXT PRIMARY KEY, level TEXT NOT NULL);
"""


class RegistryError(Exception):
    """An API error, sent as {"error_code", "message"}; the HTTP status is the code's first three digits."""

    def __init__(self, error_code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.error_code, self.message, self.extra = error_code, message, extra

    @property
    def status(self) -> int:
        return int(str(self.error_code)[:3])


def _no_subject(subject: str) -> RegistryError:
    return RegistryError(
        40401,
        f"Subject '{subject}' not found. Register a schema first (POST /subjects/{subject}/versions); "
        f"GET /subjects lists the known subjects.",
    )


def _no_schema(what: str) -> RegistryError:
    return RegistryError(40403, f"Schema not found: {what}. Register it with POST /subjects/<subject>/versions.")


@lru_cache(maxsize=1024)
def _parsed(text: str) -> Schema:
    # Stored texts are re-parsed for every compatibility check; parsing costs milliseconds.
    return parse_schema(text)


class _Version(NamedTuple):
    version: int
    id: int
    text: str
    canonical: str


class SchemaStore:
    """Subjects, versions, global ids and compatibility levels in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer in another process
            db.executescript(_DDL)
        finally:
            db.close()

    @contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; writes take the lock up front so two processes cannot allocate the same id."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def register(self, subject: str, text: str) -> tuple[int, int]:
        """(id, version) of `text` under `subject`, registering it if new; 409 if it breaks compatibility."""
        schema = _parsed(text)
        key = canonical(schema)
        with self._db(write=True) as db:
            history = _history(db, subject, must_exist=False)
            if same := _find(history, key):  # idempotent: the same schema again is not a new version
                return same
            level = _level(db, subject)
            result = check_compatibility(schema, {h.version: _parsed(h.text) for h in history}, level)
            if not result.is_compatible:
                raise RegistryError(
                    409,
                    f'Schema being registered is incompatible with an earlier schema for subject "{subject}" '
                    f"(compatibility {level}): {' | '.join(result.messages)}. Fix the schema; if the break is "
                    f"intended, use a new subject or change the level with PUT /config/{subject}.",
                    messages=list(result.messages),
                )
            # The same schema under another subject keeps its id, as Confluent does.
            db.execute("INSERT OR IGNORE INTO schemas (canonical, schema) VALUES (?, ?)", (key, text))
            (schema_id,) = db.execute("SELECT id FROM schemas WHERE canonical = ?", (key,)).fetchone()
            # Numbering continues past soft-deleted versions, as Confluent's does.
            (version,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE subject = ?", (subject,)
            ).fetchone()
            db.execute("INSERT INTO versions VALUES (?, ?, ?, 0)", (subject, version, schema_id))
            return schema_id, version

    def lookup(self, subject: str, text: str, deleted: bool = False) -> tuple[int, int]:
        """(id, version) under which `subject` already holds `text`."""
        key = canonical(_parsed(text))
        with self._db() as db:
            found = _find(_history(db, subject, deleted), key)
        if found is None:
            raise _no_schema(f"subject '{subject}' holds no schema equal to the one given")
        return found

    def versions(self, subject: str, deleted: bool = False) -> list[int]:
        with self._db() as db:
            return [h.version for h in _history(db, subject, deleted)]

    def version(self, subject: str, version: int, deleted: bool = False) -> _Version:
        """One version of a subject; LATEST = the newest live one."""
        with self._db() as db:
            return _pick(_history(db, subject, deleted), subject, version)

    def subjects(self, deleted: bool = False) -> list[str]:
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT subject FROM versions WHERE deleted = 0 OR ? ORDER BY 1", (deleted,))
            return [subject for (subject,) in rows]

    def schema(self, schema_id: int) -> str:
        with self._db() as db:
            row = db.execute("SELECT schema FROM schemas WHERE id = ?", (schema_id,)).fetchone()
        if row is None:
            raise _no_schema(f"no schema has id {schema_id}")
        return row[0]

    def usages(self, schema_id: int, deleted: bool = False) -> list[tuple[str, int]]:
        """Every (subject, version) that holds the schema with this id."""
        self.schema(schema_id)  # 40403 for an unknown id
        with self._db() as db:
            sql = "SELECT subject, version FROM versions WHERE schema_id = ? AND (deleted = 0 OR ?) ORDER BY 1, 2"
            return [(subject, version) for subject, version in db.execute(sql, (schema_id, deleted))]

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete every live version (ids and texts stay); `permanent` forgets all versions."""
        with self._db(write=True) as db:
            deleted = [h.version for h in _history(db, subject, deleted=permanent)]
            if permanent:
                db.execute("DELETE FROM versions WHERE subject = ?", (subject,))
            else:
                db.execute("UPDATE versions SET deleted = 1 WHERE subject = ?", (subject,))
            return deleted

    def test(self, subject: str, text: str, version: int | None) -> CompatibilityResult:
        """Would `text` be accepted against `version` (LATEST, a number, or None = every live version)?"""
        schema = _parsed(text)
        with self._db() as db:
            history = _history(db, subject, must_exist=version is not None)
            level = _level(db, subject)
        if version is not None:
            history = [_pick(history, subject, version)]
        elif level is not Level.NONE and not level.endswith("_TRANSITIVE"):
            level = Level(f"{level}_TRANSITIVE")  # "against all versions" is what was asked
        return check_compatibility(schema, {h.version: _parsed(h.text) for h in history}, level)

    def level(self, subject: str | None) -> Level:
        """The level in force: the subject's own, else the global one, else BACKWARD."""
        with self._db() as db:
            return _level(db, subject)

    def set_level(self, subject: str | None, level: Level) -> None:
        with self._db(write=True) as db:
            db.execute(
                "INSERT INTO config VALUES (?, ?) ON CONFLICT (subject) DO UPDATE SET level = excluded.level",
                (_GLOBAL if subject is None else subject, level.value),
            )


def _history(db: sqlite3.Connection, subject: str, deleted: bool = False, must_exist: bool = True) -> list[_Version]:
    """The subject's versions, oldest first; 40401 when there are none and `must_exist`."""
    rows = db.execute(
        "SELECT v.version, s.id, s.schema, s.canonical FROM versions v JOIN schemas s ON s.id = v.schema_id "
        "WHERE v.subject = ? AND (v.deleted = 0 OR ?) ORDER BY v.version",
        (subject, deleted),
    ).fetchall()
    if not rows and must_exist:
        raise _no_subject(subject)
    return [_Version(*row) for row in rows]


def _find(history: list[_Version], key: str) -> tuple[int, int] | None:
    same = [h for h in history if h.canonical == key]
    return (same[-1].id, same[-1].version) if same else None


def _pick(history: list[_Version], subject: str, version: int) -> _Version:
    for found in history:
        if found.version == version or (version == LATEST and found is history[-1]):
            return found
    raise RegistryError(
        40402, f"Version {version} not found under subject '{subject}'; GET /subjects/{subject}/versions lists them."
    )


def _level(db: sqlite3.Connection, subject: str | None) -> Level:
    for key in [_GLOBAL] if subject is None else [subject, _GLOBAL]:
        row = db.execute("SELECT level FROM config WHERE subject = ?", (key,)).fetchone()
        if row is not None:
            return Level(row[0])
    return DEFAULT_LEVEL


# --- HTTP --------------------------------------------------------------------------------------------------------


class _Response(JSONResponse):
    media_type = CONTENT_TYPE


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


def _error(status: int, error_code: int, message: str, **extra: Any) -> _Response:
    return _Response({"error_code": error_code, "message": message, **extra}, status_code=status)


def create_registry_app(storage_dir: Path) -> FastAPI:
    """The registry API over the store at `storage_dir`/registry.db (created if missing)."""
    store = SchemaStore(Path(storage_dir) / DB_FILE)
    app = FastAPI(title="K2 schema registry", default_response_class=_Response)
    app.state.store = store

    @app.exception_handler(RegistryError)
    def registry_error(_: Request, exc: RegistryError) -> _Response:
        return _error(exc.status, exc.error_code, exc.message, **exc.extra)

    @app.exception_handler(InvalidSchemaError)
    def invalid_schema(_: Request, exc: InvalidSchemaError) -> _Response:
        return _error(422, 42201, f"Invalid schema: {exc}. Send the Avro schema JSON as a string in 'schema'.")

    @app.exception_handler(RequestValidationError)
    def malformed(_: Request, exc: RequestValidationError) -> _Response:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(422, 422, f'Malformed request ({problems}). Expected e.g. {{"schema": "<Avro JSON>"}}.')

    @app.exception_handler(HTTPException)
    def no_route(_: Request, exc: HTTPException) -> _Response:
        return _error(exc.status_code, exc.status_code, f"{exc.detail}: K2's registry does not serve this endpoint.")

    @app.get("/")
    def root() -> dict[str, Any]:
        return {}

    @app.get("/subjects")
    def subjects(deleted: bool = False) -> list[str]:
        return store.subjects(deleted)

    @app.get("/subjects/{subject}/versions")
    def versions(subject: str, deleted: bool = False) -> list[int]:
        return store.versions(subject, deleted)

    @app.post("/subjects/{subject}/versions")
    def register(subject: str, body: SchemaRequest) -> dict[str, Any]:
        schema_id, version = store.register(subject, body.avro_text())
        return {"id": schema_id, "subject": subject, "version": version}

    @app.post("/subjects/{subject}")
    def lookup(subject: str, body: SchemaRequest, deleted: bool = False) -> dict[str, Any]:
        schema_id, version = store.lookup(subject, body.avro_text(), deleted)
        return {"subject": subject, "id": schema_id, "version": version, "schema": body.schema_text}

    @app.get("/subjects/{subject}/versions/{version}")
    def get_version(subject: str, version: str, deleted: bool = False) -> dict[str, Any]:
        found = store.version(subject, _version_number(version), deleted)
        return {"subject": subject, "id": found.id, "version": found.version, "schema": found.text}

    @app.delete("/subjects/{subject}")
    def delete_subject(subject: str, permanent: bool = False) -> list[int]:
        return store.delete_subject(subject, permanent)

    @app.get("/schemas/ids/{schema_id}")
    def schema_by_id(schema_id: int, subject: str | None = None) -> dict[str, Any]:
        # `subject` only picks a schema context in Confluent; K2 has one context, so any subject finds the id.
        return {"schema": store.schema(schema_id)}

    @app.get("/schemas/ids/{schema_id}/versions")
    def schema_versions(schema_id: int, deleted: bool = False) -> list[dict[str, Any]]:
        return [{"subject": s, "version": v} for s, v in store.usages(schema_id, deleted)]

    # Stacked routes: one handler serves both the all-versions and the one-version (or global/subject) form.
    @app.post("/compatibility/subjects/{subject}/versions")
    @app.post("/compatibility/subjects/{subject}/versions/{version}")
    def test(subject: str, body: SchemaRequest, version: str | None = None, verbose: bool = False) -> dict[str, Any]:
        number = None if version is None else _version_number(version)
        result = store.test(subject, body.avro_text(), number)
        return {"is_compatible": result.is_compatible} | ({"messages": list(result.messages)} if verbose else {})

    @app.get("/config")
    @app.get("/config/{subject}")
    def get_config(subject: str | None = None) -> dict[str, str]:
        # A subject without a level of its own reports the level in force (Confluent's ?defaultToGlobal=true).
        return {"compatibilityLevel": store.level(subject)}

    @app.put("/config")
    @app.put("/config/{subject}")
    def put_config(body: ConfigRequest, subject: str | None = None) -> dict[str, str]:
        store.set_level(subject, body.level())
        return {"compatibility": body.level()}

    @app.get("/associations/resources/{namespace}/{resource}")
    def associations(namespace: str, resource: str) -> _Response:
        # confluent-kafka asks first; a 404 makes it fall back to TopicNameStrategy (<topic>-value).
        return _error(404, 40401, f"No associations for {resource!r}: K2 names subjects <topic>-value.")

    return app


# --- Embedded server ---------------------------------------------------------------------------------------------


class EmbeddedRegistry:
    """The registry served by uvicorn on a daemon thread: `with EmbeddedRegistry(dir) as registry: registry.url`.

    port=0 picks a free port at each start(), so a restarted registry may have a new url; ids and versions live
    in the store and survive restarts.
    """

    def __init__(self, storage_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.storage_dir, self.host, self.port = Path(storage_dir), host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("schema registry is not running: call start() or use it as a context manager")
        return f"http://{self.host}:{self._socket.getsockname()[1]}"

    def start(self, timeout: float = 10.0) -> EmbeddedRegistry:
        """Serve in the background; returns once connections are accepted."""
        if self._thread is not None:
            return self
        # Binding here (not in uvicorn) resolves port 0 and turns a busy port into an error in the caller's thread.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(
                f"schema registry cannot listen on {self.host}:{self.port} ({exc}); "
                f"stop whatever holds the port or use port=0 for a free one"
            ) from exc
        app = create_registry_app(self.storage_dir)
        # log_config=None: leave the host process's logging setup alone.
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="k2-registry", daemon=True)
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"schema registry did not start within {timeout:g}s; see the log above")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (open requests finish) and join the thread; a no-op when not running."""
        if self._server is None or self._thread is None or self._socket is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
        alive = self._thread.is_alive()
        self._server = self._thread = self._socket = None
        if alive:
            raise RuntimeError(f"schema registry thread did not stop within {timeout:g}s")

    def __enter__(self) -> EmbeddedRegistry:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
