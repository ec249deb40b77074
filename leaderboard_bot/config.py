"""Settings read from the environment and validated once, at startup.

Everything downstream receives a frozen :class:`Settings`, so a bad value fails
fast with one readable line instead of surfacing later as a strange runtime error.
Boot settings (token, database, guild, logging) never change; :class:`Tunables` are
only the defaults of what ``services.settings.RuntimeSettings`` serves live.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

__all__ = [
    "ConfigError",
    "Settings",
    "SpamLimit",
    "Tunables",
    "database_url_secrets",
    "earlier_state_paths",
    "is_postgres",
    "load_settings",
    "local_state_path",
    "parse_bool",
    "parse_duration",
    "parse_spam_limit",
    "postgres_url",
    "shown_database_url",
    "sqlite_path",
]


class ConfigError(Exception):
    """One invalid or missing setting; ``str(err)`` is ``"VARIABLE: problem"``."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class SpamLimit:
    """Token bucket: ``burst`` tokens, refilled completely every ``per_seconds``."""

    burst: int
    per_seconds: float

    @property
    def refill_rate(self) -> float:
        """Tokens added back per second."""
        return self.burst / self.per_seconds


@dataclass(frozen=True)
class Tunables:
    """The settings that may change while the bot runs; the environment gives their defaults.

    Components never copy these: they read the live values from
    :class:`leaderboard_bot.services.settings.RuntimeSettings`.
    """

    chat_lb_channel_id: int
    vc_lb_channel_id: int
    flush_interval: float
    update_interval: float
    reset_period: float
    spam_limit: SpamLimit | None
    voice_count_deafened: bool
    voice_count_alone: bool
    arrow_emoji: str
    leaderboard_size: int
    cache_ttl: float
    voice_session_retention: float
    command_limit: SpamLimit | None
    excluded_channels: frozenset[int]  # text or voice channels (or categories) that never count
    excluded_roles: frozenset[int]  # members with any of these roles are not counted
    hide_departed: bool = False  # HIDE_DEPARTED: members no longer in the server are left off the boards


@dataclass(frozen=True)
class Settings:
    """Boot settings, fixed for the life of the process, plus the defaults of the tunables."""

    # repr=False keeps the token out of logs and tracebacks that print the settings.
    bot_token: str = field(repr=False)
    guild_id: int
    database_url: str
    log_level: str
    log_format: str
    tunables: Tunables
    health_port: int | None = None  # HEALTH_PORT: the /healthz and /metrics server, off by default
    health_host: str = "127.0.0.1"
    log_file: str | None = None  # LOG_FILE: also log to this file, rotated and compressed
    max_pending_rows: int = 1_000_000  # MAX_PENDING_ROWS: unwritten rows kept in memory before spilling to disk
    standby: bool = False  # STANDBY: with another instance running, wait as a hot standby instead of exiting
    timezone: str = "UTC"  # TIMEZONE: the IANA zone whose days bucket activity (today/week/month boards)
    charts: bool = True  # CHARTS: draw /stats and /top charts (matplotlib, in a child process)
    web_port: int | None = None  # WEB_PORT: the web leaderboard, off by default
    web_host: str = "127.0.0.1"  # WEB_HOST
    web_public: bool = False  # WEB_PUBLIC: false asks visitors to sign in with Discord (members only)
    web_oauth_base: str = "https://discord.com"  # WEB_OAUTH_BASE: Discord's OAuth2 and API origin
    web_client_id: str | None = None  # WEB_CLIENT_ID: the application's OAuth2 client id
    web_client_secret: str | None = field(default=None, repr=False)  # WEB_CLIENT_SECRET
    web_redirect_url: str | None = None  # WEB_REDIRECT_URL: https://your.host/auth/callback


# --------------------------------------------------------------------------- parsers

_DURATION_UNITS: dict[str, float] = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Explicit grammar instead of float(): float() would also accept "nan", "inf", "1e3" and "1_0".
_DURATION_RE = re.compile(r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>[a-z]*)")
_DURATION_HINT = "like 5s, 15m, 2h or 30d"

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_OFF_WORDS = frozenset({"off", "none", "no", "false"})  # "this feature is off" for optional values

