"""Forward-only schema migrations with a stored version.

Each migration is frozen DDL, never derived from the current models, so that an old database
upgrades through exactly the steps a new one went through.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from loguru import logger
from peewee import Database, SqliteDatabase

Migration = Callable[[Database], None]


class SchemaTooNew(Exception):
    """The database was made by a newer version of the bot."""


def _v1_core(db: Database) -> None:
    for sql in (
        'CREATE TABLE IF NOT EXISTS "setting" ("guild_id" INTEGER NOT NULL, "key" VARCHAR(255) NOT NULL, '
        '"value" TEXT NOT NULL, PRIMARY KEY ("guild_id", "key"))',
        'CREATE TABLE IF NOT EXISTS "member_stats" ("guild_id" INTEGER NOT NULL, "season" INTEGER NOT NULL, '
        '"user_id" INTEGER NOT NULL, "messages" INTEGER NOT NULL DEFAULT 0, '
        '"voice_seconds" REAL NOT NULL DEFAULT 0, PRIMARY KEY ("guild_id", "season", "user_id"))',
        'CREATE TABLE IF NOT EXISTS "daily_activity" ("guild_id" INTEGER NOT NULL, "day" VARCHAR(10) NOT NULL, '
        '"user_id" INTEGER NOT NULL, "messages" INTEGER NOT NULL DEFAULT 0, '
        '"voice_seconds" REAL NOT NULL DEFAULT 0, PRIMARY KEY ("guild_id", "day", "user_id"))',
        'CREATE TABLE IF NOT EXISTS "voice_session" ("id" INTEGER NOT NULL PRIMARY KEY, '
        '"key" VARCHAR(255) NOT NULL, "guild_id" INTEGER NOT NULL, "user_id" INTEGER NOT NULL, '
        '"channel_id" INTEGER NOT NULL, "started_at" REAL NOT NULL, "last_seen_at" REAL NOT NULL, '
        '"ended_at" REAL)',
        'CREATE UNIQUE INDEX IF NOT EXISTS "voice_session_key" ON "voice_session" ("key")',
        'CREATE INDEX IF NOT EXISTS "voice_session_open" ON "voice_session" ("guild_id", "ended_at")',
        'CREATE TABLE IF NOT EXISTS "member_name" ("guild_id" INTEGER NOT NULL, "user_id" INTEGER NOT NULL, '
        '"display_name" VARCHAR(255) NOT NULL, "username" VARCHAR(255), "updated_at" REAL NOT NULL, '
        'PRIMARY KEY ("guild_id", "user_id"))',
    ):
        db.execute_sql(sql)


def _v2_seasons_and_ranking(db: Database) -> None:
    for sql in (
        'CREATE TABLE IF NOT EXISTS "season" ("id" INTEGER NOT NULL PRIMARY KEY, "guild_id" INTEGER NOT NULL, '
        '"number" INTEGER NOT NULL, "started_at" REAL NOT NULL, "ends_at" REAL NOT NULL, "ended_at" REAL, '
        '"announced_at" REAL)',
        'CREATE UNIQUE INDEX IF NOT EXISTS "season_guild_id_number" ON "season" ("guild_id", "number")',
        # Leaderboard queries rank one season of one guild by one column.
        'CREATE INDEX IF NOT EXISTS "member_stats_rank_messages" ON "member_stats" ("guild_id", "season", "messages")',
        'CREATE INDEX IF NOT EXISTS "member_stats_rank_voice" '
        'ON "member_stats" ("guild_id", "season", "voice_seconds")',
    ):
        db.execute_sql(sql)


# Portable types from v3 on: 64-bit integers and double precision (SQLite's INTEGER and REAL would be
# 32-bit on PostgreSQL), natural primary keys instead of rowids. Each table is rebuilt and copied.
_V3_TABLES: tuple[tuple[str, str, str], ...] = (
    (
        "setting",
        '"guild_id" BIGINT NOT NULL, "key" VARCHAR(255) NOT NULL, "value" TEXT NOT NULL, '
        'PRIMARY KEY ("guild_id", "key")',
        '"guild_id", "key", "value"',
    ),
    (
        "member_stats",
        '"guild_id" BIGINT NOT NULL, "season" BIGINT NOT NULL, "user_id" BIGINT NOT NULL, '
        '"messages" BIGINT NOT NULL DEFAULT 0, "voice_seconds" DOUBLE PRECISION NOT NULL DEFAULT 0, '
        'PRIMARY KEY ("guild_id", "season", "user_id")',
        '"guild_id", "season", "user_id", "messages", "voice_seconds"',
    ),
    (
        "daily_activity",
        '"guild_id" BIGINT NOT NULL, "day" VARCHAR(10) NOT NULL, "user_id" BIGINT NOT NULL, '
        '"messages" BIGINT NOT NULL DEFAULT 0, "voice_seconds" DOUBLE PRECISION NOT NULL DEFAULT 0, '
        'PRIMARY KEY ("guild_id", "day", "user_id")',
        '"guild_id", "day", "user_id", "messages", "voice_seconds"',
    ),
    (
        "voice_session",
        '"key" VARCHAR(255) NOT NULL PRIMARY KEY, "guild_id" BIGINT NOT NULL, "user_id" BIGINT NOT NULL, '
        '"channel_id" BIGINT NOT NULL, "started_at" DOUBLE PRECISION NOT NULL, '
        '"last_seen_at" DOUBLE PRECISION NOT NULL, "ended_at" DOUBLE PRECISION',
        '"key", "guild_id", "user_id", "channel_id", "started_at", "last_seen_at", "ended_at"',
    ),
    (
        "member_name",
        '"guild_id" BIGINT NOT NULL, "user_id" BIGINT NOT NULL, "display_name" VARCHAR(255) NOT NULL, '
        '"username" VARCHAR(255), "updated_at" DOUBLE PRECISION NOT NULL, PRIMARY KEY ("guild_id", "user_id")',
        '"guild_id", "user_id", "display_name", "username", "updated_at"',
    ),
    (
        "season",
        '"guild_id" BIGINT NOT NULL, "number" BIGINT NOT NULL, "started_at" DOUBLE PRECISION NOT NULL, '
        '"ends_at" DOUBLE PRECISION NOT NULL, "ended_at" DOUBLE PRECISION, "announced_at" DOUBLE PRECISION, '
        'PRIMARY KEY ("guild_id", "number")',
        '"guild_id", "number", "started_at", "ends_at", "ended_at", "announced_at"',
    ),
)
_V3_INDEXES = (
    'CREATE INDEX "voice_session_open" ON "voice_session" ("guild_id", "ended_at")',
    'CREATE INDEX "member_stats_rank_messages" ON "member_stats" ("guild_id", "season", "messages")',
    'CREATE INDEX "member_stats_rank_voice" ON "member_stats" ("guild_id", "season", "voice_seconds")',
)


def _v3_portable_types(db: Database) -> None:
    for table, columns, names in _V3_TABLES:
        db.execute_sql(f'CREATE TABLE "{table}_v3" ({columns})')
        db.execute_sql(f'INSERT INTO "{table}_v3" ({names}) SELECT {names} FROM "{table}"')
        db.execute_sql(f'DROP TABLE "{table}"')  # its indexes go with it
        db.execute_sql(f'ALTER TABLE "{table}_v3" RENAME TO "{table}"')
    for sql in _V3_INDEXES:
        db.execute_sql(sql)


# v4: ranks at scale. The board indexes end in user_id, the tie-break, and run in board order, so
# ``top`` is an index walk and a rank is two range counts on the index. ``board_size`` holds how many
# members rank on each board, kept exact by triggers (so every writer, in every process, keeps it):
# with it a rank is counted from the nearer end. Trigger syntax differs: SQLite's below, PostgreSQL's
# (plpgsql functions with the same WHEN conditions and effects) in _V4_POSTGRES_TRIGGERS.
_V4_TABLES_AND_INDEXES = (
    'DROP INDEX IF EXISTS "member_stats_rank_messages"',
    'DROP INDEX IF EXISTS "member_stats_rank_voice"',
    'CREATE INDEX "member_stats_board_messages" ON "member_stats" ("guild_id", "season", "messages" DESC, "user_id")',
    'CREATE INDEX "member_stats_board_voice" ON "member_stats" ("guild_id", "season", "voice_seconds" DESC, "user_id")',
    'CREATE TABLE "board_size" ("guild_id" BIGINT NOT NULL, "season" BIGINT NOT NULL, '
    '"messages" BIGINT NOT NULL DEFAULT 0, "voice" BIGINT NOT NULL DEFAULT 0, PRIMARY KEY ("guild_id", "season"))',
    'INSERT INTO "board_size" ("guild_id", "season", "messages", "voice") '
    'SELECT "guild_id", "season", SUM(CASE WHEN "messages" > 0 THEN 1 ELSE 0 END), '
    'SUM(CASE WHEN "voice_seconds" > 0 THEN 1 ELSE 0 END) FROM "member_stats" GROUP BY "guild_id", "season"',
)
_V4_STATEMENTS = (
    *_V4_TABLES_AND_INDEXES,
    # A row counts on a board while its value there is above zero; the WHEN clauses keep the common
    # case (an update that leaves both sides of zero as they were) to one comparison per row.
    'CREATE TRIGGER "member_stats_board_size_insert" AFTER INSERT ON "member_stats" '
    'WHEN new."messages" > 0 OR new."voice_seconds" > 0 BEGIN '
    'INSERT INTO "board_size" ("guild_id", "season", "messages", "voice") '
    'VALUES (new."guild_id", new."season", new."messages" > 0, new."voice_seconds" > 0) '
    'ON CONFLICT ("guild_id", "season") DO UPDATE SET "messages" = "board_size"."messages" + excluded."messages", '
    '"voice" = "board_size"."voice" + excluded."voice"; END',
    'CREATE TRIGGER "member_stats_board_size_update" AFTER UPDATE OF "messages", "voice_seconds" ON "member_stats" '
    'WHEN (old."messages" > 0) <> (new."messages" > 0) OR (old."voice_seconds" > 0) <> (new."voice_seconds" > 0) '
    'BEGIN INSERT INTO "board_size" ("guild_id", "season", "messages", "voice") '
    'VALUES (new."guild_id", new."season", (new."messages" > 0) - (old."messages" > 0), '
    '(new."voice_seconds" > 0) - (old."voice_seconds" > 0)) '
    'ON CONFLICT ("guild_id", "season") DO UPDATE SET "messages" = "board_size"."messages" + excluded."messages", '
    '"voice" = "board_size"."voice" + excluded."voice"; END',
    'CREATE TRIGGER "member_stats_board_size_delete" AFTER DELETE ON "member_stats" '
    'WHEN old."messages" > 0 OR old."voice_seconds" > 0 BEGIN '
    'UPDATE "board_size" SET "messages" = "messages" - (old."messages" > 0), '
    '"voice" = "voice" - (old."voice_seconds" > 0) '
    'WHERE "guild_id" = old."guild_id" AND "season" = old."season"; END',
)


_BOARD_SIZE_UPSERT = (
    'INSERT INTO "board_size" ("guild_id", "season", "messages", "voice") '
    'VALUES (NEW."guild_id", NEW."season", {}, {}) '
    'ON CONFLICT ("guild_id", "season") DO UPDATE SET "messages" = "board_size"."messages" + excluded."messages", '
    '"voice" = "board_size"."voice" + excluded."voice";'
)
# (name, function body, trigger event, WHEN condition): a boolean is cast to 0/1 where SQLite's is a number.
_V4_POSTGRES_TRIGGERS = (
    (
        "member_stats_board_size_insert",
        _BOARD_SIZE_UPSERT.format('(NEW."messages" > 0)::int', '(NEW."voice_seconds" > 0)::int'),
        "INSERT",
        'NEW."messages" > 0 OR NEW."voice_seconds" > 0',
    ),
    (
        "member_stats_board_size_update",
        _BOARD_SIZE_UPSERT.format(
            '(NEW."messages" > 0)::int - (OLD."messages" > 0)::int',
            '(NEW."voice_seconds" > 0)::int - (OLD."voice_seconds" > 0)::int',
        ),
        'UPDATE OF "messages", "voice_seconds"',
        '(OLD."messages" > 0) <> (NEW."messages" > 0) OR (OLD."voice_seconds" > 0) <> (NEW."voice_seconds" > 0)',
    ),
    (
        "member_stats_board_size_delete",
        'UPDATE "board_size" SET "messages" = "messages" - (OLD."messages" > 0)::int, '
        '"voice" = "voice" - (OLD."voice_seconds" > 0)::int '
        'WHERE "guild_id" = OLD."guild_id" AND "season" = OLD."season";',
        "DELETE",
        'OLD."messages" > 0 OR OLD."voice_seconds" > 0',
    ),
)


def _v4_board_order_and_sizes(db: Database) -> None:
    if isinstance(db, SqliteDatabase):
        for sql in _V4_STATEMENTS:
            db.execute_sql(sql)
        return
    for sql in _V4_TABLES_AND_INDEXES:
        db.execute_sql(sql)
    for name, body, event, when in _V4_POSTGRES_TRIGGERS:
        db.execute_sql(
            f'CREATE FUNCTION "{name}"() RETURNS trigger LANGUAGE plpgsql '
            f"AS $body$ BEGIN {body} RETURN NULL; END $body$"
        )
        db.execute_sql(
            f'CREATE TRIGGER "{name}" AFTER {event} ON "member_stats" FOR EACH ROW WHEN ({when}) '
            f'EXECUTE FUNCTION "{name}"()'
        )


def _v5_lease(db: Database) -> None:
    # Which instance counts for a guild (services.lease): one row, taken over only once expired.
    db.execute_sql(
        'CREATE TABLE IF NOT EXISTS "lease" ("guild_id" BIGINT NOT NULL PRIMARY KEY, '
        '"holder" VARCHAR(255) NOT NULL, "acquired_at" DOUBLE PRECISION NOT NULL, '
        '"expires_at" DOUBLE PRECISION NOT NULL)'
    )


def _v6_ranked_counts_without_triggers(db: Database) -> None:
    # v4's per-row triggers cost a third of a large flush (0.3 s of 0.85 s for 100,000 new members);
    # ranked counts are now counted on the board index when a rank needs them, once per write
    # (repository.ranked_count), so the table they kept goes too.
    on = "" if isinstance(db, SqliteDatabase) else ' ON "member_stats"'
    for name in ("member_stats_board_size_insert", "member_stats_board_size_update", "member_stats_board_size_delete"):
        db.execute_sql(f'DROP TRIGGER IF EXISTS "{name}"{on}')
        if not isinstance(db, SqliteDatabase):
            db.execute_sql(f'DROP FUNCTION IF EXISTS "{name}"()')  # PostgreSQL's triggers call functions
    db.execute_sql('DROP TABLE IF EXISTS "board_size"')


def _v7_best_placings(db: Database) -> None:
    # Each member's best placing in any finished season, kept at every season's end, so /stats
    # reads one row instead of ranking the member in every past season. Filled for the seasons
    # that ended before it by repository.prepare_placings at the next start.
    db.execute_sql(
        'CREATE TABLE IF NOT EXISTS "best_placing" ("guild_id" BIGINT NOT NULL, "user_id" BIGINT NOT NULL, '
        '"season" BIGINT NOT NULL, "board" VARCHAR(10) NOT NULL, "rank" BIGINT NOT NULL, '
        '"value" DOUBLE PRECISION NOT NULL, PRIMARY KEY ("guild_id", "user_id"))'
    )


# v8 (SQLite only): the two tables every flush writes most, member_stats (a season's and each
# window's totals) and daily_activity, become WITHOUT ROWID tables clustered on their natural key:
# a row is stored once, in its primary key's B-tree, instead of in a rowid table plus a separate
# primary key index, so each upsert has one B-tree fewer to find and change. PostgreSQL has no
# rowid: unchanged there (the version still moves).
_V8_TABLES: tuple[tuple[str, str, str], ...] = (
    (
        "member_stats",
        '"guild_id" BIGINT NOT NULL, "season" BIGINT NOT NULL, "user_id" BIGINT NOT NULL, '
        '"messages" BIGINT NOT NULL DEFAULT 0, "voice_seconds" DOUBLE PRECISION NOT NULL DEFAULT 0, '
        'PRIMARY KEY ("guild_id", "season", "user_id")',
        '"guild_id", "season", "user_id", "messages", "voice_seconds"',
    ),
    (
        "daily_activity",
        '"guild_id" BIGINT NOT NULL, "day" VARCHAR(10) NOT NULL, "user_id" BIGINT NOT NULL, '
        '"messages" BIGINT NOT NULL DEFAULT 0, "voice_seconds" DOUBLE PRECISION NOT NULL DEFAULT 0, '
        'PRIMARY KEY ("guild_id", "day", "user_id")',
        '"guild_id", "day", "user_id", "messages", "voice_seconds"',
    ),
)
_V8_INDEXES = (
    'CREATE INDEX "member_stats_board_messages" ON "member_stats" ("guild_id", "season", "messages" DESC, "user_id")',
    'CREATE INDEX "member_stats_board_voice" ON "member_stats" ("guild_id", "season", "voice_seconds" DESC, "user_id")',
)


def _v8_without_rowid(db: Database) -> None:
    if not isinstance(db, SqliteDatabase):
        return
    for table, columns, names in _V8_TABLES:
        db.execute_sql(f'CREATE TABLE "{table}_v8" ({columns}) WITHOUT ROWID')
        db.execute_sql(f'INSERT INTO "{table}_v8" ({names}) SELECT {names} FROM "{table}" ORDER BY 1, 2, 3')
        db.execute_sql(f'DROP TABLE "{table}"')  # its indexes go with it
        db.execute_sql(f'ALTER TABLE "{table}_v8" RENAME TO "{table}"')
    for sql in _V8_INDEXES:
        db.execute_sql(sql)


MIGRATIONS: Sequence[Migration] = (
    _v1_core,
    _v2_seasons_and_ranking,
    _v3_portable_types,
    _v4_board_order_and_sizes,
    _v5_lease,
    _v6_ranked_counts_without_triggers,
    _v7_best_placings,
    _v8_without_rowid,
)
LATEST_VERSION = len(MIGRATIONS)


def current_version(db: Database) -> int:
    db.execute_sql(
        'CREATE TABLE IF NOT EXISTS "schema_version" ("id" BIGINT NOT NULL PRIMARY KEY, "version" BIGINT NOT NULL)'
    )
    row = db.execute_sql('SELECT "version" FROM "schema_version" WHERE "id" = 1').fetchone()
    return int(row[0]) if row else 0


def migrate(db: Database, *, target: int = LATEST_VERSION, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every migration above the stored version, each in its own transaction. Returns the version."""
    version = current_version(db)
    if version > len(migrations):
        raise SchemaTooNew(
            f"database schema version {version} is newer than this bot knows ({len(migrations)}): upgrade the bot"
        )
    while version < target:
        step = migrations[version]
        with db.atomic():
            step(db)
            version += 1
            db.execute_sql(
                f'INSERT INTO "schema_version" ("id", "version") VALUES (1, {db.param}) '
                'ON CONFLICT ("id") DO UPDATE SET "version" = excluded."version"',
                (version,),
            )
        logger.info("database migrated to schema version {}", version)
    return version
