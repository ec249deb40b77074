"""Tests for leaderboard_bot.config: parsers, defaults, overrides and error messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leaderboard_bot import config
from leaderboard_bot.config import (
    ConfigError,
    Settings,
    SpamLimit,
    Tunables,
    database_url_secrets,
    is_postgres,
    load_settings,
    local_state_path,
    parse_bool,
    parse_duration,
    parse_spam_limit,
    postgres_url,
    shown_database_url,
    sqlite_path,
)

# Looks like a real token so a leak would be obvious, but it is not one.
TOKEN = "MTA0OTk5OTk5OTk5OTk5OTk5OQ.GhIjKl.fake_token_value-for-tests_only"


def env(**overrides: str) -> dict[str, str]:
    return {"BOT_TOKEN": TOKEN, **overrides}


# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("30d", 2_592_000.0),
        ("1.5h", 5400.0),
        ("0.5", 0.5),
        ("60", 60.0),
        (".5s", 0.5),
        ("5.", 5.0),
        ("  5s  ", 5.0),
        ("5S", 5.0),
        ("15M", 900.0),
        ("1 h", 3600.0),
        ("\t2D\n", 172_800.0),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "-5s", "0", "0s", "5x", "nan", "inf", "-inf", "5ms", "s", "1e3", "5s5", "1" * 400],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-5s", "it must be positive"),
        ("0", "it must be positive"),
        ("5x", 'unknown unit "x"'),
        ("abc", "use a number with an optional s, m, h or d suffix"),
        ("", "empty value"),
    ],
)
def test_parse_duration_messages_explain(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert reason in message
    assert "like 5s, 15m, 2h or 30d" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- parse_bool


@pytest.mark.parametrize("text", ["true", "TRUE", "True", "yes", "YES", "on", "On", "1", " true "])
def test_parse_bool_true(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["false", "FALSE", "no", "No", "off", "OFF", "0", " off\n"])
def test_parse_bool_false(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["", "maybe", "2", "tru", "y", "n", "enabled"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="true/false, yes/no, on/off or 1/0"):
        parse_bool(text)


# --------------------------------------------------------------------------- parse_spam_limit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5/5s", SpamLimit(burst=5, per_seconds=5.0)),
        ("10/1m", SpamLimit(burst=10, per_seconds=60.0)),
        ("1/0.5", SpamLimit(burst=1, per_seconds=0.5)),
        (" 3 / 2h ", SpamLimit(burst=3, per_seconds=7200.0)),
        ("off", None),
        ("OFF", None),
        (" Off ", None),
    ],
)
def test_parse_spam_limit_accepts(text: str, expected: SpamLimit | None) -> None:
    assert parse_spam_limit(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("5", "use N/duration"),
        ("", "use N/duration"),
        ("0/5s", "N must be at least 1"),
        ("5/0s", "must be positive"),
        ("5/-1s", "must be positive"),
        ("a/5s", "N must be a whole number"),
        ("1.5/5s", "N must be a whole number"),
        ("-1/5s", "N must be a whole number"),
        ("5/", "not a valid duration"),
        ("5/abc", "not a valid duration"),
        ("5/5s/5s", "not a valid duration"),
    ],
)
def test_parse_spam_limit_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="not a valid spam limit") as info:
        parse_spam_limit(text)
    assert reason in str(info.value)


def test_spam_limit_refill_rate() -> None:
    assert SpamLimit(burst=5, per_seconds=5.0).refill_rate == 1.0
    assert SpamLimit(burst=10, per_seconds=60.0).refill_rate == pytest.approx(1 / 6)


def test_spam_limit_is_frozen() -> None:
    limit = SpamLimit(burst=5, per_seconds=5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limit.burst = 6  # type: ignore[misc]


# --------------------------------------------------------------------------- sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///leaderboard.db", "leaderboard.db"),
        ("sqlite:///data/lb.db", "data/lb.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_path(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url",
    [
        "postgres://user:pw@localhost/db",
        "mysql://x",
        "garbage",
        "",
        "sqlite:///",
        "sqlite://x.db",
        "sqlite:x.db",
    ],
)
def test_sqlite_path_rejects(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///:memory:"):
        sqlite_path(url)


def test_sqlite_path_does_not_echo_other_urls() -> None:
    # Non-SQLite URLs usually embed a password; only the scheme may be shown.
    with pytest.raises(ValueError) as info:
        sqlite_path("postgres://user:hunter2@localhost/db")
    assert "hunter2" not in str(info.value)
    assert "postgres://" in str(info.value)


# --------------------------------------------------------------------------- load_settings: defaults


def test_defaults_with_only_token() -> None:
    settings = load_settings(env())
    assert settings == Settings(
        bot_token=TOKEN,
        guild_id=1315029949211738222,
        database_url="sqlite:///leaderboard.db",
        log_level="INFO",
        log_format="auto",
        tunables=Tunables(
            chat_lb_channel_id=1404855785183252572,
            vc_lb_channel_id=1404855743596728374,
            flush_interval=5.0,
            update_interval=60.0,
            reset_period=30 * 86400.0,
            spam_limit=SpamLimit(burst=5, per_seconds=5.0),
            voice_count_deafened=False,
            voice_count_alone=True,
            arrow_emoji="<a:purp_arrow:1403295268505522187>",
            leaderboard_size=10,
            cache_ttl=30.0,
            voice_session_retention=90 * 86400.0,
            command_limit=SpamLimit(burst=3, per_seconds=10.0),
            excluded_channels=frozenset(),
            excluded_roles=frozenset(),
        ),
    )
    # Exact types matter to code doing arithmetic / Discord API calls with these.
    assert type(settings.guild_id) is int
    assert type(settings.tunables.leaderboard_size) is int
    assert type(settings.tunables.flush_interval) is float


def test_settings_is_frozen() -> None:
    settings = load_settings(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.guild_id = 1  # type: ignore[misc]


def test_every_variable_overridden() -> None:
    settings = load_settings(
        env(
            GUILD_ID="111",
            CHAT_LB_CHANNEL_ID="222",
            VC_LB_CHANNEL_ID="333",
            DATABASE_URL="sqlite:////var/lib/lb/data.db",
            FLUSH_INTERVAL="2.5",
            UPDATE_INTERVAL="2m",
            RESET_PERIOD="7d",
            SPAM_LIMIT="10/1m",
            VOICE_COUNT_DEAFENED="yes",
            VOICE_COUNT_ALONE="off",
            LOG_LEVEL="debug",
            LOG_FORMAT="JSON",
            ARROW_EMOJI="➡️",
            LEADERBOARD_SIZE="25",
            CACHE_TTL="1h",
            VOICE_SESSION_RETENTION="7d",
            COMMAND_LIMIT="off",
            EXCLUDED_CHANNELS="11, <#22>",
            EXCLUDED_ROLES="33",
        )
    )
    assert settings == Settings(
        bot_token=TOKEN,
        guild_id=111,
        database_url="sqlite:////var/lib/lb/data.db",
        log_level="DEBUG",
        log_format="json",
        tunables=Tunables(
            chat_lb_channel_id=222,
            vc_lb_channel_id=333,
            flush_interval=2.5,
            update_interval=120.0,
            reset_period=7 * 86400.0,
            spam_limit=SpamLimit(burst=10, per_seconds=60.0),
            voice_count_deafened=True,
            voice_count_alone=False,
            arrow_emoji="➡️",
            leaderboard_size=25,
            cache_ttl=3600.0,
            voice_session_retention=7 * 86400.0,
            command_limit=None,
            excluded_channels=frozenset({11, 22}),
            excluded_roles=frozenset({33}),
        ),
    )


def test_spam_limit_off() -> None:
    assert load_settings(env(SPAM_LIMIT="OFF")).tunables.spam_limit is None


@pytest.mark.parametrize("level", ["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"])
def test_every_log_level(level: str) -> None:
    assert load_settings(env(LOG_LEVEL=level.lower())).log_level == level


@pytest.mark.parametrize("log_format", ["json", "text", "auto"])
def test_every_log_format(log_format: str) -> None:
    assert load_settings(env(LOG_FORMAT=log_format.upper())).log_format == log_format


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///leaderboard.db", "leaderboard.db"),
        ("sqlite:////abs/x.db", "/abs/x.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_database_url_forms(url: str, path: str) -> None:
    settings = load_settings(env(DATABASE_URL=url))
    assert settings.database_url == url
    assert sqlite_path(settings.database_url) == path


def test_leaderboard_size_bounds_accepted() -> None:
    assert load_settings(env(LEADERBOARD_SIZE="1")).tunables.leaderboard_size == 1
    assert load_settings(env(LEADERBOARD_SIZE="25")).tunables.leaderboard_size == 25


def test_values_are_stripped() -> None:
    settings = load_settings(env(GUILD_ID=" 42 ", ARROW_EMOJI="  :arrow:  ", BOT_TOKEN=f"  {TOKEN}\n"))
    assert settings.guild_id == 42
    assert settings.tunables.arrow_emoji == ":arrow:"
    assert settings.bot_token == TOKEN


@pytest.mark.parametrize(
    "variable",
    [
        "GUILD_ID",
        "CHAT_LB_CHANNEL_ID",
        "VC_LB_CHANNEL_ID",
        "DATABASE_URL",
        "FLUSH_INTERVAL",
        "UPDATE_INTERVAL",
        "RESET_PERIOD",
        "SPAM_LIMIT",
        "VOICE_COUNT_DEAFENED",
        "VOICE_COUNT_ALONE",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "ARROW_EMOJI",
        "LEADERBOARD_SIZE",
        "CACHE_TTL",
    ],
)
@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_value_uses_default(variable: str, blank: str) -> None:
    assert load_settings(env(**{variable: blank})) == load_settings(env())


def test_os_environ_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", TOKEN)
    monkeypatch.setenv("LEADERBOARD_SIZE", "7")
    monkeypatch.delenv("GUILD_ID", raising=False)
    settings = load_settings()
    assert settings.tunables.leaderboard_size == 7
    assert settings.bot_token == TOKEN


# --------------------------------------------------------------------------- load_settings: errors


@pytest.mark.parametrize("token_env", [{}, {"BOT_TOKEN": ""}, {"BOT_TOKEN": "   \t"}])
def test_missing_token(token_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(token_env)
    assert info.value.variable == "BOT_TOKEN"
    assert info.value.problem == "is required: put your bot token in .env or the environment"
    assert str(info.value) == "BOT_TOKEN: is required: put your bot token in .env or the environment"


def test_missing_token_reported_before_other_problems() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"GUILD_ID": "nope"})
    assert info.value.variable == "BOT_TOKEN"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GUILD_ID", "abc"),
        ("GUILD_ID", "0"),
        ("GUILD_ID", "-5"),
        ("GUILD_ID", "1.5"),
        ("GUILD_ID", str(2**64)),
        ("CHAT_LB_CHANNEL_ID", "#general"),
        ("VC_LB_CHANNEL_ID", "0"),
        ("DATABASE_URL", "mysql://user:pw@localhost/db"),
        ("DATABASE_URL", "postgresql://user:pw@localhost:notaport/db"),
        ("DATABASE_URL", "garbage"),
        ("DATABASE_URL", "sqlite:///"),
        ("DATABASE_URL", "sqlite://x.db"),
        ("FLUSH_INTERVAL", "-5s"),
        ("FLUSH_INTERVAL", "0"),
        ("UPDATE_INTERVAL", "abc"),
        ("RESET_PERIOD", "5x"),
        ("RESET_PERIOD", "inf"),
        ("SPAM_LIMIT", "5"),
        ("SPAM_LIMIT", "0/5s"),
        ("SPAM_LIMIT", "5/0s"),
        ("SPAM_LIMIT", "a/5s"),
        ("VOICE_COUNT_DEAFENED", "maybe"),
        ("VOICE_COUNT_ALONE", "2"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("LEADERBOARD_SIZE", "0"),
        ("LEADERBOARD_SIZE", "26"),
        ("LEADERBOARD_SIZE", "ten"),
        ("LEADERBOARD_SIZE", "-1"),
        ("CACHE_TTL", "nan"),
        ("ARROW_EMOJI", "<a:arrow:1403295268505522187>" * 3),  # lines would fall off a 25-line board
        ("FLUSH_INTERVAL", "0.00001s"),  # a flush loop spinning the CPU and flooding the log
        ("FLUSH_INTERVAL", "0.4s"),
        ("UPDATE_INTERVAL", "0.5s"),
        ("SPAM_LIMIT", "5/0.0000001s"),  # an infinite refill rate
        ("COMMAND_LIMIT", "3/0.00000000001s"),
    ],
)
def test_invalid_value_names_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(**{variable: value}))
    error = info.value
    assert error.variable == variable
    assert str(error) == f"{variable}: {error.problem}"
    assert "\n" not in str(error)
    assert TOKEN not in str(error)


def test_the_longest_custom_emoji_is_a_valid_arrow() -> None:
    longest = f"<a:{'x' * 32}:{'9' * 20}>"
    assert load_settings(env(ARROW_EMOJI=longest)).tunables.arrow_emoji == longest
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
    assert load_settings(env(ARROW_EMOJI=family)).tunables.arrow_emoji == family


def test_duration_error_message_is_exact() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(FLUSH_INTERVAL="-5s"))
    assert str(info.value) == (
        'FLUSH_INTERVAL: "-5s" is not a valid duration: it must be positive, like 5s, 15m, 2h or 30d'
    )


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("GUILD_ID", "abc", "positive whole number"),
        ("DATABASE_URL", "mysql://u:p@h/db", "sqlite:///relative/path.db, sqlite:////absolute/path.db"),
        ("DATABASE_URL", "mysql://u:p@h/db", "postgresql://user:password@host/database"),
        ("SPAM_LIMIT", "5", "5/5s"),
        ("VOICE_COUNT_ALONE", "maybe", "true/false"),
        ("LOG_LEVEL", "verbose", "TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL"),
        ("LOG_FORMAT", "xml", "json, text or auto"),
        ("LEADERBOARD_SIZE", "26", "from 1 to 25"),
    ],
)
def test_error_says_what_is_accepted(variable: str, value: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings(env(**{variable: value}))
    assert hint in info.value.problem


def test_database_error_hides_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(DATABASE_URL="mysql://bot:hunter2@db.example/lb"))
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(env(DATABASE_URL="postgresql://bot:hunter2@db.example:x/lb"))
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["postgresql://bot:pw@db.example/lb", "postgres://bot@10.0.0.5:6543/lb", "postgresql:///lb"]
)
def test_postgresql_urls_are_accepted(url: str) -> None:
    assert load_settings(env(DATABASE_URL=url)).database_url == url
    assert is_postgres(url)
    assert postgres_url(url).startswith("postgresql://")


def test_a_postgresql_url_without_the_driver_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "postgres_driver_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        load_settings(env(DATABASE_URL="postgresql://bot:hunter2@db.example/lb"))
    assert "pip install '.[postgres]'" in str(info.value) and "\n" not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_local_files_live_beside_sqlite_and_in_the_working_directory_for_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert local_state_path("sqlite:////var/lib/lb/data.db", 5) == "/var/lib/lb/data.db"
    assert local_state_path("sqlite:///:memory:", 5) == ":memory:"
    monkeypatch.chdir(tmp_path)
    here = local_state_path("postgresql://bot:secret@db.example:6543/lb", 5)
    assert here == str(tmp_path / "leaderboard-5-lb-db.example_6543")
    assert "secret" not in here
    # Another guild, server or database: other files.
    assert len({here, local_state_path("postgresql://bot@db.example:6543/lb", 6),
                local_state_path("postgresql://bot@db.example/lb", 5),
                local_state_path("postgresql://bot@db.example:6543/other", 5)}) == 4  # fmt: skip


@pytest.mark.parametrize(
    ("url", "shown", "secrets"),
    [
        ("postgresql://bot:s%40cret!@db:5432/lb", "postgresql://bot:***@db:5432/lb", ["s%40cret!", "s@cret!"]),
        ("postgres://bot@db/lb?sslmode=require&password=hunter22", "postgres://bot@db/lb?sslmode=require&password=***",
         ["hunter22"]),
        ("postgresql://bot:p@ss@word@db/lb", "postgresql://bot:***@db/lb", ["p@ss@word"]),  # an unescaped @
        ("postgresql://:only:colons@db/lb", "postgresql://:***@db/lb", ["only:colons"]),
        ("postgresql://bot:2024#Summer@db.example/lb", "postgresql://bot:***@db.example/lb", ["2024#Summer"]),
        ("postgresql://bot:a?b:c@db/lb", "postgresql://bot:***@db/lb", ["a?b:c"]),  # as libpq reads it
        ("postgresql://db/lb?password=x%23yz1", "postgresql://db/lb?password=***", ["x#yz1", "x%23yz1"]),
        ("postgresql://bot:pw@db/lb", "postgresql://bot:***@db/lb", []),  # too short to redact everywhere
        ("postgresql://bot@db/lb", "postgresql://bot@db/lb", []),
        ("sqlite:///data/pass:word@x.db", "sqlite:///data/pass:word@x.db", []),  # a file name, not a password
    ],
)  # fmt: skip
def test_a_database_url_is_logged_without_its_password(url: str, shown: str, secrets: list[str]) -> None:
    assert shown_database_url(url) == shown
    assert database_url_secrets(url) == secrets


def test_one_database_reached_by_two_paths_has_one_lock_and_one_recovery_file(tmp_path: Path) -> None:
    """A symlinked database (a releases/current deploy): a second bot through the link must find
    the first one's lock, not take its own and then force the lease away from it."""
    from leaderboard_bot.db.lock import AlreadyRunning, InstanceLock

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lb.db").write_bytes(b"")
    (tmp_path / "current").symlink_to(tmp_path / "data")
    real, linked = f"sqlite:///{tmp_path}/data/lb.db", f"sqlite:///{tmp_path}/current/lb.db"
    assert local_state_path(linked, 5) == local_state_path(real, 5) == str(tmp_path / "data" / "lb.db")
    first = InstanceLock(local_state_path(real, 5))
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning):
            InstanceLock(local_state_path(linked, 5)).acquire()
    finally:
        first.release()


