"""peewee models. Times are Unix seconds (UTC) stored as floats; days are UTC ``YYYY-MM-DD`` strings."""

from __future__ import annotations

from peewee import (
    BigIntegerField,
    CharField,
    CompositeKey,
    DatabaseProxy,
    FloatField,
    IntegerField,
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

    id = IntegerField(primary_key=True)
    version = IntegerField()


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
    season = IntegerField()
    user_id = BigIntegerField()
    messages = IntegerField(default=0)
    voice_seconds = FloatField(default=0.0)

    class Meta:
        primary_key = CompositeKey("guild_id", "season", "user_id")


class DailyActivity(BaseModel):
    """Per-member, per-UTC-day buckets, so any time window is a query rather than a new tracker."""

    guild_id = BigIntegerField()
    day = CharField(max_length=10)
    user_id = BigIntegerField()
    messages = IntegerField(default=0)
    voice_seconds = FloatField(default=0.0)

    class Meta:
        primary_key = CompositeKey("guild_id", "day", "user_id")


class VoiceSession(BaseModel):
    """One stretch of counted voice time in one channel. ``last_seen_at`` is the heartbeat:
    time up to it has been credited, and a session left open by a crash is closed there."""

    key = CharField(unique=True)
    guild_id = BigIntegerField()
    user_id = BigIntegerField()
    channel_id = BigIntegerField()
    started_at = FloatField()
    last_seen_at = FloatField()
    ended_at = FloatField(null=True)


class MemberName(BaseModel):
    """The last display name seen for a member, so boards show names for people who left."""

    guild_id = BigIntegerField()
    user_id = BigIntegerField()
    display_name = CharField()
    username = CharField(null=True)
    updated_at = FloatField()

    class Meta:
        primary_key = CompositeKey("guild_id", "user_id")


class Season(BaseModel):
    """A leaderboard season. The open one has ``ended_at`` NULL; finished ones are the archive."""

    guild_id = BigIntegerField()
    number = IntegerField()
    started_at = FloatField()
    ends_at = FloatField()
    ended_at = FloatField(null=True)
    announced_at = FloatField(null=True)  # final standings posted

    class Meta:
        indexes = ((("guild_id", "number"), True),)


ALL_MODELS: tuple[type[BaseModel], ...] = (
    SchemaVersion,
    Setting,
    MemberStats,
    DailyActivity,
    VoiceSession,
    MemberName,
    Season,
)