_SPAM_RE = re.compile(r"(?P<count>[^/]*)/(?P<duration>.*)")
_SPAM_HINT = "use N/duration like 5/5s (N messages per duration), or off"

_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_LOG_FORMATS = ("json", "text", "auto")

_SQLITE_PREFIX = "sqlite:///"
_SQLITE_HINT = "use sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:///:memory:"
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_URL_HINT = (
    "use sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory: "
    "or postgresql://user:password@host/database"
)

# Snowflakes are unsigned 64-bit integers.
_MAX_SNOWFLAKE = 2**64 - 1
_LEADERBOARD_MIN = 1
_LEADERBOARD_MAX = 25  # Discord caps an embed at 25 fields.


def _show(text: str) -> str:
    """Quote a user value for an error message; JSON escaping keeps it on one line.

    Deliberately not truncated: a cut-off value could defeat token redaction in load_settings.
    """
    return json.dumps(text, ensure_ascii=False)


_SHORTEST_DURATION = 0.001


def parse_duration(text: str) -> float:
    """Parse ``90s``, ``15m``, ``1.5h``, ``30d`` or plain seconds (``60``) into positive seconds."""
    cleaned = text.strip().lower()
    if not cleaned:
        raise ValueError(f"empty value is not a valid duration: use a positive number, {_DURATION_HINT}")
    match = _DURATION_RE.fullmatch(cleaned)
    if match is None:
        raise ValueError(
            f"{_show(text)} is not a valid duration: use a number with an optional "
            f"s, m, h or d suffix, {_DURATION_HINT}"
        )
    unit = match["unit"]
    if unit not in _DURATION_UNITS:
        raise ValueError(
            f"{_show(text)} is not a valid duration: unknown unit {_show(unit)}, use s, m, h or d, {_DURATION_HINT}"
        )
    seconds = float(match["number"]) * _DURATION_UNITS[unit]
    if not math.isfinite(seconds):
        raise ValueError(f"{_show(text)} is not a valid duration: it is too large, {_DURATION_HINT}")
    if seconds <= 0:
        raise ValueError(f"{_show(text)} is not a valid duration: it must be positive, {_DURATION_HINT}")
    if seconds < _SHORTEST_DURATION:  # a rate over it (a spam limit's refill) would be infinite
        raise ValueError(f"{_show(text)} is not a valid duration: it is too short, use at least 0.001s")
    return seconds


def parse_bool(text: str) -> bool:
    """Parse true/false, yes/no, on/off or 1/0, case-insensitively."""
    cleaned = text.strip().lower()
    if cleaned in _TRUE_WORDS:
        return True
    if cleaned in _FALSE_WORDS:
        return False
    raise ValueError(f"{_show(text)} is not a valid boolean: use true/false, yes/no, on/off or 1/0")


def parse_spam_limit(text: str) -> SpamLimit | None:
    """Parse ``N/duration`` (``5/5s``, ``10/1m``) into a :class:`SpamLimit`; ``off`` means no limit."""
    cleaned = text.strip()
    if cleaned.lower() == "off":
        return None
    match = _SPAM_RE.fullmatch(cleaned)
    if match is None:
        raise ValueError(f"{_show(text)} is not a valid spam limit: {_SPAM_HINT}")
    count_text = match["count"].strip()
    # isdecimal() rather than int(): int() also takes "+5", "5_0" and non-ASCII digits.
    if not (count_text.isascii() and count_text.isdecimal()):
        raise ValueError(f"{_show(text)} is not a valid spam limit: N must be a whole number, {_SPAM_HINT}")
    burst = int(count_text)
    if burst < 1:
        raise ValueError(f"{_show(text)} is not a valid spam limit: N must be at least 1, {_SPAM_HINT}")
    try:
        per_seconds = parse_duration(match["duration"])
    except ValueError as exc:
        raise ValueError(f"{_show(text)} is not a valid spam limit: {exc}") from None
    return SpamLimit(burst=burst, per_seconds=per_seconds)


