"""The registry's store: subjects, versions, global schema ids and compatibility levels in one SQLite file.

SQLite in WAL mode, with every write under BEGIN IMMEDIATE, lets several processes serve the same store: ids and
version numbers are allocated inside the write lock. Registering checks the new schema against the subject's
history at the level in force (k2.bus.compatibility). Failures are `RegistryError`s carrying Confluent's error
codes; k2.bus.registry.routes turns them into HTTP answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from avro.schema import Schema

from k2.bus.compatibility import (
    DEFAULT_LEVEL,
    CompatibilityResult,
    Level,
    canonical,
    check_compatibility,
    parse_schema,
)

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
    """A request the store refuses, with Confluent's error code (its first three digits are the HTTP status) and
    a message saying what to do instead; `extra` goes into the answer too (e.g. the incompatibility messages)."""

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


class Version(NamedTuple):
    """One version of a subject: its number, the global schema id, the text as registered, the canonical form."""

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

    def version(self, subject: str, version: int, deleted: bool = False) -> Version:
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


def _history(db: sqlite3.Connection, subject: str, deleted: bool = False, must_exist: bool = True) -> list[Version]:
    """The subject's versions, oldest first; 40401 when there are none and `must_exist`."""
    rows = db.execute(
        "SELECT v.version, s.id, s.schema, s.canonical FROM versions v JOIN schemas s ON s.id = v.schema_id "
        "WHERE v.subject = ? AND (v.deleted = 0 OR ?) ORDER BY v.version",
        (subject, deleted),
    ).fetchall()
    if not rows and must_exist:
        raise _no_subject(subject)
    return [Version(*row) for row in rows]


def _find(history: list[Version], key: str) -> tuple[int, int] | None:
    same = [h for h in history if h.canonical == key]
    return (same[-1].id, same[-1].version) if same else None


def _pick(history: list[Version], subject: str, version: int) -> Version:
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
