"""Tests for leaderboard_bot.logs: JSON/text output, redaction and stdlib routing."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from leaderboard_bot.logs import InterceptHandler, complete_logging, redact, setup_logging

# Looks like a real token so a leak would be obvious, but it is not one.
TOKEN = "MTA0OTk5OTk5OTk5OTk5OTk5OQ.GhIjKl.fake_token_value-for-tests_only"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo setup_logging's global changes so tests don't leak handlers into each other."""
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    saved_level = root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("disnake", "disnake.http", "peewee")}
    yield
    logger.remove()
    logger.configure(patcher=lambda record: None)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


class TTYStream(io.StringIO):
    def isatty(self) -> bool:
        return True


# {time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{line} | {message}[ | extras]
TEXT_LINE = re.compile(
    r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} \| (?P<level>.{8}) \| (?P<name>[\w.]+):\d+ \| (?P<rest>.*)"
)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# --------------------------------------------------------------------------- redact


def test_redact_replaces_every_secret() -> None:
    redacted = redact("a SECRET b SECRET c OTHER", ["SECRET", "OTHER"])
    assert redacted == "a [REDACTED] b [REDACTED] c [REDACTED]"


def test_a_short_secret_is_redacted_only_where_it_stands_alone() -> None:
    # BOT_TOKEN=x by mistake: every "x" in every line replaced would make the log unreadable.
    assert redact("max 5 x: x", ["x"]) == "max 5 [REDACTED]: [REDACTED]"
    assert redact("token=pw, user pwd", ["pw"]) == "token=[REDACTED], user pwd"
    assert redact("a-long-secret-tokenish", ["a-long-secret-token"]) == "[REDACTED]ish"
    assert redact("x=ab!c", ["ab!"]) == "x=[REDACTED]c"  # a punctuation end needs no word boundary


def test_redact_ignores_empty_secrets() -> None:
    assert redact("nothing to hide", ["", ""]) == "nothing to hide"
    assert redact("nothing to hide", []) == "nothing to hide"


# --------------------------------------------------------------------------- JSON


def test_json_lines_have_message_level_and_extra() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    logger.bind(guild_id=42).info("flushed {count} rows", count=3)
    logger.warning("careful")
    first, second = json_lines(stream)
    assert first["message"] == "flushed 3 rows"
    assert first["level"] == "INFO"
    assert first["extra"] == {"guild_id": 42, "count": 3}
    assert first["name"] == __name__
    assert isinstance(first["line"], int)
    assert "time" in first
    assert "exception" not in first
    assert second["message"] == "careful"
    assert second["level"] == "WARNING"
    assert second["extra"] == {}


def test_json_non_serialisable_extra_becomes_text() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    logger.info("obj", thing=object(), items=[1, "two"])
    (line,) = json_lines(stream)
    assert line["extra"]["thing"].startswith("<object object")
    assert line["extra"]["items"] == [1, "two"]


def test_level_filters_records() -> None:
    stream = io.StringIO()
    setup_logging("warning", "json", stream=stream)
    logger.info("hidden")
    logger.debug("hidden")
    logger.error("shown")
    assert [line["message"] for line in json_lines(stream)] == ["shown"]


def test_auto_on_non_tty_is_json() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "auto", stream=stream)
    logger.info("hello")
    (line,) = json_lines(stream)
    assert line["message"] == "hello"


def test_auto_on_tty_is_text() -> None:
    stream = TTYStream()
    setup_logging("INFO", "auto", stream=stream)
    logger.info("hello")
    assert TEXT_LINE.fullmatch(stream.getvalue().rstrip("\n"))


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    logger.info("to stderr")
    captured = capsys.readouterr()
    assert json.loads(captured.err.splitlines()[-1])["message"] == "to stderr"


# --------------------------------------------------------------------------- text


