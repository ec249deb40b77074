"""Start-up and graceful shutdown: ``python -m leaderboard_bot`` or ``leaderboard-bot``."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from dotenv import load_dotenv
from loguru import logger

from .config import ConfigError, Settings, load_settings
from .logs import complete_logging, setup_logging

if TYPE_CHECKING:
    from .bot import LeaderboardBot

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


async def run(settings: Settings) -> int:
    import aiohttp
    import disnake
    import peewee

    from .bot import LeaderboardBot
    from .db import Storage

    bot = LeaderboardBot(settings, Storage(settings.database_url))
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
        except (OSError, peewee.DatabaseError) as error:
            logger.error("cannot open the database {}: {}", settings.database_url, error)
            return EXIT_FAILURE
        await bot.start(settings.bot_token)
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
    setup_logging(settings.log_level, settings.log_format, secrets=[settings.bot_token])
    logger.info("starting leaderboard-bot for guild {} (database {})", settings.guild_id, settings.database_url)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
