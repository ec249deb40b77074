"""Loguru setup: one sink, JSON or text, with secrets redacted, and stdlib logging routed in.

The sink formats each record itself (instead of loguru's templates) so that the very
last string written, exception text included, can be scrubbed of secrets.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import json
import logging
import logging.handlers
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any, TextIO

from loguru import logger

from .services.logthrottle import LogThrottle, span

__all__ = ["InterceptHandler", "complete_logging", "is_expected_failure", "redact", "setup_logging"]

REDACTED = "[REDACTED]"

# Id of the sink added by setup_logging, so a second call replaces it instead of duplicating output.
_handler_id: int | None = None


# A secret shorter than this (a mistyped BOT_TOKEN "x", a test password) is redacted only where
# it stands alone: replaced inside words, it would garble every line of the log.
SHORT_SECRET = 8


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` with ``[REDACTED]`` (a short
    one only where it is not part of a longer word)."""
    for secret in secrets:
        if len(secret) >= SHORT_SECRET:
            text = text.replace(secret, REDACTED)
        elif secret and secret in text:
            before = r"(?<!\w)" if (secret[0].isalnum() or secret[0] == "_") else ""
            after = r"(?!\w)" if (secret[-1].isalnum() or secret[-1] == "_") else ""
            text = re.sub(before + re.escape(secret) + after, REDACTED, text)
    return text


def _redact_value(value: Any, secrets: tuple[str, ...]) -> Any:
    """Redact strings, recursing into plain containers.

    Other objects are left as they are; the sink redacts them once it has turned them into text.
    """
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {key: _redact_value(item, secrets) for key, item in value.items()}
    # Exact types only: rebuilding a namedtuple or list subclass this way could break it.
    if type(value) is list:
        return [_redact_value(item, secrets) for item in value]
    if type(value) is tuple:
        return tuple(_redact_value(item, secrets) for item in value)
    return value


class _RedactingPatcher:
    """Scrubs message and extra on every record, so sinks added by other code get clean records too."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets

    def __call__(self, record: Any) -> None:
        if not self.secrets:
            return
        record["message"] = redact(record["message"], self.secrets)
        # extra is a fresh dict per record, so replacing its values never touches bound objects.
        for key, value in record["extra"].items():
            record["extra"][key] = _redact_value(value, self.secrets)


def _exception_text(record: Any) -> str:
    exception = record["exception"]
    if exception is None or exception.type is None:
        return ""
    # Plain traceback: file/line/code only, never local variable values.
    return "".join(traceback.format_exception(exception.type, exception.value, exception.traceback))


def _json_default(value: Any) -> str:
    # Arbitrary objects in extra become their str(); the final redact pass covers what that reveals.
    return str(value)


class _StreamSink:
    """Loguru sink that renders a record as JSON or text, redacts it and writes it to a stream."""

    def __init__(self, stream: TextIO, secrets: tuple[str, ...], as_json: bool) -> None:
        self.stream = stream
        self.secrets = secrets
        self.as_json = as_json
        # JSON escaping could hide a secret containing quotes or backslashes from the final pass.
        self._all_forms = secrets + tuple(json.dumps(s, ensure_ascii=False)[1:-1] for s in secrets)

    def __call__(self, message: Any) -> None:
        record = message.record
        line = self._render_json(record) if self.as_json else self._render_text(record)
        self.stream.write(redact(line, self._all_forms) + "\n")
        self.stream.flush()

    def _render_json(self, record: Any) -> str:
        payload: dict[str, Any] = {
            "time": record["time"].isoformat(),
            "level": record["level"].name,
            "message": redact(record["message"], self.secrets),
            "name": record["name"],
            "function": record["function"],
            "line": record["line"],
            "extra": _redact_value(dict(record["extra"]), self.secrets),
        }
        exception = _exception_text(record)
        if exception:
            payload["exception"] = redact(exception, self.secrets)
        return json.dumps(payload, ensure_ascii=False, default=_json_default)

    def _render_text(self, record: Any) -> str:
        when = record["time"]
        stamp = when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"
        where = f"{record['name']}:{record['line']}"
        line = f"{stamp} | {record['level'].name: <8} | {where} | {record['message']}"
        if record["extra"]:
            line += " | " + " ".join(f"{key}={value}" for key, value in record["extra"].items())
        exception = _exception_text(record)
        if exception:
            line += "\n" + exception.rstrip("\n")
        return line


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or file-like objects without isatty
        return False


def _no_template(record: Any) -> str:
    # The sink renders from message.record; an empty template stops loguru formatting twice.
    return ""


class InterceptHandler(logging.Handler):
    """Loguru's documented recipe: forward stdlib log records (disnake, peewee) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        # Use the matching loguru level name when there is one, else the numeric level.
        level: str | int
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno

        # Walk past logging's own frames so loguru reports the real caller's module and line.
        frame, depth = inspect.currentframe(), 0
        while frame:
            filename = frame.f_code.co_filename
            is_logging = filename == logging.__file__
            is_frozen = "importlib" in filename and "_bootstrap" in filename
            if depth > 0 and not (is_logging or is_frozen):
                break
            frame = frame.f_back
            depth += 1

        message = record.getMessage()
        if _is_rate_limit_line(record):
            # disnake warns on every 429 it sleeps through: in a storm, one line per bucket a window.
            bucket = record.args[1] if isinstance(record.args, tuple) and len(record.args) > 1 else ""
            verdict = _rate_limit_lines.failed(str(record.msg), str(bucket))
            if not verdict.log:
                return
            if not verdict.first:
                message += f" (still rate limited: {verdict.repeats} more times in the last {span(verdict.seconds)})"
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None and _is_network_noise(record, exc_info[1]):
            # A dropped connection is routine: one line saying what happened, not 60 of traceback.
            message = f"{message} ({type(exc_info[1]).__name__}: {exc_info[1]})"
            exc_info = None
        logger.opt(depth=depth, exception=exc_info).log(level, message)


