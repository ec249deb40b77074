"""Fixtures for every test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from peewee import Database


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """Every log line written during the test, as {"level", "message", "extra"}."""
    records: list[dict[str, Any]] = []
    sink = logger.add(
        lambda m: records.append(
            {"level": m.record["level"].name, "message": m.record["message"], "extra": dict(m.record["extra"])}
        ),
        level="DEBUG",
        format="{message}",
    )
    yield records
    logger.remove(sink)


# --------------------------------------------------------------------------- databases (both backends)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A PostgreSQL server whose user may create databases (see tests/pg.py): the configured one,
    or a throw-away cluster; skips the test with the reason when there is none."""
    from tests import pg

    cluster = None
    url = pg.configured_url()
    try:
        if url is None:
            cluster = pg.start_cluster()
            url = cluster.url
        pg.check_server(url)
    except pg.NoServer as error:
        if cluster is not None:
            cluster.stop()
        if os.environ.get(pg.REQUIRE_ENV):
            pytest.fail(f"{pg.REQUIRE_ENV} is set but no PostgreSQL server can be used: {error}")
        pytest.skip(f"no PostgreSQL server: {error}")
    try:
        yield url
    finally:
        if cluster is not None:
            cluster.stop()


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test only, dropped afterwards."""
    from tests import pg

    url = pg.create_database(postgres_admin_url)
    try:
        yield url
    finally:
        pg.drop_database(postgres_admin_url, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty database on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/test.db"
    return str(request.getfixturevalue("postgres_url"))


def connect_raw(database_url: str) -> Database:
    """A connected database that is neither migrated nor bound to the models."""
    from peewee import PostgresqlDatabase, SqliteDatabase

    if database_url.startswith("sqlite"):
        db: Database = SqliteDatabase(database_url.removeprefix("sqlite:///"))
    else:
        db = PostgresqlDatabase(database_url, prefer_psycopg3=True)
    db.connect()
    return db


@pytest.fixture
def second_database_url(database_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Another new database on the same backend as ``database_url``."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/second.db"
        return
    from tests import pg

    admin = str(request.getfixturevalue("postgres_admin_url"))
    url = pg.create_database(admin)
    try:
        yield url
    finally:
        pg.drop_database(admin, url)


def close_database(db: Database) -> None:
    """Close a database the tests opened, every pooled connection included."""
    close_all = getattr(db, "close_all", None)
    if close_all is not None:
        close_all()
    elif not db.is_closed():
        db.close()