def sqlite_path(database_url: str) -> str:
    """Return the file path (or ``:memory:``) of a ``sqlite:///`` URL; other URLs raise ValueError."""
    scheme, sep, _ = database_url.partition("://")
    if not sep:
        problem = f"{_show(database_url)} is not a database URL"
    elif scheme.lower() != "sqlite":
        # Show only the scheme: other URLs often carry a password.
        problem = f"{_show(scheme + '://...')} is not a SQLite URL"
    elif not database_url.lower().startswith(_SQLITE_PREFIX):
        problem = f"{_show(database_url)} needs three slashes after the colon"
    elif not database_url[len(_SQLITE_PREFIX) :]:
        problem = f"{_show(database_url)} has no database path"
    else:
        return database_url[len(_SQLITE_PREFIX) :]
    raise ValueError(f"{problem}: {_SQLITE_HINT}")


def is_postgres(database_url: str) -> bool:
    return database_url.partition("://")[0].lower() in _POSTGRES_SCHEMES


def postgres_url(database_url: str) -> str:
    """The URL in the form libpq and peewee both take (``postgres://`` becomes ``postgresql://``)."""
    rest = database_url.partition("://")[2]
    return f"postgresql://{rest}"


_MIN_REDACTED_PASSWORD = 4  # shorter ones would turn every such letter in the log into [REDACTED]


def _authority(database_url: str) -> tuple[str, str, str]:
    """(scheme, user part, the rest) of a PostgreSQL URL, split as libpq reads it: the user part
    ends at an "@" before any "/", so "#" or "?" in an unescaped password stay in it (urlsplit
    would stop at them and leave the password in the host)."""
    scheme, _, rest = database_url.partition("://")
    head = rest.split("/", 1)[0]
    userinfo, at, _ = head.rpartition("@")  # the last "@": an unescaped one in the password stays in it
    return (scheme, userinfo, rest[len(userinfo) + 1 :]) if at else (scheme, "", rest)


def _query_passwords(rest: str) -> list[str]:
    """``?password=`` values as written (database_url_secrets adds their decoded form)."""
    pairs = (pair.partition("=") for pair in rest.partition("?")[2].split("&"))
    return [value for key, _, value in pairs if key == "password"]


def _without_user(database_url: str) -> SplitResult:
    """The URL split without its user part, so that a password's "#", "?" or ":" cannot be taken
    for a port, a query or a fragment."""
    scheme, _, rest = _authority(database_url)
    return urlsplit(f"{scheme}://{rest}")


def _url_passwords(database_url: str) -> list[str]:
    """A PostgreSQL URL's passwords as written: in its user part and as ``?password=`` values."""
    if not is_postgres(database_url):
        return []
    _, userinfo, rest = _authority(database_url)
    found = [userinfo.partition(":")[2], *_query_passwords(rest)]
    return [password for password in found if password]


def database_url_secrets(database_url: str) -> list[str]:
    """The URL's passwords, as written and decoded, for the log redaction: a driver's error or a
    traceback may repeat them. Very short ones are left out; the URL itself is logged through
    :func:`shown_database_url`, which hides any password."""
    secrets = {form for password in _url_passwords(database_url) for form in (password, unquote(password))}
    return sorted(secret for secret in secrets if len(secret) >= _MIN_REDACTED_PASSWORD)


def shown_database_url(database_url: str) -> str:
    """The URL fit for a log line: its password, wherever it is written, replaced by ``***``."""
    if not is_postgres(database_url):
        return database_url
    scheme, userinfo, rest = _authority(database_url)
    user, colon, _ = userinfo.partition(":")
    shown_user = f"{user}:***@" if colon else f"{user}@" if userinfo else ""
    base, question, query = rest.partition("?")
    if question:
        query = "&".join("password=***" if pair.partition("=")[0] == "password" else pair for pair in query.split("&"))
    return f"{scheme}://{shown_user}{base}{question}{query}"