def _is_network_noise(record: logging.LogRecord, error: BaseException) -> bool:
    import aiohttp
    from disnake.errors import ConnectionClosed

    noise = OSError | aiohttp.ClientError | TimeoutError | ConnectionClosed
    return record.name.startswith("disnake") and isinstance(error, noise)


RATE_LIMIT_LINES = ("We are being rate limited", "Global rate limit has been hit")
_rate_limit_lines = LogThrottle()


def _is_rate_limit_line(record: logging.LogRecord) -> bool:
    return record.name == "disnake.http" and str(record.msg).startswith(RATE_LIMIT_LINES)


def is_expected_failure(error: BaseException) -> bool:
    """A failure the bot expects and handles (a Discord HTTP error, network trouble, the database
    unavailable): logged as one line. Anything else is a bug, worth its traceback."""
    import aiohttp
    from disnake.errors import ConnectionClosed, HTTPException

    from .db.storage import StorageError

    expected = OSError | aiohttp.ClientError | TimeoutError | ConnectionClosed | HTTPException | StorageError
    return isinstance(error, expected)


LOG_FILE_ROTATION = 20 * 1024 * 1024  # bytes
LOG_FILE_RETENTION = 10


LOG_ROTATION_RETRY = 60.0  # seconds before a rotation that failed (a full disk) is tried again


class _LogFileHandler(logging.handlers.RotatingFileHandler):
    """Rotated at LOG_FILE_ROTATION, LOG_FILE_RETENTION kept, gzip-compressed (bot.log.1.gz ...).
    A write the disk refuses (full, gone read-only) is said once on stderr, not as a traceback per
    line, and again when writing works anew; the lines between are on stderr only."""

    def __init__(self, path: str) -> None:
        super().__init__(path, maxBytes=LOG_FILE_ROTATION, backupCount=LOG_FILE_RETENTION, encoding="utf-8")
        self.failing = False
        self._refused = False
        self._rotate_not_before = 0.0
        self._rotation_failing = False

    def emit(self, record: logging.LogRecord) -> None:
        self._refused = False
        super().emit(record)
        if self.failing and not self._refused:
            self.failing = False
            print(f"leaderboard-bot: writing the log file {self.baseFilename} again", file=sys.stderr)

    def handleError(self, record: logging.LogRecord) -> None:
        self._refused = True
        if not self.failing:
            self.failing = True
            error = sys.exc_info()[1]
            print(
                f"leaderboard-bot: cannot write the log file {self.baseFilename} ({error}); "
                "logging to the console only until it works again",
                file=sys.stderr,
            )

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        return time.monotonic() >= self._rotate_not_before and bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        """Compress the file first, and only then move the kept ones along: a compression the
        disk refuses leaves every kept file as it was (the standard handler moved them first,
        on every line while the disk was full), and is tried again a minute later."""
        if self.stream:
            self.stream.close()
            self.stream = None
        packed = f"{self.baseFilename}.rotating-{os.getpid()}.gz"  # (a standby may share the file)
        try:
            with open(self.baseFilename, "rb") as plain, gzip.open(packed, "wb") as out:
                shutil.copyfileobj(plain, out)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(packed)
            self._rotate_not_before = time.monotonic() + LOG_ROTATION_RETRY
            if not self._rotation_failing:
                self._rotation_failing = True
                print(
                    f"leaderboard-bot: cannot rotate the log file {self.baseFilename} ({error}); it grows past "
                    f"its size until a rotation works (tried every {LOG_ROTATION_RETRY:.0f}s)",
                    file=sys.stderr,
                )
            self.stream = self._open()
            return
        self._rotation_failing = False
        # A file another process moved or removed first is simply gone (two processes sharing one
        # LOG_FILE still lose lines: each rotates the file it writes; the README says so).
        for number in range(self.backupCount - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.baseFilename}.{number}.gz", f"{self.baseFilename}.{number + 1}.gz")
        os.replace(packed, f"{self.baseFilename}.1.gz")
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.baseFilename)
        self.stream = self._open()


