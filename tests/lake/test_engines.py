"""The Spark settings k2.lake.engines gives users: what the spark tests start their session with."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2.config import Settings
from k2.lake.engines import (
    ICEBERG_SPARK_RUNTIME,
    fetch_jars,
    jar_name,
    jdbc_catalog_properties,
    rest_catalog_properties,
    spark_config,
)


def test_jdbc_properties_come_from_the_sqlalchemy_uri_with_its_credentials_decoded(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        catalog_uri="postgresql+psycopg2://k2%40ops:p%3Ass@db.internal:6543/lake",
        warehouse="file:///data/warehouse",
    )
    assert jdbc_catalog_properties(settings) == {
        "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        "uri": "jdbc:postgresql://db.internal:6543/lake",
        "warehouse": "file:///data/warehouse",
        "jdbc.schema-version": "V1",
        "jdbc.user": "k2@ops",
        "jdbc.password": "p:ss",
    }


def test_jdbc_properties_refuse_a_sqlite_catalog(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        jdbc_catalog_properties(Settings(home=tmp_path))


def test_spark_config_names_each_catalog_with_utc_sessions_and_the_extensions(tmp_path: Path) -> None:
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    conf = spark_config({"k2rest": rest_catalog_properties("http://127.0.0.1:8181")}, jars)
    assert conf == {
        "spark.jars": f"{jars[0]},{jars[1]}",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.catalog.k2rest": "org.apache.iceberg.spark.SparkCatalog",
        "spark.sql.catalog.k2rest.cache-enabled": "false",
        "spark.sql.catalog.k2rest.type": "rest",
        "spark.sql.catalog.k2rest.uri": "http://127.0.0.1:8181",
    }


def test_jars_already_in_the_cache_are_not_fetched_again(tmp_path: Path) -> None:
    cached = tmp_path / jar_name(ICEBERG_SPARK_RUNTIME)
    cached.write_bytes(b"jar")
    assert cached.name == "iceberg-spark-runtime-4.0_2.13-1.10.1.jar"
    assert fetch_jars([ICEBERG_SPARK_RUNTIME], cache=tmp_path) == [cached]