def postgres_driver_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("psycopg", "psycopg2"))


def _check_postgres_url(database_url: str) -> None:
    scheme = database_url.partition("://")[0]
    try:
        _without_user(database_url).port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValueError(f"{_show(scheme + '://...')} has no valid port: {_URL_HINT}") from None
    if not postgres_driver_installed():
        raise ValueError(
            "PostgreSQL needs its driver, which is not installed: pip install '.[postgres]' "
            "(or pip install 'psycopg[binary]')"
        )


def local_state_path(database_url: str, guild_id: int) -> str:
    """Where the files that belong to one machine live, without their suffix: the instance lock
    (``.lock``) and the recovery file (``.unsaved.json``). Beside the file for SQLite (``:memory:``
    for an in-memory one); for PostgreSQL in the directory the bot starts in, named after the
    guild, the server and the database, so two bots in one directory never share them."""
    if not is_postgres(database_url):
        path = sqlite_path(database_url)
        # The file itself, not a link to it: two bots reaching one file by two paths (a symlink, a
        # releases/current deploy) must find the same lock and the same recovery file.
        return path if path == ":memory:" else os.path.realpath(path)
    database, host = _postgres_target(database_url)
    safe = _safe_name(database, host)
    if safe != f"{database}-{host}":
        # Characters were replaced: lb-a and lb_a would share one name, and one database's
        # unwritten counts would be written into the other. The exact target tells them apart.
        safe += "-" + hashlib.sha256(f"{database}\0{host}".encode()).hexdigest()[:8]
    return os.path.abspath(f"leaderboard-{guild_id}-{safe}")


def earlier_state_paths(database_url: str, guild_id: int) -> list[str]:
    """Where earlier versions kept the same files, when it differs (read for recovery files only):
    beside a symlink rather than the file it points to. (Not PostgreSQL names without the digest:
    that name may now be another database's.)"""
    if is_postgres(database_url):
        return []
    path = sqlite_path(database_url)
    linked = path if path == ":memory:" else os.path.abspath(path)
    return [] if linked in (":memory:", local_state_path(database_url, guild_id)) else [linked]


def _postgres_target(database_url: str) -> tuple[str, str]:
    """(database, host[_port]) a PostgreSQL URL connects to."""
    parts = _without_user(database_url)
    host = parts.hostname or "local"
    if parts.port is not None:
        host = f"{host}_{parts.port}"
    user = _authority(database_url)[1].partition(":")[0]
    return unquote(parts.path.lstrip("/")) or unquote(user) or "postgres", host


