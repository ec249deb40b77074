"""The program's front door: a bad configuration stops it with status 2 and one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from leaderboard_bot.config import ENVIRONMENT_VARIABLES

SECRET = "MTIzNDU2Nzg5.super-secret-token"


def run_bot(tmp_path: Path, env: dict[str, str], dotenv: str | None = None) -> subprocess.CompletedProcess[str]:
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    clean = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "leaderboard_bot"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


_SETTINGS = set(ENVIRONMENT_VARIABLES)


def test_missing_token_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_bot(tmp_path, {})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BOT_TOKEN" in lines[0] and "required" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FLUSH_INTERVAL", "-5s"),
        ("UPDATE_INTERVAL", "soon"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "mysql://user:pw@host/db"),
        ("GUILD_ID", "not-a-number"),
        ("LEADERBOARD_SIZE", "30"),
        ("SPAM_LIMIT", "lots"),
    ],
)
def test_an_invalid_value_exits_2_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    result = run_bot(tmp_path, {"BOT_TOKEN": SECRET, variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout
    assert not (tmp_path / "leaderboard.db").exists()  # stopped before doing anything


def test_dotenv_is_read_and_real_environment_wins(tmp_path: Path) -> None:
    result = run_bot(tmp_path, {"BOT_TOKEN": SECRET, "FLUSH_INTERVAL": "nope"}, dotenv="FLUSH_INTERVAL=5s\n")
    assert result.returncode == 2 and "FLUSH_INTERVAL" in result.stderr  # the environment's bad value won
    result = run_bot(tmp_path, {}, dotenv=f"BOT_TOKEN={SECRET}\nLOG_FORMAT=bogus\n")
    assert result.returncode == 2 and "LOG_FORMAT" in result.stderr  # the token came from .env


def test_an_unusable_database_path_stops_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    result = run_bot(
        tmp_path, {"BOT_TOKEN": SECRET, "LOG_FORMAT": "text", "DATABASE_URL": "sqlite:///not-a-directory/x.db"}
    )
    assert result.returncode == 1
    output = result.stderr + result.stdout
    assert "cannot open the database sqlite:///not-a-directory/x.db" in output
    assert "Traceback" not in output and SECRET not in output


def test_a_damaged_database_stops_with_exit_1_and_one_line_naming_the_file(tmp_path: Path) -> None:
    from tests.db.test_storage import make_damaged_database

    path = tmp_path / "board.db"
    make_damaged_database(path)
    result = run_bot(tmp_path, {"BOT_TOKEN": SECRET, "LOG_FORMAT": "text", "DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 1
    output = result.stderr + result.stdout
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(path) in errors[0] and "damaged" in errors[0] and "backup" in errors[0]
    assert "Traceback" not in output


def test_a_database_from_a_newer_version_stops_with_one_line(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute('CREATE TABLE "schema_version" ("id" BIGINT NOT NULL PRIMARY KEY, "version" BIGINT NOT NULL)')
    conn.execute('INSERT INTO "schema_version" VALUES (1, 99)')
    conn.commit()
    conn.close()
    result = run_bot(tmp_path, {"BOT_TOKEN": SECRET, "LOG_FORMAT": "text", "DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 1
    errors = [line for line in (result.stderr + result.stdout).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "newer" in errors[0] and "upgrade the bot" in errors[0]


def test_main_hands_the_gil_over_within_a_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite3 lets go of the GIL per row: each row a database thread steps through while the event
    loop is busy waits up to the switch interval to get it back (bench/README.md)."""
    from types import SimpleNamespace

    import leaderboard_bot.__main__ as entry

    seen: list[float] = []

    def fake_run(coroutine: Any) -> int:
        coroutine.close()  # never started: only the interval it would run with matters
        seen.append(sys.getswitchinterval())
        return 0

    settings = SimpleNamespace(
        log_level="INFO", log_format="text", bot_token="x", log_file=None, guild_id=1, database_url="sqlite:///x",
        tunables=SimpleNamespace(reset_period=30 * 86400.0),
    )  # fmt: skip
    monkeypatch.setattr(entry, "load_dotenv", lambda *a, **k: None)
    monkeypatch.setattr(entry, "load_settings", lambda: settings)
    monkeypatch.setattr(entry, "setup_logging", lambda *a, **k: None)
    monkeypatch.setattr(entry.asyncio, "run", fake_run)
    before = sys.getswitchinterval()
    try:
        with pytest.raises(SystemExit) as stopped:
            entry.main()
    finally:
        sys.setswitchinterval(before)
    assert stopped.value.code == 0 and seen == [entry.GIL_SWITCH_INTERVAL] and entry.GIL_SWITCH_INTERVAL <= 0.001