class _LogFileSink:
    """Loguru sink (on loguru's writer thread) handing each JSON line to _LogFileHandler."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.handler = _LogFileHandler(path)

    def write(self, message: str) -> None:
        self.handler.emit(logging.makeLogRecord({"msg": message.rstrip("\n")}))

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the disk still full: what it refused is on the console
            self.handler.close()


_file_handler_id: int | None = None


def setup_logging(
    level: str,
    log_format: str,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    log_file: str | None = None,
) -> None:
    """Send all logs (loguru and stdlib) to one redacting sink on ``stream`` (default stderr), and
    with ``log_file`` also to that file as JSON lines, rotated at 20 MB, 10 kept, gzip-compressed."""
    global _handler_id, _file_handler_id

    level = level.upper()
    log_format = log_format.lower()
    if log_format not in ("json", "text", "auto"):
        raise ValueError(f"unknown log format {log_format!r}: use json, text or auto")
    level_no = logger.level(level).no  # raises ValueError for unknown levels
    # Resolved now, not at import, so redirected/captured stderr is honoured.
    target = sys.stderr if stream is None else stream
    as_json = log_format == "json" or (log_format == "auto" and not _is_tty(target))
    secret_tuple = tuple(secret for secret in secrets if secret)

    # Drop loguru's default stderr handler (id 0) and our previous sink; leave other sinks alone.
    for handler_id in (0, _handler_id):
        if handler_id is None:
            continue
        with contextlib.suppress(ValueError):  # already removed, e.g. by a test's logger.remove()
            logger.remove(handler_id)

    logger.configure(patcher=_RedactingPatcher(secret_tuple))
    _handler_id = logger.add(
        _StreamSink(target, secret_tuple, as_json),
        level=level,
        format=_no_template,
        # Variable values in tracebacks could include the token; keep them out.
        diagnose=False,
        backtrace=False,
        enqueue=False,
    )

    if _file_handler_id is not None:
        with contextlib.suppress(ValueError):
            logger.remove(_file_handler_id)
        _file_handler_id = None
    if log_file:
        _file_handler_id = logger.add(
            _LogFileSink(log_file),
            level=level,
            serialize=True,
            diagnose=False,
            backtrace=False,
            enqueue=True,  # file writes and rotation happen on loguru's thread, not the event loop
        )

    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    # disnake's DEBUG output (every gateway payload) is too chatty to ever be useful here.
    logging.getLogger("disnake").setLevel(max(logging.INFO, level_no))
    # "PyNaCl ... voice will NOT be supported": the bot never joins voice (it reads voice states,
    # which need no voice library), so the warning only alarms owners.
    client_log = logging.getLogger("disnake.client")
    if not any(isinstance(f, _NoVoiceLibraryWarning) for f in client_log.filters):
        client_log.addFilter(_NoVoiceLibraryWarning())
    # The scheduler watches disnake.http's rate-limit warnings to avoid hour-long sleeps, so they
    # must be emitted whatever LOG_LEVEL says (the sink still drops them below its level).
    logging.getLogger("disnake.http").setLevel(min(logging.WARNING, max(logging.INFO, level_no)))
    # peewee logs every SQL query at DEBUG; only show that when debugging.
    logging.getLogger("peewee").setLevel(logging.DEBUG if level_no <= logging.DEBUG else logging.WARNING)


class _NoVoiceLibraryWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "voice will NOT be supported" not in record.getMessage()


async def complete_logging() -> None:
    """Wait for loguru to finish pending work; call at shutdown."""
    await logger.complete()