def test_text_format() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "text", stream=stream)
    logger.debug("plain")
    logger.bind(user=7).info("with extra", channel="vc")
    plain, extra = stream.getvalue().splitlines()
    match = TEXT_LINE.fullmatch(plain)
    assert match is not None
    assert match["level"] == "DEBUG   "
    assert match["name"] == __name__
    assert match["rest"] == "plain"
    match = TEXT_LINE.fullmatch(extra)
    assert match is not None
    assert match["level"] == "INFO    "
    assert match["rest"] == "with extra | user=7 channel=vc"


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_token_redacted_from_message_and_extra(log_format: str) -> None:
    stream = io.StringIO()
    setup_logging("INFO", log_format, secrets=[TOKEN], stream=stream)
    logger.info(f"connecting with {TOKEN}")
    logger.bind(token=TOKEN, nested={"deep": [TOKEN]}).info("bound")
    logger.info("kwargs {value}", value=TOKEN, other=f"prefix-{TOKEN}-suffix")
    output = stream.getvalue()
    assert TOKEN not in output
    assert output.count("[REDACTED]") == 6
    if log_format == "json":
        first, second, third = json_lines(stream)
        assert first["message"] == "connecting with [REDACTED]"
        assert second["extra"] == {"token": "[REDACTED]", "nested": {"deep": ["[REDACTED]"]}}
        assert third["message"] == "kwargs [REDACTED]"
        assert third["extra"] == {"value": "[REDACTED]", "other": "prefix-[REDACTED]-suffix"}


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_token_redacted_from_traceback(log_format: str) -> None:
    stream = io.StringIO()
    setup_logging("INFO", log_format, secrets=[TOKEN], stream=stream)

    def login(token: str) -> None:
        raise RuntimeError(f"401 Unauthorized for token {token}")

    try:
        login(TOKEN)
    except RuntimeError:
        logger.exception("login failed")
    output = stream.getvalue()
    assert TOKEN not in output
    assert "401 Unauthorized for token [REDACTED]" in output
    assert "Traceback (most recent call last)" in output
    if log_format == "json":
        (line,) = json_lines(stream)
        assert line["level"] == "ERROR"
        assert line["message"] == "login failed"
        assert "RuntimeError: 401 Unauthorized for token [REDACTED]" in line["exception"]


def test_traceback_does_not_show_local_variables() -> None:
    # diagnose=False: loguru must not print variable values, which could include the token.
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    hidden_value = "local-variable-value-xyz"
    try:
        raise ValueError(len(hidden_value))
    except ValueError:
        logger.exception("failed")
    assert "local-variable-value-xyz" not in stream.getvalue()


def test_token_redacted_in_object_str_of_extra() -> None:
    class Holder:
        def __str__(self) -> str:
            return f"Holder({TOKEN})"

    stream = io.StringIO()
    setup_logging("INFO", "json", secrets=[TOKEN], stream=stream)
    logger.info("holder", holder=Holder())
    assert TOKEN not in stream.getvalue()
    assert json_lines(stream)[0]["extra"]["holder"] == "Holder([REDACTED])"


def test_secret_needing_json_escaping_is_redacted() -> None:
    secret = 'quote"back\\slash'
    stream = io.StringIO()
    setup_logging("INFO", "json", secrets=[secret], stream=stream)

    class Holder:
        def __str__(self) -> str:
            return secret

    logger.info("holder", holder=Holder())
    assert json.dumps(secret)[1:-1] not in stream.getvalue()


def test_stdlib_record_redacted() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", secrets=[TOKEN], stream=stream)
    logging.getLogger("disnake.http").warning("bad header Authorization: Bot %s", TOKEN)
    assert TOKEN not in stream.getvalue()
    assert json_lines(stream)[0]["message"] == "bad header Authorization: Bot [REDACTED]"


# --------------------------------------------------------------------------- stdlib routing


def test_stdlib_logging_reaches_sink() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    logging.getLogger("disnake.gateway").info("Shard ID %s has connected to Gateway", None)
    (line,) = json_lines(stream)
    assert line["message"] == "Shard ID None has connected to Gateway"
    assert line["level"] == "INFO"
    # The recipe reports the real caller, not the logging module.
    assert line["name"] == __name__


def test_stdlib_exception_reaches_sink() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("disnake.client").exception("Ignoring exception in on_message")
    (line,) = json_lines(stream)
    assert line["level"] == "ERROR"
    assert "ZeroDivisionError" in line["exception"]


def test_root_logger_uses_intercept_handler() -> None:
    setup_logging("INFO", "json", stream=io.StringIO())
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1
    assert isinstance(handlers[0], InterceptHandler)


def test_disnake_debug_is_muted_even_at_debug() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "json", stream=stream)
    logging.getLogger("disnake.gateway").debug("WebSocket Event: huge payload")
    logging.getLogger("disnake.gateway").info("kept")
    assert [line["message"] for line in json_lines(stream)] == ["kept"]
    assert logging.getLogger("disnake").level == logging.INFO


def test_disnake_follows_stricter_level() -> None:
    setup_logging("ERROR", "json", stream=io.StringIO())
    assert logging.getLogger("disnake").level == logging.ERROR


def test_rate_limit_warnings_are_emitted_at_any_level_but_not_written_below_it() -> None:
    stream = io.StringIO()
    setup_logging("ERROR", "json", stream=stream)
    http = logging.getLogger("disnake.http")
    assert http.isEnabledFor(logging.WARNING)  # the scheduler's rate-limit watch must see them
    http.warning("We are being rate limited. Retrying in %.2f seconds.", 3600.0)
    assert json_lines(stream) == []