PROBE = """
import sys
from leaderboard_bot.__main__ import import_storage_without_unused_drivers
import_storage_without_unused_drivers(sys.argv[1])
import peewee
import leaderboard_bot.bot  # everything the bot imports, the storage included
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("psycopg", "psycopg2"))
print(peewee.psycopg is not None, bool(loaded))
import psycopg  # still importable: nothing was left hidden
print(psycopg.__name__)
"""


@pytest.mark.parametrize(
    ("database_url", "driver_loaded"),
    [("sqlite:///x.db", False), ("postgresql://u:p@127.0.0.1/db", True)],
)
def test_a_sqlite_bot_does_not_load_the_postgresql_driver(database_url: str, driver_loaded: bool) -> None:
    """peewee imports psycopg when installed (the postgres and test extras): about 11 MB resident
    that a bot on SQLite never uses."""
    pytest.importorskip("psycopg")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, database_url], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(driver_loaded), str(driver_loaded), "psycopg"]


def test_a_postgresql_password_never_reaches_the_log(tmp_path: Path) -> None:
    password = "hunter2-s3cret"
    url = f"postgresql://bot:{password}@127.0.0.1:1/lb?password={password}"  # port 1: refused at once
    result = run_bot(tmp_path, {"BOT_TOKEN": SECRET, "LOG_FORMAT": "text", "DATABASE_URL": url})
    output = result.stderr + result.stdout
    assert result.returncode == 1
    assert "postgresql://bot:***@127.0.0.1:1/lb?password=***" in output  # the URL is still named
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot open the database" in errors[0]
    assert password not in output and "Traceback" not in output


def test_a_reset_period_without_a_unit_is_pointed_out(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")  # stops right after the start-up lines
    env = {"BOT_TOKEN": SECRET, "LOG_FORMAT": "text", "DATABASE_URL": "sqlite:///not-a-directory/x.db"}
    output = "".join(run_bot(tmp_path, {**env, "RESET_PERIOD": "30"}).stderr)
    (warning,) = [line for line in output.splitlines() if "RESET_PERIOD" in line]
    assert "WARNING" in warning and "30 seconds" in warning and "30d" in warning
    assert "RESET_PERIOD" not in run_bot(tmp_path, {**env, "RESET_PERIOD": "30d"}).stderr


def test_ctrl_c_before_the_bot_started_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leaderboard_bot import __main__ as entry

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "_start", interrupted)
    with pytest.raises(SystemExit) as exited:
        entry.main()
    assert exited.value.code == 130
    assert capsys.readouterr().err == "leaderboard-bot: stopped before it started\n"


def test_a_database_url_naming_a_folder_says_so_not_damaged(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = run_bot(tmp_path, {"BOT_TOKEN": SECRET, "LOG_FORMAT": "text", "DATABASE_URL": "sqlite:///data"})
    (error,) = [line for line in (result.stderr + result.stdout).splitlines() if "ERROR" in line]
    assert result.returncode == 1 and "is a folder, not a database file" in error and "damaged" not in error


def test_sighup_stops_the_bot_unless_it_was_started_with_nohup() -> None:
    import signal

    from leaderboard_bot.__main__ import stop_signals

    before = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert signal.SIGHUP in stop_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does before starting it
        assert stop_signals() == [signal.SIGTERM, signal.SIGINT]
    finally:
        signal.signal(signal.SIGHUP, before)


async def test_with_standby_off_a_lease_that_cannot_be_checked_stops_the_bot(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL answers reads but not the lease: another machine could be counting, and standing
    by was not asked for. It used to wait silently as a standby."""
    from loguru import logger

    from leaderboard_bot import __main__ as entry
    from leaderboard_bot.config import load_settings
    from leaderboard_bot.db.storage import StorageError
    from leaderboard_bot.services.lease import LeaseService

    async def refused(self: LeaseService, *, holder_gone: bool = False) -> bool:
        raise StorageError("OperationalError: canceling statement due to lock timeout", kind="locked")

    monkeypatch.chdir(tmp_path)  # the local lock file
    monkeypatch.setattr(LeaseService, "try_acquire", refused)
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        settings = load_settings({"BOT_TOKEN": SECRET, "DATABASE_URL": postgres_url})
        assert await entry.run(settings) == entry.EXIT_FAILURE
    finally:
        logger.remove(sink)
    assert len(errors) == 1 and "cannot tell whether another leaderboard-bot counts" in errors[0]
