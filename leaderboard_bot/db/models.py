"""peewee models. Times are Unix seconds (UTC) as doubles; days are UTC ``YYYY-MM-DD`` strings.

Only portable types: 64-bit integers, double precision, natural primary keys (no rowids), so that
the schema the migrations build is the same on SQLite and PostgreSQL (checked by a test).
"""

from __future__ import annotations

from peewee import (
    BigIntegerField,
    CharField,
    CompositeKey,
    DatabaseProxy,
    DoubleField,
    Model,
    TextField,
)

database_proxy = DatabaseProxy()


class BaseModel(Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class SchemaVersion(BaseModel):
    """A single row holding the number of the last migration applied."""

    id = BigIntegerField(primary_key=True)
    version = BigIntegerField()


class Setting(BaseModel):
    """Key-value settings and bot state (heartbeat, leaderboard message ids, ...), per guild."""

    guild_id = BigIntegerField()
    key = CharField()
    value = TextField()

    class Meta:
        primary_key = CompositeKey("guild_id", "key")


class MemberStats(BaseModel):
    """Running totals of one member in one season: what the leaderboards rank."""

    guild_id = BigIntegerField()
    season = BigIntegerField()
    user_id = BigIntegerField()
    messages = BigIntegerField(default=0)
    voice_seconds = DoubleField(default=0.0)

    class Meta:
        primary_key = CompositeKey("guild_id", "season", "user_id")


# Leaderboards walk one season of one guild in board order (value descending, then user id), and a
# rank is two range counts on that order: the index holds all of it, so neither needs the table.
MemberStats.add_index(
    MemberStats.guild_id,
    MemberStats.season,
    MemberStats.messages.desc(),
    MemberStats.user_id,
    name="member_stats_board_messages",
)
MemberStats.add_index(
    MemberStats.guild_id,
    MemberStats.season,
    MemberStats.voice_seconds.desc(),
    MemberStats.user_id,
    name="member_stats_board_voice",
)


class DailyActivity(BaseModel):
    """Per-member, per-UTC-day buckets, so any time window is a query rather than a new tracker."""

    guild_id = BigIntegerField()
    day = CharField(max_length=10)
    user_id = BigIntegerField()
    messages = BigIntegerField(default=0)
    voice_seconds = DoubleField(default=0.0)

    class Meta:
        primary_key = CompositeKey("guild_id", "day", "user_id")


class VoiceSession(BaseModel):
    """One stretch of counted voice time in one channel. ``last_seen_at`` is the heartbeat:
    time up to it has been credited, and a session left open by a crash is closed there."""

    key = CharField(primary_key=True)
    guild_id = BigIntegerField()
    user_id = BigIntegerField()
    channel_id = BigIntegerField()
    started_at = DoubleField()
    last_seen_at = DoubleField()
    ended_at = DoubleField(null=True)

    class Meta:
        indexes = ((("guild_id", "ended_at"), False),)


class MemberName(BaseModel):
    """The last display name seen for a member, so boards show names for people who left."""

    guild_id = BigIntegerField()
    user_id = BigIntegerField()
    display_name = CharField()
    username = CharField(null=True)
    updated_at = DoubleField()

    class Meta:
        primary_key = CompositeKey("guild_id", "user_id")


class Season(BaseModel):
    """A leaderboard season. The open one has ``ended_at`` NULL; finished ones are the archive."""

    guild_id = BigIntegerField()
    number = BigIntegerField()
    started_at = DoubleField()
    ends_at = DoubleField()
    ended_at = DoubleField(null=True)
    announced_at = DoubleField(null=True)  # final standings posted

    class Meta:
        primary_key = CompositeKey("guild_id", "number")


class BestPlacing(BaseModel):
    """A member's best placing in any finished season: the lowest rank on either board (then the
    later season, then messages before voice), updated as each season ends."""

    guild_id = BigIntegerField()
    user_id = BigIntegerField()
    season = BigIntegerField()
    board = CharField(max_length=10)
    rank = BigIntegerField()
    value = DoubleField()

    class Meta:
        primary_key = CompositeKey("guild_id", "user_id")


class Lease(BaseModel):
    """The one instance that counts for a guild, until ``expires_at`` (renewed with every flush)."""

    guild_id = BigIntegerField(primary_key=True)
    holder = CharField()
    acquired_at = DoubleField()  # when the holder last took or renewed it (its own clock)
    expires_at = DoubleField()


ALL_MODELS: tuple[type[BaseModel], ...] = (
    SchemaVersion,
    Setting,
    MemberStats,
    DailyActivity,
    VoiceSession,
    MemberName,
    Season,
    BestPlacing,
    Lease,
)
