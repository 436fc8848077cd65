"""What another engine needs to read (and write) K2's tables: Spark's settings, the jars, and how they are fetched.

K2's tables are plain Iceberg v2 tables, so any Iceberg engine reads them through either catalog K2 offers:

- REST: `k2 catalog-serve` speaks the Iceberg REST catalog API; Spark's `type=rest` catalog needs only its URL.
- JDBC: pyiceberg's SQL catalog keeps its pointers in the same `iceberg_tables` / `iceberg_namespace_properties`
  tables as Iceberg Java's JdbcCatalog (its V1 schema), so Spark can open the PostgreSQL database directly. Rows are
  keyed by catalog name: the Spark catalog must be named as K2's (`K2_CATALOG_NAME`, default `k2`) or it sees an
  empty catalog.

Spark's session time zone is set to UTC: K2's timestamps are `timestamptz` (UTC microseconds) and Spark shows and
compares them in the session zone, so a machine zone would shift every rendered time and day filter.

The product stays pure Python: the jars are fetched from Maven Central by `mvn` into a cache K2 owns, once.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from k2.config import Settings

# Iceberg 1.10 supports Spark 4.0 (runtime built for Scala 2.13); pyspark must be 4.0.x to match (the `spark` extra).
ICEBERG_VERSION = "1.10.1"
SPARK_MINOR = "4.0"
SCALA_VERSION = "2.13"
POSTGRES_JDBC_VERSION = "42.7.8"

ICEBERG_SPARK_RUNTIME = f"org.apache.iceberg:iceberg-spark-runtime-{SPARK_MINOR}_{SCALA_VERSION}:{ICEBERG_VERSION}"
POSTGRES_JDBC = f"org.postgresql:postgresql:{POSTGRES_JDBC_VERSION}"
SPARK_JARS = (ICEBERG_SPARK_RUNTIME, POSTGRES_JDBC)

DEFAULT_JAR_CACHE = Path("~/.cache/k2/jars")

_ICEBERG_EXTENSIONS = "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"
_SPARK_CATALOG = "org.apache.iceberg.spark.SparkCatalog"
_JDBC_CATALOG = "org.apache.iceberg.jdbc.JdbcCatalog"


def jar_name(coordinate: str) -> str:
    """`group:artifact:version` -> the file name Maven gives the jar (`artifact-version.jar`)."""
    _group, artifact, version = coordinate.split(":")
    return f"{artifact}-{version}.jar"


def fetch_jars(coordinates: Iterable[str] = SPARK_JARS, cache: Path = DEFAULT_JAR_CACHE) -> list[Path]:
    """Local paths of the jars, fetched from Maven Central with `mvn` the first time (about 50 MB) and kept in
    `cache`. A jar appears in the cache only once complete: it is copied into a scratch folder, then renamed."""
    folder = cache.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for coordinate in coordinates:
        path = folder / jar_name(coordinate)
        if not path.exists():
            _maven_copy(coordinate, folder, path)
        paths.append(path)
    return paths


def _maven_copy(coordinate: str, folder: Path, path: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(f"mvn not found: install Maven (apt-get install maven) or put {path.name} in {folder}")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as scratch:
        result = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy", f"-Dartifact={coordinate}", f"-DoutputDirectory={scratch}"],
            capture_output=True,
            text=True,
            cwd=scratch,  # no pom.xml here: mvn runs the plugin standalone
        )
        fetched = Path(scratch) / path.name
        if result.returncode != 0 or not fetched.exists():
            raise RuntimeError(f"mvn could not fetch {coordinate}: {(result.stdout + result.stderr)[-2000:]}")
        fetched.replace(path)


def rest_catalog_properties(uri: str) -> dict[str, str]:
    """Iceberg catalog properties for `k2 catalog-serve` at `uri` (e.g. http://127.0.0.1:8181)."""
    return {"type": "rest", "uri": uri}


def jdbc_catalog_properties(settings: Settings) -> dict[str, str]:
    """Iceberg JdbcCatalog properties for K2's PostgreSQL SQL catalog (K2_CATALOG_URI) and warehouse. Holds the
    database password when the URI has one: never log the result (Spark redacts `*password*` keys itself)."""
    props = settings.catalog_config
    uri = urlsplit(props["uri"])
    if not uri.scheme.startswith("postgresql"):
        raise ValueError(f"JdbcCatalog here reads a PostgreSQL SQL catalog, not {uri.scheme!r} (set K2_CATALOG_URI)")
    host = uri.hostname or "localhost"
    netloc = f"{host}:{uri.port}" if uri.port else host
    result = {
        "catalog-impl": _JDBC_CATALOG,
        "uri": f"jdbc:postgresql://{netloc}{uri.path}",
        "warehouse": props["warehouse"],
        # pyiceberg 0.12 creates Java's V1 schema (`iceberg_type`: TABLE or VIEW per row); V1 makes Java read and
        # write that column as pyiceberg does. Java's default, V0, ignores it and leaves it null on tables it creates.
        "jdbc.schema-version": "V1",
    }
    if uri.username:
        result["jdbc.user"] = unquote(uri.username)
    if uri.password:
        result["jdbc.password"] = unquote(uri.password)
    return result


def spark_config(catalogs: Mapping[str, Mapping[str, str]], jars: Iterable[Path]) -> dict[str, str]:
    """SparkSession settings that open each of `catalogs` (Spark catalog name -> Iceberg catalog properties) with
    Iceberg's SQL extensions (CALL procedures, MERGE) and UTC as the session time zone.

    Each catalog has Spark's table cache off unless `properties` say otherwise: K2's sink commits every few seconds
    and other writers (another catalog, another session) commit too; a cached table would keep answering from the
    snapshot it first loaded for up to 30 s (Iceberg's `cache.expiration-interval-ms`)."""
    conf = {
        "spark.jars": ",".join(str(p) for p in jars),
        "spark.sql.extensions": _ICEBERG_EXTENSIONS,
        "spark.sql.session.timeZone": "UTC",
    }
    for name, properties in catalogs.items():
        conf[f"spark.sql.catalog.{name}"] = _SPARK_CATALOG
        for key, value in {"cache-enabled": "false", **properties}.items():
            conf[f"spark.sql.catalog.{name}.{key}"] = value
    return conf