def _safe_name(database: str, host: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", part) for part in (database, host))


def _parse_snowflake(text: str) -> int:
    cleaned = text.strip()
    if not (cleaned.isascii() and cleaned.isdecimal()) or not 0 < int(cleaned) <= _MAX_SNOWFLAKE:
        raise ValueError(
            f"{_show(text)} is not a valid Discord ID: it must be a positive whole number "
            "(copy it with Developer Mode > Copy ID)"
        )
    return int(cleaned)


def parse_id_list(text: str) -> frozenset[int]:
    """Comma- or space-separated Discord IDs (channel mentions like <#123> work too); off or none: empty."""
    cleaned = text.strip()
    if not cleaned or cleaned.lower() in _OFF_WORDS:
        return frozenset()
    ids = set()
    for part in re.split(r"[\s,]+", cleaned):
        if part:
            ids.add(_parse_snowflake(part.strip("<#@&>")))
    return frozenset(ids)


def _parse_database_url(text: str) -> str:
    cleaned = text.strip()
    if is_postgres(cleaned):
        _check_postgres_url(cleaned)
        return cleaned
    if cleaned.partition("://")[1] and cleaned.partition("://")[0].lower() != "sqlite":
        # Show only the scheme: other URLs often carry a password.
        raise ValueError(f"{_show(cleaned.partition('://')[0] + '://...')} is not supported: {_URL_HINT}")
    try:
        sqlite_path(cleaned)  # validation only; the URL itself is what the rest of the bot stores
    except ValueError as error:
        raise ValueError(str(error).replace(_SQLITE_HINT, _URL_HINT)) from None
    return cleaned


def _parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LOG_LEVELS:
        raise ValueError(f"{_show(text)} is not a log level: use one of {', '.join(_LOG_LEVELS)}")
    return level


def _parse_log_format(text: str) -> str:
    log_format = text.strip().lower()
    if log_format not in _LOG_FORMATS:
        raise ValueError(f"{_show(text)} is not a log format: use json, text or auto")
    return log_format


# A custom emoji is at most 57 characters (<a:, a 32-character name, a 20-digit id, >). More would
# push lines off a 25-line board, and a few thousand would leave its text empty.
_EMOJI_MAX = 64


def _parse_emoji(text: str) -> str:
    emoji = text.strip()
    if not emoji:
        raise ValueError("must not be empty: use an emoji like <a:name:123> or a unicode emoji")
    if len(emoji) > _EMOJI_MAX:
        raise ValueError(
            f"is {len(emoji):,} characters long: use one emoji like <a:name:123> or a unicode emoji "
            f"(at most {_EMOJI_MAX} characters)"
        )
    return emoji


def _parse_leaderboard_size(text: str) -> int:
    cleaned = text.strip()
    if not (cleaned.isascii() and cleaned.isdecimal()) or not (_LEADERBOARD_MIN <= int(cleaned) <= _LEADERBOARD_MAX):
        raise ValueError(
            f"{_show(text)} is not a valid size: it must be a whole number from "
            f"{_LEADERBOARD_MIN} to {_LEADERBOARD_MAX}"
        )
    return int(cleaned)


def _parse_port(text: str) -> int | None:
    cleaned = text.strip().lower()
    if cleaned in _OFF_WORDS:
        return None
    if not (cleaned.isascii() and cleaned.isdecimal()) or not 1 <= int(cleaned) <= 65535:
        raise ValueError(f"{_show(text)} is not a port: use a number from 1 to 65535, or off")
    return int(cleaned)


def _parse_log_file(text: str) -> str | None:
    path = text.strip()
    if path.lower() in _OFF_WORDS:
        return None
    if "\x00" in path:
        raise ValueError("is not a usable file path")
    return path


_PENDING_MIN, _PENDING_MAX = 10, 100_000_000


def _parse_pending_rows(text: str) -> int:
    cleaned = text.strip().replace("_", "").replace(",", "")
    if not (cleaned.isascii() and cleaned.isdecimal()) or not (_PENDING_MIN <= int(cleaned) <= _PENDING_MAX):
        raise ValueError(
            f"{_show(text)} is not a valid row count: use a whole number from {_PENDING_MIN:,} to {_PENDING_MAX:,}"
        )
    return int(cleaned)


# Names in the zone database that are not places: the machine's own setting, a placeholder (and
# the posix/ and right/ copies, right/ counting leap seconds that Unix time does not have).
MACHINE_ZONES = frozenset(("localtime", "posixrules", "factory"))


def _parse_timezone(text: str) -> str:
    name = text.strip()
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return "UTC"
    if name.lower() in MACHINE_ZONES or name.lower().startswith(("posix/", "right/")):
        raise ValueError(
            f"{_show(text)} is a file of this machine's time zone setup, not a zone: use your zone's IANA "
            "name (`timedatectl` shows it), like Europe/Berlin or America/New_York"
        )
    try:
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError, IsADirectoryError, UnicodeError):
        spelled = {zone.lower(): zone for zone in available_timezones() if zone.lower() not in MACHINE_ZONES}.get(
            name.lower()
        )
        hint = f"did you mean {spelled}?" if spelled else "use an IANA name like UTC, Europe/Berlin or America/New_York"
        raise ValueError(f"{_show(text)} is not a time zone: {hint}") from None
    return name


def _parse_host(text: str) -> str:
    host = text.strip()
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"{_show(text)} is not a host: use an address like 127.0.0.1 or 0.0.0.0")
    return host