@pytest.mark.parametrize(
    ("level", "peewee_level"),
    [
        ("TRACE", logging.DEBUG),
        ("DEBUG", logging.DEBUG),
        ("INFO", logging.WARNING),
        ("ERROR", logging.WARNING),
    ],
)
def test_peewee_level(level: str, peewee_level: int) -> None:
    setup_logging(level, "json", stream=io.StringIO())
    assert logging.getLogger("peewee").level == peewee_level


def test_peewee_queries_hidden_at_info() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    logging.getLogger("peewee").debug("('SELECT 1', [])")
    assert stream.getvalue() == ""


# --------------------------------------------------------------------------- setup twice / shutdown


def test_setup_twice_does_not_duplicate() -> None:
    first = io.StringIO()
    second = io.StringIO()
    setup_logging("INFO", "json", stream=first)
    setup_logging("INFO", "json", stream=second)
    logger.info("once")
    logging.getLogger("disnake").info("stdlib once")
    assert first.getvalue() == ""
    assert [line["message"] for line in json_lines(second)] == ["once", "stdlib once"]


def test_setup_twice_same_stream_does_not_duplicate() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    setup_logging("INFO", "text", stream=stream)
    logger.info("once")
    assert stream.getvalue().count("once") == 1


def test_setup_keeps_other_sinks() -> None:
    # Only the default handler and our own previous sink are replaced.
    other = io.StringIO()
    logger.add(other, format="{message}")
    setup_logging("INFO", "json", stream=io.StringIO())
    logger.info("both")
    assert other.getvalue() == "both\n"


def test_setup_rejects_unknown_values() -> None:
    with pytest.raises(ValueError):
        setup_logging("VERBOSE", "json", stream=io.StringIO())
    with pytest.raises(ValueError):
        setup_logging("INFO", "xml", stream=io.StringIO())


async def test_complete_logging() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    logger.info("before shutdown")
    await complete_logging()
    assert json_lines(stream)[0]["message"] == "before shutdown"


def test_the_voice_library_warning_is_silenced_because_the_bot_never_joins_voice() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    logging.getLogger("disnake.client").warning("PyNaCl and dave.py are not installed, voice will NOT be supported")
    logging.getLogger("disnake.client").warning("something else")
    assert "voice will NOT be supported" not in stream.getvalue() and "something else" in stream.getvalue()


def test_a_dropped_connection_is_one_line_not_a_traceback() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    try:
        raise ConnectionResetError("Connection reset by peer")
    except ConnectionResetError:
        logging.getLogger("disnake.client").exception("Attempting a reconnect in %.2fs", 1.5)
    output = stream.getvalue()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "reconnect" in line]
    assert len(lines) == 1 and "ConnectionResetError: Connection reset by peer" in lines[0]


