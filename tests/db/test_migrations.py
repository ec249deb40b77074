"""The migrated schema is exactly what the models describe (on SQLite and on PostgreSQL), and v3 keeps
every row of an older SQLite database (there are no PostgreSQL databases from before v3: its 32-bit
INTEGER of v1 never held data)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peewee import CompositeKey, Database, PostgresqlDatabase, SqliteDatabase

from leaderboard_bot.db.migrations import LATEST_VERSION, current_version, migrate
from leaderboard_bot.db.models import ALL_MODELS, MemberStats, Season, VoiceSession, database_proxy
from tests.conftest import connect_raw

BIG = 2**63 - 7  # a snowflake far above 2**53: doubles would round it


def _types(db: Database, table: str) -> dict[str, str]:
    """Each column's declared type; PostgreSQL's catalog spells VARCHAR(n) character varying(n)."""
    if not isinstance(db, PostgresqlDatabase):
        return {c.name: c.data_type.upper() for c in db.get_columns(table)}
    rows = db.execute_sql(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (f'"{table}"',),
    ).fetchall()
    return {name: declared.upper().replace("CHARACTER VARYING", "VARCHAR") for name, declared in rows}


def columns(db: Database, table: str) -> set[tuple[str, str, bool, bool]]:
    primary = set(db.get_primary_keys(table))
    types = _types(db, table)
    return {(c.name, types[c.name], c.null, c.name in primary) for c in db.get_columns(table)}


def indexes(db: Database, table: str) -> set[tuple[tuple[str, ...], bool]]:
    return {
        (tuple(index.columns), bool(index.unique))
        for index in db.get_indexes(table)
        if not index.name.startswith("sqlite_autoindex")
    }


@pytest.fixture
def migrated(database_url: str) -> Iterator[Database]:
    db = connect_raw(database_url)
    migrate(db)
    yield db
    db.close()


@pytest.fixture
def from_models(second_database_url: str) -> Iterator[Database]:
    db = connect_raw(second_database_url)
    with db.bind_ctx(ALL_MODELS):
        db.create_tables(ALL_MODELS)
    yield db
    db.close()


# How each peewee field type is spelled in the portable DDL (SQLite's own names, INTEGER and REAL,
# would be 32-bit types on PostgreSQL).
PORTABLE_TYPES = {"BIGINT": "BIGINT", "DOUBLE": "DOUBLE PRECISION", "TEXT": "TEXT"}


def model_columns(model: Any) -> set[tuple[str, str, bool, bool]]:
    meta = model._meta
    key = meta.primary_key
    primary = set(key.field_names) if isinstance(key, CompositeKey) else {key.name}
    out = set()
    for field in meta.sorted_fields:
        declared = f"VARCHAR({field.max_length})" if field.field_type == "VARCHAR" else PORTABLE_TYPES[field.field_type]
        out.add((field.column_name, declared, bool(field.null), field.name in primary))
    return out


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m._meta.table_name)
def test_the_migrated_schema_matches_the_models(
    model: Any, migrated: Database, from_models: Database
) -> None:
    table = model._meta.table_name
    assert columns(migrated, table) == model_columns(model)
    assert indexes(migrated, table) == indexes(from_models, table)


def test_no_table_exists_without_a_model(migrated: Database) -> None:
    assert set(migrated.get_tables()) == {m._meta.table_name for m in ALL_MODELS}  # type: ignore[attr-defined]


def test_only_portable_types_are_used(migrated: Database) -> None:
    types = {t for model in ALL_MODELS for t in _types(migrated, model._meta.table_name).values()}
    assert types <= {"BIGINT", "DOUBLE PRECISION", "VARCHAR(255)", "VARCHAR(10)", "TEXT"}


def test_an_older_database_keeps_every_row_through_v3(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "old.db"))
    assert migrate(db, target=2) == 2
    rows = {
        "setting": (1, "board:messages", '{"message_id": 5}'),
        "member_stats": (BIG, 3, BIG - 1, 12, 3600.25),
        "daily_activity": (BIG, "2024-03-10", BIG - 1, 12, 3600.25),
        "voice_session": (1, "k1", BIG, BIG - 1, BIG - 2, 10.5, 20.25, None),
        "member_name": (BIG, BIG - 1, "Ali", None, 99.5),
        "season": (1, BIG, 3, 0.5, 1000.5, None, None),
    }
    for table, values in rows.items():
        marks = ", ".join("?" for _ in values)
        db.execute_sql(f'INSERT INTO "{table}" VALUES ({marks})', values)
    assert migrate(db) == LATEST_VERSION
    assert db.execute_sql('SELECT * FROM "member_stats"').fetchall() == [(BIG, 3, BIG - 1, 12, 3600.25)]
    assert db.execute_sql('SELECT * FROM "daily_activity"').fetchall() == [(BIG, "2024-03-10", BIG - 1, 12, 3600.25)]
    sessions = db.execute_sql('SELECT * FROM "voice_session"').fetchall()
    assert sessions == [("k1", BIG, BIG - 1, BIG - 2, 10.5, 20.25, None)]
    assert db.execute_sql('SELECT * FROM "member_name"').fetchall() == [(BIG, BIG - 1, "Ali", None, 99.5)]
    assert db.execute_sql('SELECT * FROM "season"').fetchall() == [(BIG, 3, 0.5, 1000.5, None, None)]
    assert db.execute_sql('SELECT * FROM "setting"').fetchall() == [(1, "board:messages", '{"message_id": 5}')]

    # The models work on the upgraded file: natural keys, upserts on them.
    database_proxy.initialize(db)
    Season.create(guild_id=BIG, number=4, started_at=1000.5, ends_at=2000.5)
    assert Season.get((Season.guild_id == BIG) & (Season.number == 4)).ends_at == 2000.5
    VoiceSession.insert(
        key="k1", guild_id=BIG, user_id=1, channel_id=1, started_at=0.0, last_seen_at=0.0
    ).on_conflict_ignore().execute()
    assert VoiceSession.select().count() == 1
    assert MemberStats.get_by_id((BIG, 3, BIG - 1)).messages == 12
    db.close()


def test_migrating_a_latest_database_changes_nothing(migrated: Database) -> None:
    before = [(t, columns(migrated, t), indexes(migrated, t)) for t in migrated.get_tables()]
    assert migrate(migrated) == LATEST_VERSION == current_version(migrated)
    assert [(t, columns(migrated, t), indexes(migrated, t)) for t in migrated.get_tables()] == before