def _parse_optional_text(text: str) -> str | None:
    value = text.strip()
    if value.lower() in _OFF_WORDS:
        return None
    if any(ch.isspace() for ch in value):
        raise ValueError("has spaces: use the value as the developer portal shows it, or off")  # may be a secret
    return value


def _parse_web_url(text: str) -> str | None:
    value = _parse_optional_text(text)
    if value is not None and (not value.startswith(("https://", "http://")) or len(value) <= len("http://")):
        raise ValueError(f"{_show(text)} is not a web address: use one like https://lb.example.com/x, or off")
    return value.rstrip("/") if value is not None else None


def _parse_oauth_base(text: str) -> str:
    value = _parse_web_url(text)
    if value is None:
        raise ValueError(f"{_show(text)} is required: use https://discord.com")
    return value


def _duration_at_most(
    limit: float, limit_text: str, least: float = 0.0, least_text: str = ""
) -> Callable[[str], float]:
    """A duration parser with an upper bound (absurd values would overflow timers and dates) and
    optionally a lower one (a loop every few microseconds would spin the CPU and flood the log)."""

    def parse(text: str) -> float:
        seconds = parse_duration(text)
        if seconds > limit:
            raise ValueError(f"{_show(text)} is too long: the most allowed is {limit_text}")
        if seconds < least:
            raise ValueError(f"{_show(text)} is too short: the least allowed is {least_text}")
        return seconds

    return parse


_HOUR, _DAY = 3600.0, 86400.0

# (variable, Settings field, default, parser) in validation order; the first failure is reported.
_VARIABLES: tuple[tuple[str, str, str, Callable[[str], Any]], ...] = (
    ("GUILD_ID", "guild_id", "1315029949211738222", _parse_snowflake),
    ("CHAT_LB_CHANNEL_ID", "chat_lb_channel_id", "1404855785183252572", _parse_snowflake),
    ("VC_LB_CHANNEL_ID", "vc_lb_channel_id", "1404855743596728374", _parse_snowflake),
    ("DATABASE_URL", "database_url", "sqlite:///leaderboard.db", _parse_database_url),
    ("FLUSH_INTERVAL", "flush_interval", "5s", _duration_at_most(_HOUR, "1h", 0.5, "0.5s")),
    ("UPDATE_INTERVAL", "update_interval", "60s", _duration_at_most(_DAY, "1d", 1.0, "1s")),
    ("RESET_PERIOD", "reset_period", "30d", _duration_at_most(3660 * _DAY, "3660d (10 years)")),
    ("SPAM_LIMIT", "spam_limit", "5/5s", parse_spam_limit),
    ("VOICE_COUNT_DEAFENED", "voice_count_deafened", "false", parse_bool),
    ("VOICE_COUNT_ALONE", "voice_count_alone", "true", parse_bool),
    ("LOG_LEVEL", "log_level", "INFO", _parse_log_level),
    ("LOG_FORMAT", "log_format", "auto", _parse_log_format),
    ("ARROW_EMOJI", "arrow_emoji", "<a:purp_arrow:1403295268505522187>", _parse_emoji),
    ("LEADERBOARD_SIZE", "leaderboard_size", "10", _parse_leaderboard_size),
    ("CACHE_TTL", "cache_ttl", "30s", _duration_at_most(_DAY, "1d")),
    (
        "VOICE_SESSION_RETENTION",
        "voice_session_retention",
        "90d",
        _duration_at_most(3660 * _DAY, "3660d (10 years)"),
    ),
    ("COMMAND_LIMIT", "command_limit", "3/10s", parse_spam_limit),
    ("EXCLUDED_CHANNELS", "excluded_channels", "none", parse_id_list),
    ("EXCLUDED_ROLES", "excluded_roles", "none", parse_id_list),
    ("HIDE_DEPARTED", "hide_departed", "false", parse_bool),
    ("HEALTH_PORT", "health_port", "off", _parse_port),
    ("HEALTH_HOST", "health_host", "127.0.0.1", _parse_host),
    ("LOG_FILE", "log_file", "off", _parse_log_file),
    ("MAX_PENDING_ROWS", "max_pending_rows", "1000000", _parse_pending_rows),
    ("STANDBY", "standby", "off", parse_bool),
    ("TIMEZONE", "timezone", "UTC", _parse_timezone),
    ("CHARTS", "charts", "on", parse_bool),
    ("WEB_PORT", "web_port", "off", _parse_port),
    ("WEB_HOST", "web_host", "127.0.0.1", _parse_host),
    ("WEB_PUBLIC", "web_public", "false", parse_bool),
    ("WEB_OAUTH_BASE", "web_oauth_base", "https://discord.com", _parse_oauth_base),
    ("WEB_CLIENT_ID", "web_client_id", "off", _parse_optional_text),
    ("WEB_CLIENT_SECRET", "web_client_secret", "off", _parse_optional_text),
    ("WEB_REDIRECT_URL", "web_redirect_url", "off", _parse_web_url),
)