async def test_log_file_gets_json_lines_with_the_token_redacted(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "bot.log"
    setup_logging("INFO", "text", stream=io.StringIO(), secrets=["s3cret-token"], log_file=str(path))
    try:
        logger.info("hello with s3cret-token inside")
        await complete_logging()
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines[-1]["record"]["message"] == "hello with [REDACTED] inside"
        assert "s3cret-token" not in path.read_text()
    finally:
        setup_logging("INFO", "text", stream=io.StringIO())  # removes the file sink


async def test_a_full_disk_under_the_log_file_is_said_once_not_a_traceback_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to stand for a full disk")
    setup_logging("INFO", "text", stream=io.StringIO(), log_file="/dev/full")
    try:
        for n in range(20):
            logger.info("line {}", n)
        await complete_logging()
    finally:
        setup_logging("INFO", "text", stream=io.StringIO())
    errors = capsys.readouterr().err
    assert "Traceback" not in errors and "Logging error" not in errors
    assert errors.count("cannot write the log file /dev/full") == 1, errors
    assert "No space left on device" in errors


def test_the_log_file_says_when_it_is_written_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from leaderboard_bot.logs import _LogFileSink

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    sink = _LogFileSink(str(tmp_path / "bot.log"))
    real_stream = sink.handler.stream
    sink.handler.stream = FullDisk()
    sink.write('{"a": 1}\n')
    sink.write('{"a": 2}\n')
    sink.handler.stream = real_stream
    sink.write('{"a": 3}\n')
    sink.stop()
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "cannot write" in errors[0] and "again" in errors[1]
    assert (tmp_path / "bot.log").read_text() == '{"a": 3}\n'


def test_the_log_file_rotates_into_gzip_files_and_keeps_ten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from leaderboard_bot import logs

    monkeypatch.setattr(logs, "LOG_FILE_ROTATION", 100)
    path = tmp_path / "bot.log"
    sink = logs._LogFileSink(str(path))
    for n in range(40):
        sink.write(json.dumps({"n": n, "pad": "x" * 60}) + "\n")
    sink.stop()
    rotated = sorted(tmp_path.glob("bot.log.*.gz"))
    assert len(rotated) == logs.LOG_FILE_RETENTION
    newest = [json.loads(line)["n"] for line in gzip.decompress((tmp_path / "bot.log.1.gz").read_bytes()).splitlines()]
    assert newest == [38] and json.loads(path.read_text())["n"] == 39


def test_a_rotation_the_disk_refuses_leaves_the_kept_files_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The standard handler moved the kept files along before compressing: on a full disk every
    line tried again, and a dozen lines left none of the ten intact (found by review)."""
    from leaderboard_bot import logs

    monkeypatch.setattr(logs, "LOG_FILE_ROTATION", 100)
    path = tmp_path / "bot.log"
    sink = logs._LogFileSink(str(path))
    for n in range(40):
        sink.write(json.dumps({"n": n, "pad": "x" * 60}) + "\n")
    kept = {p.name: p.read_bytes() for p in tmp_path.glob("bot.log.*.gz")}
    assert len(kept) == logs.LOG_FILE_RETENTION
    real_copy = logs.shutil.copyfileobj
    attempts: list[int] = []

    def disk_full(source: Any, target: Any, *args: Any) -> None:
        attempts.append(1)
        target.write(source.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logs.shutil, "copyfileobj", disk_full)
    for n in range(40, 52):
        sink.write(json.dumps({"n": n, "pad": "x" * 60}) + "\n")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("bot.log.*.gz")} == kept
    assert len(attempts) == 1  # tried again a minute later, not on every line
    assert not list(tmp_path.glob("*.rotating*.gz"))
    assert capsys.readouterr().err.count("cannot rotate the log file") == 1
    monkeypatch.setattr(logs.shutil, "copyfileobj", real_copy)
    monkeypatch.setattr(sink.handler, "_rotate_not_before", 0.0)  # the minute has passed
    sink.write(json.dumps({"n": 52}) + "\n")
    newest = gzip.decompress((tmp_path / "bot.log.1.gz").read_bytes()).splitlines()
    assert [json.loads(line)["n"] for line in newest][-1] == 51  # nothing written meanwhile was lost
    sink.stop()


# --------------------------------------------------------------------------- storms


RATE_LIMITED = 'We are being rate limited. Retrying in %.2f seconds. Handled under the bucket "%s"'


def test_disnakes_rate_limit_warnings_are_one_line_per_bucket_then_a_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    from leaderboard_bot import logs
    from leaderboard_bot.services.logthrottle import LogThrottle
    from tests.factories import FakeClock

    clock = FakeClock()
    monkeypatch.setattr(logs, "_rate_limit_lines", LogThrottle(clock=clock))
    stream = io.StringIO()
    setup_logging("INFO", "json", stream=stream)
    http = logging.getLogger("disnake.http")
    for _ in range(50):  # a 429 storm: disnake warns before every sleep
        http.warning(RATE_LIMITED, 0.25, "channel-20")
        http.warning(RATE_LIMITED, 0.25, "channel-30")
        clock.advance(2)
    http.warning(RATE_LIMITED, 1.0, "channel-20")  # 100 s later: still inside the window
    clock.advance(300)
    http.warning(RATE_LIMITED, 1.0, "channel-20")
    messages = [line["message"] for line in json_lines(stream)]
    assert messages == [
        'We are being rate limited. Retrying in 0.25 seconds. Handled under the bucket "channel-20"',
        'We are being rate limited. Retrying in 0.25 seconds. Handled under the bucket "channel-30"',
        'We are being rate limited. Retrying in 1.00 seconds. Handled under the bucket "channel-20" '
        "(still rate limited: 51 more times in the last 7 min)",
    ]
    # Other disnake warnings are never held back.
    http.warning("something else")
    http.warning("something else")
    assert [line["message"] for line in json_lines(stream)][-2:] == ["something else"] * 2


def test_expected_failures_are_told_apart_from_bugs() -> None:
    from types import SimpleNamespace

    import aiohttp
    import disnake

    from leaderboard_bot.db.storage import StorageError
    from leaderboard_bot.logs import is_expected_failure

    server_error = disnake.DiscordServerError(SimpleNamespace(status=503, reason="x"), "down")  # type: ignore[arg-type]
    expected_errors = [server_error, StorageError("locked"), ConnectionResetError(), aiohttp.ClientError()]
    expected_errors.append(TimeoutError())
    for expected in expected_errors:
        assert is_expected_failure(expected), expected
    for bug in (KeyError("x"), AttributeError("x"), ValueError("x")):
        assert not is_expected_failure(bug), bug
