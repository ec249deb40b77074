"""Start-up and graceful shutdown: ``python -m leaderboard_bot`` or ``leaderboard-bot``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from dotenv import load_dotenv
from loguru import logger

from .config import ConfigError, Settings, load_settings, sqlite_path
from .logs import complete_logging, setup_logging

if TYPE_CHECKING:
    from .bot import LeaderboardBot

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

    path = sqlite_path(settings.database_url)
    instance = InstanceLock(path) if path != ":memory:" else None
    if instance is not None:
        try:
            instance.acquire()
        except AlreadyRunning as error:
            logger.error("{}", error)
            return EXIT_FAILURE
        except OSError as error:
            logger.error("cannot open the database {}: {}", settings.database_url, error)
            return EXIT_FAILURE
    try:
        return await _run_locked(settings, LeaderboardBot(settings, Storage(settings.database_url)))
    finally:
        if instance is not None:
            instance.release()


async def _run_locked(settings: Settings, bot: LeaderboardBot) -> int:
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
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _request_close, bot, sig)
    try:
        try:
            await bot.prepare()
        except UnreadableRecoveryFile as error:
            logger.error("{}", error)
            return EXIT_FAILURE
        except StorageError as error:
            advice = f": {error.advice}" if error.advice and error.kind != "damaged" else ""
            logger.error("cannot open the database {}: {}{}", settings.database_url, error, advice)
            return EXIT_FAILURE
        except OSError as error:
            logger.error("cannot open the database {}: {}", settings.database_url, error)
            return EXIT_FAILURE
        await login_with_retry(bot, settings.bot_token)
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
    return EXIT_OK if bot.shutdown_clean else EXIT_FAILURE


_closing: set[asyncio.Future[None]] = set()


def _request_close(bot: LeaderboardBot, sig: signal.Signals) -> None:
    logger.info("received {}, shutting down", sig.name)
    task = asyncio.ensure_future(bot.close())
    _closing.add(task)  # keep a reference until done, or the task may be garbage-collected
    task.add_done_callback(_closing.discard)


def main() -> None:
    load_dotenv(".env", override=False)  # real environment variables win over .env
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"leaderboard-bot: configuration error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        setup_logging(settings.log_level, settings.log_format, secrets=[settings.bot_token], log_file=settings.log_file)
    except (OSError, ValueError) as error:
        print(f"leaderboard-bot: configuration error: LOG_FILE {settings.log_file!r}: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    logger.info("starting leaderboard-bot for guild {} (database {})", settings.guild_id, settings.database_url)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