def test_a_password_with_url_characters_is_neither_a_port_nor_in_the_local_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urlsplit stops the user part at "#" or "?": "2024#Summer@db" read as host "bot", port 2024."""
    monkeypatch.chdir(tmp_path)
    url = "postgresql://bot:abc#x?y@db.example:6543/lb"
    assert load_settings(env(DATABASE_URL=url)).database_url == url  # accepted: no port "abc#x?y"
    assert local_state_path(url, 5) == local_state_path("postgresql://bot@db.example:6543/lb", 5)


def test_postgresql_databases_whose_names_differ_only_in_replaced_characters_keep_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lb-a and lb_a shared one lock (a second bot refused to start) and one recovery file (one
    database's unwritten counts were written into the other)."""
    from leaderboard_bot.config import earlier_state_paths

    monkeypatch.chdir(tmp_path)
    dash, underscore = "postgresql://bot@db/lb-a", "postgresql://bot@db/lb_a"
    assert local_state_path(dash, 5) != local_state_path(underscore, 5)
    assert local_state_path(dash, 5) == local_state_path(dash, 5)  # stable
    # The name lb-a had before is lb_a's now: never read for lb-a's recovery files.
    assert earlier_state_paths(dash, 5) == earlier_state_paths(underscore, 5) == []


def test_the_web_site_and_the_health_server_need_ports_of_their_own() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(WEB_PORT="8080", HEALTH_PORT="8080"))
    assert info.value.variable == "WEB_PORT" and "HEALTH_PORT" in info.value.problem
    assert load_settings(env(WEB_PORT="8081", HEALTH_PORT="8080")).web_port == 8081