# What /leaderboard settings may change while the bot runs (stored overrides win over the environment).
RUNTIME_VARIABLES: tuple[str, ...] = (
    "UPDATE_INTERVAL",
    "SPAM_LIMIT",
    "VOICE_COUNT_DEAFENED",
    "VOICE_COUNT_ALONE",
    "LEADERBOARD_SIZE",
    "ARROW_EMOJI",
    "CHAT_LB_CHANNEL_ID",
    "VC_LB_CHANNEL_ID",
    "EXCLUDED_CHANNELS",
    "EXCLUDED_ROLES",
    "HIDE_DEPARTED",
)


def parse_runtime(variable: str, text: str) -> tuple[str, Any]:
    """Validate a runtime change with the environment's own parser: (Tunables field, value)."""
    for name, field_name, _default, parser in _VARIABLES:
        if name == variable and variable in RUNTIME_VARIABLES:
            try:
                return field_name, parser(text)
            except ValueError as exc:
                raise ConfigError(variable, str(exc)) from None
    raise ConfigError(variable, f"cannot be changed at runtime; these can: {', '.join(RUNTIME_VARIABLES)}")


def field_of(variable: str) -> str:
    return next(field_name for name, field_name, *_ in _VARIABLES if name == variable)


def show_value(value: Any) -> str:
    """A tunable's value in the words its variable takes."""
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SpamLimit):
        return f"{value.burst}/{value.per_seconds:g}s"
    if isinstance(value, frozenset):
        return ", ".join(str(v) for v in sorted(value)) or "none"
    if isinstance(value, float):
        return f"{value:g}s"
    return str(value)


# Every variable the bot reads, token first (for docs and for tests that need a clean environment).
ENVIRONMENT_VARIABLES: tuple[str, ...] = ("BOT_TOKEN", *(variable for variable, *_ in _VARIABLES))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``); raise :class:`ConfigError`."""
    env: Mapping[str, str] = os.environ if environ is None else environ

    token = env.get("BOT_TOKEN", "").strip()
    if not token:
        raise ConfigError("BOT_TOKEN", "is required: put your bot token in .env or the environment")

    values: dict[str, Any] = {"bot_token": token}
    for variable, name, default, parser in _VARIABLES:
        raw = env.get(variable, "")
        # Blank counts as unset so a `KEY=` line in .env falls back to the default.
        if not raw.strip():
            raw = default
        try:
            values[name] = parser(raw)
        except ValueError as exc:
            # The token may have been pasted into the wrong variable; never echo it.
            raise ConfigError(variable, str(exc).replace(token, "[REDACTED]")) from None
    if values["web_port"] is not None and values["web_port"] == values["health_port"]:
        raise ConfigError("WEB_PORT", f"is {values['web_port']}, the port HEALTH_PORT uses: give each its own port")
    tunable_names = {f.name for f in fields(Tunables)}
    tunables = Tunables(**{name: value for name, value in values.items() if name in tunable_names})
    boot = {name: value for name, value in values.items() if name not in tunable_names}
    return Settings(**boot, tunables=tunables)
