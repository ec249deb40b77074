"""Start-up and graceful shutdown: ``python -m leaderboard_bot`` or ``leaderboard-bot``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from dotenv import load_dotenv
from loguru import logger

from .config import (
    ConfigError,
    Settings,
    database_url_secrets,
    is_postgres,
    load_settings,
    local_state_path,
    shown_database_url,
)
from .logs import complete_logging, setup_logging

if TYPE_CHECKING:
    from .bot import LeaderboardBot

EXIT_INTERRUPTED = 130  # the shell's status for a program ended by Ctrl+C
SHORT_SEASON = 3600.0  # a season shorter than this is most likely a unit forgotten in RESET_PERIOD
STANDBY_POLL = 1.0  # how often a standby checks whether the active instance has gone
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


LOGIN_RETRY_MAX = 300.0


async def login_with_retry(bot: LeaderboardBot, token: str) -> None:
    """Discord unreachable at start (DNS, network down, a 5xx): retry with back-off, one line each."""
    import aiohttp
    import disnake

    delay = 5.0
    attempt = 1
    while not bot.closing:
        try:
            await bot.login(token)
            return
        except (OSError, aiohttp.ClientError, TimeoutError, disnake.DiscordServerError) as error:
            # Each attempt opens an HTTP session; left to the garbage collector, its "Unclosed client
            # session" warning can land inside a log call (loguru then prints a traceback).
            with contextlib.suppress(Exception):
                await bot.http.close()
            logger.error(
                "cannot reach Discord (attempt {}: {}: {}); check the network and DNS. Retrying in {:.0f}s",
                attempt,
                type(error).__name__,
                error,
                delay,
            )
        await _sleep_unless_closing(bot, delay)
        delay = min(LOGIN_RETRY_MAX, delay * 2)
        attempt += 1


async def _sleep_unless_closing(bot: LeaderboardBot, seconds: float) -> None:
    for _ in range(int(seconds * 10)):  # wakes for a stop asked meanwhile
        if bot.closing:
            return
        await asyncio.sleep(0.1)


async def run(settings: Settings) -> int:
    from .bot import LeaderboardBot
    from .db import Storage
    from .db.lock import AlreadyRunning, InstanceLock
    from .db.storage import StorageError
    from .services.lease import LeaseService

    path = local_state_path(settings.database_url, settings.guild_id)  # PostgreSQL: a local lock file
    instance = InstanceLock(path) if path != ":memory:" else None
    locked = instance is None
    if instance is not None:
        try:
            instance.acquire()
            locked = True
        except AlreadyRunning as error:
            if not settings.standby:
                logger.error("{}", error)
                return EXIT_FAILURE
            logger.warning("{}. STANDBY is on: this instance waits as a hot standby", error)
        except OSError as error:
            logger.error("cannot open the database {}: {}", shown_database_url(settings.database_url), error)
            return EXIT_FAILURE
    storage = Storage(settings.database_url)
    lease = LeaseService(storage, guild_id=settings.guild_id, flush_interval=lambda: settings.tunables.flush_interval)
    # With the instance lock, any other holder of the lease on this database has stopped (SQLite
    # lives on one machine); without it, or across machines, only the lease's expiry tells.
    holder_gone = locked and settings.database_url.startswith("sqlite")
    opened = waiting_for_database = False
    try:
        await storage.open()
        opened = True
        if not locked:
            await lease.look()
        elif not await lease.try_acquire(holder_gone=holder_gone) and not settings.standby:
            logger.error(
                "another leaderboard-bot ({}) counts for server {} on this database: both would count every "
                "message. Stop it first, or set STANDBY=on to make this one a hot standby",
                lease.current_holder,
                settings.guild_id,
            )
            await storage.close()
            return EXIT_FAILURE
    except StorageError as error:
        if opened and holder_gone:
            # Open, but the lease could not be taken: another program holds the write lock. What
            # start-up writes (the recovery file, sessions left open) must wait for it, so this
            # instance waits as a standby does and takes the lease as soon as the database answers.
            waiting_for_database = True
            logger.warning(
                "the database did not answer ({}): waiting for it before counting; messages sent meanwhile "
                "are not counted",
                error,
            )
        elif opened and locked and not settings.standby:
            # Another machine may hold the lease (PostgreSQL): counting could double every message,
            # and standing by was not asked for.
            logger.error(
                "cannot tell whether another leaderboard-bot counts for server {} ({}); stopping rather than "
                "risk counting twice: start it again once the database answers",
                settings.guild_id,
                error,
            )
            await storage.close()
            return EXIT_FAILURE
        # Otherwise _run_locked reports it with the same words as any failure to open the database.
    bot = LeaderboardBot(settings, storage, lease=lease, standby=not lease.active)

    async def stand_by() -> None:
        nonlocal locked
        while not bot.closing:
            await asyncio.sleep(STANDBY_POLL)
            if not locked and instance is not None:
                try:
                    instance.acquire()
                    locked = True
                except (AlreadyRunning, OSError):
                    continue
            previous = lease.current_holder
            try:
                if not await lease.try_take_over(holder_gone=locked and settings.database_url.startswith("sqlite")):
                    continue
            except StorageError as error:
                logger.debug("standby: the lease could not be checked ({})", error)
                continue
            if waiting_for_database and previous in (None, lease.holder):
                logger.warning("the database answers again: this instance counts from now on")
            else:
                logger.warning("took over from {}: this instance counts from now on", previous)
            try:
                await bot.activate()
            except Exception:
                # Holding the lease without counting would leave the server uncounted: stop, and
                # let the supervisor start it again (as the active instance, or a standby).
                logger.exception("the takeover failed; stopping")
                bot.shutdown_clean = False
                await bot.close()
            return

    try:
        return await _run_locked(settings, bot, None if lease.active else stand_by, waiting_for_database)
    finally:
        if instance is not None:
            instance.release()


async def _run_locked(
    settings: Settings,
    bot: LeaderboardBot,
    stand_by: Callable[[], Coroutine[Any, Any, None]] | None,
    waiting_for_database: bool = False,
) -> int:
    import aiohttp
    import disnake

    from .db.storage import StorageError
    from .services.recovery import UnreadableRecoveryFile

    loop = asyncio.get_running_loop()

    def quiet_shutdown_noise(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # disnake's own background requests (e.g. fetching the app owner) fail when a stop cuts
        # them off during start-up; that is the stop working, not an error worth a traceback.
        if bot.closing and isinstance(context.get("exception"), aiohttp.ClientError | RuntimeError):
            logger.debug("background request ended by the shutdown: {}", context.get("exception"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_shutdown_noise)
    for sig in stop_signals():
        loop.add_signal_handler(sig, _request_close, bot, sig)
    try:
        try:
            await bot.prepare()
        except UnreadableRecoveryFile as error:
            logger.error("{}", error)
            return EXIT_FAILURE
        except StorageError as error:
            advice = f": {error.advice}" if error.advice and error.kind != "damaged" else ""
            logger.error("cannot open the database {}: {}{}", shown_database_url(settings.database_url), error, advice)
            return EXIT_FAILURE
        except OSError as error:
            logger.error("cannot open the database {}: {}", shown_database_url(settings.database_url), error)
            return EXIT_FAILURE
        if stand_by is not None:
            if not waiting_for_database:
                logger.warning(
                    "standing by: {} counts for server {}; this instance connects to Discord without counting "
                    "and takes over if it stops",
                    bot.services.lease.current_holder,
                    settings.guild_id,
                )
            _background.add(watcher := asyncio.ensure_future(stand_by()))
            watcher.add_done_callback(_background.discard)
        await login_with_retry(bot, settings.bot_token)
        # What start-up built (modules, the services, the extensions) lives as long as the process:
        # out of the collector's way, a burst of messages triggers shorter collections.
        gc.freeze()
        await bot.connect()
    except disnake.LoginFailure:
        logger.error("Discord rejected BOT_TOKEN: check the token in .env (Developer Portal > Bot > Token)")
        return EXIT_FAILURE
    except disnake.PrivilegedIntentsRequired as error:
        logger.error("Discord refused the gateway intents: {}", error)
        return EXIT_FAILURE
    except Exception:
        if bot.closing:  # asked to stop while still starting: the error is the stop itself
            logger.info("stopped during start-up")
        else:
            logger.exception("the bot stopped because of an unexpected error")
            return EXIT_FAILURE
    finally:
        await bot.close()
        await complete_logging()
    return EXIT_OK if bot.shutdown_clean and not bot.lease_lost else EXIT_FAILURE


_background: set[asyncio.Future[None]] = set()  # strong references: tasks are otherwise collectable


_closing: set[asyncio.Future[None]] = set()


def stop_signals() -> list[signal.Signals]:
    """The signals that stop the bot cleanly: SIGHUP too (its terminal closed), unless it was
    started with nohup, which asks it to outlive its terminal."""
    hangup = [] if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else [signal.SIGHUP]
    return [signal.SIGTERM, signal.SIGINT, *hangup]


def _request_close(bot: LeaderboardBot, sig: signal.Signals) -> None:
    logger.info("received {}, shutting down", sig.name)
    task = asyncio.ensure_future(bot.close())
    _closing.add(task)  # keep a reference until done, or the task may be garbage-collected
    task.add_done_callback(_closing.discard)


# How long a thread holding the GIL keeps it while another waits (Python's default: 5 ms). sqlite3
# lets go of the GIL for every row it steps through, so a database thread reading or writing many
# rows while the event loop is busy waits this long per row to get it back: 1 ms cut a read of
# 5,000 rows under load from 1.0 s to 0.35 s (bench/README.md) and gives the loop the GIL back sooner.
GIL_SWITCH_INTERVAL = 0.001


# peewee imports every PostgreSQL driver installed when it is first imported (psycopg 3: about 11 MB
# resident, bench/README.md); a bot on SQLite never uses one. Installed with the postgres or test extra.
POSTGRES_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi")


def import_storage_without_unused_drivers(database_url: str) -> None:
    """Import peewee as if no PostgreSQL driver were installed, when the database is SQLite; the
    drivers stay importable afterwards (nothing here needs them)."""
    if is_postgres(database_url) or "peewee" in sys.modules:
        return
    hidden = [name for name in POSTGRES_DRIVERS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        import peewee  # noqa: F401  # decides its drivers now
        import playhouse.pool  # type: ignore[import-untyped]  # noqa: F401  # untyped module
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def main() -> None:
    try:
        _start()
    except KeyboardInterrupt:  # Ctrl+C before the bot's own handlers were in place: nothing started
        print("leaderboard-bot: stopped before it started", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _start() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    load_dotenv(".env", override=False)  # real environment variables win over .env
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"leaderboard-bot: configuration error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    import_storage_without_unused_drivers(settings.database_url)
    try:
        setup_logging(
            settings.log_level,
            settings.log_format,
            secrets=[settings.bot_token, *database_url_secrets(settings.database_url)],
            log_file=settings.log_file,
        )
    except (OSError, ValueError) as error:
        print(f"leaderboard-bot: configuration error: LOG_FILE {settings.log_file!r}: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logger.info(
        "starting leaderboard-bot for guild {} (database {})",
        settings.guild_id,
        shown_database_url(settings.database_url),
    )
    if settings.tunables.reset_period < SHORT_SEASON:
        logger.warning(
            "RESET_PERIOD is {:g} seconds: the leaderboards reset that often (a number without a unit is "
            "seconds; write 30d for 30 days)",
            settings.tunables.reset_period,
        )
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