def test_first_problem_in_table_order_wins() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(CACHE_TTL="bad", LEADERBOARD_SIZE="99", FLUSH_INTERVAL="bad", GUILD_ID="bad"))
    assert info.value.variable == "GUILD_ID"
    with pytest.raises(ConfigError) as info:
        load_settings(env(CACHE_TTL="bad", LEADERBOARD_SIZE="99", FLUSH_INTERVAL="bad"))
    assert info.value.variable == "FLUSH_INTERVAL"
    with pytest.raises(ConfigError) as info:
        load_settings(env(CACHE_TTL="bad", LEADERBOARD_SIZE="99"))
    assert info.value.variable == "LEADERBOARD_SIZE"


# --------------------------------------------------------------------------- token secrecy


def test_token_not_in_repr_or_str() -> None:
    settings = load_settings(env())
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert "bot_token" not in repr(settings)
    assert settings.bot_token == TOKEN


@pytest.mark.parametrize(
    "variable",
    [
        "GUILD_ID",
        "DATABASE_URL",
        "FLUSH_INTERVAL",
        "SPAM_LIMIT",
        "VOICE_COUNT_ALONE",
        "LOG_LEVEL",
        "LEADERBOARD_SIZE",
        "CACHE_TTL",
    ],
)
def test_token_pasted_into_wrong_variable_is_not_echoed(variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env(**{variable: TOKEN}))
    assert info.value.variable == variable
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    assert TOKEN not in info.value.problem


def test_config_error_attributes() -> None:
    error = ConfigError("GUILD_ID", "is wrong")
    assert error.variable == "GUILD_ID"
    assert error.problem == "is wrong"
    assert str(error) == "GUILD_ID: is wrong"
    assert isinstance(error, Exception)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FLUSH_INTERVAL", "2h"), ("UPDATE_INTERVAL", "2d"), ("RESET_PERIOD", "99999999999d"), ("CACHE_TTL", "25h")],
)
def test_absurdly_long_durations_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings({"BOT_TOKEN": "a-long-secret-token", variable: value})
    assert err.value.variable == variable and "too long" in str(err.value)


def test_the_longest_allowed_durations_are_accepted() -> None:
    settings = load_settings(
        {"BOT_TOKEN": "t", "FLUSH_INTERVAL": "1h", "UPDATE_INTERVAL": "1d", "RESET_PERIOD": "365d"}
    )
    tunables = settings.tunables
    assert (tunables.flush_interval, tunables.update_interval, tunables.reset_period) == (3600, 86400, 365 * 86400)


def test_the_variable_names_are_exactly_the_documented_ones() -> None:
    from leaderboard_bot.config import ENVIRONMENT_VARIABLES

    assert ENVIRONMENT_VARIABLES == (
        "BOT_TOKEN", "GUILD_ID", "CHAT_LB_CHANNEL_ID", "VC_LB_CHANNEL_ID", "DATABASE_URL", "FLUSH_INTERVAL",
        "UPDATE_INTERVAL", "RESET_PERIOD", "SPAM_LIMIT", "VOICE_COUNT_DEAFENED", "VOICE_COUNT_ALONE", "LOG_LEVEL",
        "LOG_FORMAT", "ARROW_EMOJI", "LEADERBOARD_SIZE", "CACHE_TTL", "VOICE_SESSION_RETENTION", "COMMAND_LIMIT",
        "EXCLUDED_CHANNELS", "EXCLUDED_ROLES", "HIDE_DEPARTED",
        "HEALTH_PORT",
        "HEALTH_HOST", "LOG_FILE", "MAX_PENDING_ROWS", "STANDBY", "TIMEZONE", "CHARTS",
        "WEB_PORT", "WEB_HOST", "WEB_PUBLIC", "WEB_OAUTH_BASE", "WEB_CLIENT_ID", "WEB_CLIENT_SECRET",
        "WEB_REDIRECT_URL",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HEALTH_PORT", "0"),
        ("HEALTH_PORT", "70000"),
        ("HEALTH_PORT", "http"),
        ("HEALTH_HOST", "local host"),
        ("EXCLUDED_CHANNELS", "12, general"),
        ("EXCLUDED_ROLES", "-5"),
        ("COMMAND_LIMIT", "3 per 10s"),
        ("VOICE_SESSION_RETENTION", "forever"),
        ("MAX_PENDING_ROWS", "9"),
        ("MAX_PENDING_ROWS", "lots"),
        ("MAX_PENDING_ROWS", "1e6"),
        ("TIMEZONE", "Mars/Olympus_Mons"),
        ("TIMEZONE", "+02:00"),
        ("TIMEZONE", "../../etc/passwd"),
        ("TIMEZONE", "Europe/"),
        ("TIMEZONE", "europe/berlin"),
        ("TIMEZONE", "localtime"),
        ("TIMEZONE", "LOCALTIME"),
        ("TIMEZONE", "Factory"),
        ("TIMEZONE", "factory"),
        ("TIMEZONE", "right/UTC"),
        ("WEB_PORT", "0"),
        ("WEB_HOST", "local host"),
        ("WEB_PUBLIC", "maybe"),
        ("WEB_OAUTH_BASE", "discord.com"),
        ("WEB_REDIRECT_URL", "example.com/auth/callback"),
        ("WEB_CLIENT_ID", "12 34"),
    ],
)
def test_the_operations_settings_refuse_bad_values_with_one_line(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BOT_TOKEN": "x", variable: value})
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_operations_settings_parse() -> None:
    settings = load_settings(
        {"BOT_TOKEN": "x", "HEALTH_PORT": "9100", "EXCLUDED_CHANNELS": "<#12> 34,56", "LOG_FILE": "logs/bot.log"}
    )
    assert settings.health_port == 9100 and settings.health_host == "127.0.0.1"
    assert settings.tunables.excluded_channels == frozenset({12, 34, 56})
    assert settings.log_file == "logs/bot.log"
    assert load_settings({"BOT_TOKEN": "x"}).health_port is None
    assert load_settings({"BOT_TOKEN": "x"}).max_pending_rows == 1_000_000
    assert load_settings({"BOT_TOKEN": "x", "MAX_PENDING_ROWS": "250,000"}).max_pending_rows == 250_000


@pytest.mark.parametrize(
    ("value", "zone"),
    [
        ("", "UTC"),
        ("utc", "UTC"),
        ("Etc/UTC", "UTC"),
        ("Europe/Berlin", "Europe/Berlin"),
        (" Asia/Kolkata ", "Asia/Kolkata"),
    ],
)
def test_timezone_takes_iana_names(value: str, zone: str) -> None:
    assert load_settings({"BOT_TOKEN": "x", "TIMEZONE": value}).timezone == zone


def test_a_bad_timezone_says_what_a_good_one_looks_like() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BOT_TOKEN": "x", "TIMEZONE": "Berlin"})
    assert str(caught.value) == (
        'TIMEZONE: "Berlin" is not a time zone: use an IANA name like UTC, Europe/Berlin or America/New_York'
    )


def test_a_timezone_in_the_wrong_case_gets_its_spelling_and_localtime_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"BOT_TOKEN": "x", "TIMEZONE": "america/new_york"})
    assert str(caught.value) == 'TIMEZONE: "america/new_york" is not a time zone: did you mean America/New_York?'
    with pytest.raises(ConfigError) as caught:
        load_settings({"BOT_TOKEN": "x", "TIMEZONE": "localtime"})
    assert "this machine's time zone setup" in str(caught.value)


def test_charts_can_be_turned_off() -> None:
    assert load_settings({"BOT_TOKEN": "x"}).charts is True
    assert load_settings({"BOT_TOKEN": "x", "CHARTS": "off"}).charts is False
