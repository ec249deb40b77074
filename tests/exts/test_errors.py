"""Answering in time and apologising (exts/errors.py), with a fake interaction that records calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import disnake
import pytest
from disnake.ext import commands
from loguru import logger

from leaderboard_bot.db.storage import StorageError
from leaderboard_bot.exts.errors import APOLOGY, DATABASE_UNAVAILABLE, Errors, Reply, ReportingView, respond_in_time
from leaderboard_bot.ui.embeds import notice_embed
from tests.factories import runtime_settings

# Short enough to keep the suite fast, long enough that "fast" work never misses it on a busy CI box.
DEFER_AFTER = 0.2
GUILD_ID = 111


def http_error(status: int = 400) -> disnake.HTTPException:
    return disnake.HTTPException(SimpleNamespace(status=status, reason="Bad Request"), "injected")  # type: ignore[arg-type]


class FakeResponse:
    def __init__(self, inter: FakeInter, send_failures: int) -> None:
        self.inter = inter
        self.send_failures = send_failures
        self.done = False

    def is_done(self) -> bool:
        return self.done

    async def defer(self, **kwargs: Any) -> None:
        self.inter.calls.append(("defer", kwargs))
        self.done = True

    async def send_message(self, *, embed: disnake.Embed, ephemeral: bool = False) -> None:
        if self.send_failures:
            self.send_failures -= 1
            raise http_error()
        self.inter.calls.append(("send", embed.description, ephemeral))
        self.done = True


class FakeInter:
    """Just what respond_in_time touches; records every call in order."""

    def __init__(self, *, guild_id: int | None = GUILD_ID, send_failures: int = 0, edit_failures: int = 0) -> None:
        self.id = 987
        self.author = SimpleNamespace(id=42)
        self.guild_id = guild_id
        self.application_command = SimpleNamespace(qualified_name="stats")
        self.calls: list[tuple[Any, ...]] = []
        self.edit_failures = edit_failures
        self.response = FakeResponse(self, send_failures)

        self.followup = SimpleNamespace(send=self._followup_send)
        self.delete_failures = 0

    async def edit_original_response(self, *, embed: disnake.Embed) -> None:
        if self.edit_failures:
            self.edit_failures -= 1
            raise http_error()
        self.calls.append(("edit", embed.description))

    async def delete_original_response(self) -> None:
        if self.delete_failures:
            self.delete_failures -= 1
            raise http_error()
        self.calls.append(("delete",))

    async def _followup_send(self, *, embed: disnake.Embed, ephemeral: bool = False) -> None:
        self.calls.append(("followup", embed.description, ephemeral))


@pytest.fixture
def logs() -> Iterator[list[Any]]:
    records: list[Any] = []
    sink = logger.add(records.append, level="DEBUG", format="{message}")
    yield records
    logger.remove(sink)


def reply(text: str, *, ephemeral: bool = False) -> Reply:
    return Reply(notice_embed(text), ephemeral=ephemeral)


async def answer(text: str, *, after: float = 0.0, ephemeral: bool = False) -> Reply:
    await asyncio.sleep(after)
    return reply(text, ephemeral=ephemeral)


async def fail(*, after: float = 0.0) -> Reply:
    await asyncio.sleep(after)
    raise RuntimeError("database exploded")


async def respond(inter: FakeInter, work: Any, command: str = "top messages") -> None:
    await respond_in_time(inter, work, command=command, defer_after=DEFER_AFTER)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- respond_in_time


@pytest.mark.parametrize("ephemeral", [False, True])
async def test_fast_work_is_the_response_itself(ephemeral: bool) -> None:
    inter = FakeInter()
    await respond(inter, answer("hello", ephemeral=ephemeral))
    assert inter.calls == [("send", "hello", ephemeral)]


async def test_slow_work_defers_publicly_then_edits_the_original() -> None:
    inter = FakeInter()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await respond(inter, answer("late", after=DEFER_AFTER * 2))
    assert inter.calls == [("defer", {}), ("edit", "late")]
    assert loop.time() - started >= DEFER_AFTER * 2  # waited for the work, not just the defer


async def test_the_defer_happens_at_the_deadline_not_after_the_work() -> None:
    inter = FakeInter()
    task = asyncio.create_task(respond(inter, answer("late", after=DEFER_AFTER * 5)))
    await asyncio.sleep(DEFER_AFTER * 2)
    assert inter.calls == [("defer", {})]  # Discord already knows we are on it
    await task
    assert inter.calls[-1] == ("edit", "late")


async def test_an_error_before_the_deadline_is_an_ephemeral_apology_with_context_in_the_log(
    logs: list[Any],
) -> None:
    inter = FakeInter()
    await respond(inter, fail(), command="stats")
    assert inter.calls == [("send", APOLOGY, True)]
    (record,) = [m.record for m in logs if m.record["level"].name == "ERROR"]
    assert record["message"] == "/stats failed for user 42"
    assert record["extra"] == {"command": "stats", "user_id": 42}
    assert record["exception"] is not None and isinstance(record["exception"].value, RuntimeError)


@pytest.mark.parametrize("after", [0.0, DEFER_AFTER * 2])
async def test_a_database_that_does_not_answer_is_said_so_privately_and_logged_without_a_traceback(
    logs: list[Any], after: float
) -> None:
    """A PostgreSQL server down with nothing read before to fall back on: not a bug, so not the
    "something went wrong" apology and an ERROR with a traceback for each command."""

    async def unreachable() -> Reply:
        await asyncio.sleep(after)
        raise StorageError("OperationalError: connection refused", kind="unreachable")

    inter = FakeInter()
    await respond(inter, unreachable(), command="stats")
    assert inter.calls[-1][1:] == (DATABASE_UNAVAILABLE, True)
    assert not [m for m in logs if m.record["level"].name == "ERROR"]
    (warning,) = [m.record for m in logs if m.record["level"].name == "WARNING"]
    assert "could not read the database" in warning["message"] and warning["exception"] is None
    inter = FakeInter()
    wrapped = commands.CommandInvokeError(StorageError("database is locked", kind="locked"))
    await Errors(runtime_settings()).on_slash_command_error(inter, wrapped)  # type: ignore[arg-type]
    assert inter.calls == [("send", DATABASE_UNAVAILABLE, True)]


async def test_an_error_after_deferring_replaces_the_thinking_message_with_a_private_apology() -> None:
    inter = FakeInter()
    await respond(inter, fail(after=DEFER_AFTER * 2))
    assert inter.calls == [("defer", {}), ("delete",), ("followup", APOLOGY, True)]


async def test_a_failed_send_is_followed_by_the_apology() -> None:
    inter = FakeInter(send_failures=1)
    await respond(inter, answer("hello"))
    assert inter.calls == [("send", APOLOGY, True)]


async def test_a_failed_edit_after_deferring_is_followed_by_the_apology() -> None:
    inter = FakeInter(edit_failures=1)
    await respond(inter, answer("late", after=DEFER_AFTER * 2))
    assert inter.calls == [("defer", {}), ("delete",), ("followup", APOLOGY, True)]


async def test_nothing_escapes_when_even_the_apology_fails(logs: list[Any]) -> None:
    inter = FakeInter(send_failures=2)
    await respond(inter, fail())
    assert inter.calls == []
    assert any("could not send the apology" in m for m in logs)


async def test_cancelling_the_command_cancels_the_work() -> None:
    inter = FakeInter()
    stopped = asyncio.Event()

    async def forever() -> Reply:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        raise AssertionError("unreachable")

    task = asyncio.create_task(respond(inter, forever()))
    await asyncio.sleep(DEFER_AFTER / 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(stopped.wait(), 1)
    assert inter.calls == []  # a cancelled command (shutdown) does not answer


async def test_work_cancelled_from_elsewhere_still_gets_an_apology() -> None:
    inter = FakeInter()

    async def cancelled() -> Reply:
        raise asyncio.CancelledError  # e.g. a service shutting down under the command

    await respond(inter, cancelled())
    assert inter.calls == [("send", APOLOGY, True)]


# --------------------------------------------------------------------------- the error handler


async def test_the_error_handler_logs_and_apologises(logs: list[Any]) -> None:
    inter = FakeInter()
    error = commands.CommandInvokeError(RuntimeError("boom"))
    await Errors(runtime_settings()).on_slash_command_error(inter, error)  # type: ignore[arg-type]
    assert inter.calls == [("send", APOLOGY, True)]
    assert any(m.record["message"] == "/stats failed for user 42" for m in logs)


async def test_the_error_handler_edits_when_already_deferred() -> None:
    inter = FakeInter()
    await inter.response.defer()
    await Errors(runtime_settings()).on_slash_command_error(inter, commands.CommandError("late"))  # type: ignore[arg-type]
    assert inter.calls == [("defer", {}), ("delete",), ("followup", APOLOGY, True)]


async def test_when_the_thinking_message_cannot_be_removed_it_becomes_the_apology() -> None:
    inter = FakeInter()
    inter.delete_failures = 1
    await respond(inter, fail(after=DEFER_AFTER * 2))
    assert inter.calls == [("defer", {}), ("edit", APOLOGY)]


async def test_the_errors_cog_is_the_bot_wide_handler_so_disnake_prints_nothing() -> None:
    from leaderboard_bot.exts import errors

    bot = commands.InteractionBot()
    bot.services = SimpleNamespace(settings=runtime_settings())  # type: ignore[attr-defined]
    errors.setup(bot)  # type: ignore[arg-type]
    assert len(bot.extra_events.get("on_slash_command_error", [])) == 1
    bot.remove_cog("Errors")
    assert not bot.extra_events.get("on_slash_command_error")


class RateLimitedInter:
    def __init__(self, user_id: int, *, manager: bool = False) -> None:
        self.author = SimpleNamespace(id=user_id)
        self.permissions = disnake.Permissions(manage_guild=manager)
        self.sent: list[tuple[str, bool]] = []
        self.response = SimpleNamespace(send_message=self._send)

    async def _send(self, *, embed: disnake.Embed, ephemeral: bool = False) -> None:
        self.sent.append((embed.description or "", ephemeral))


async def test_commands_beyond_the_member_limit_are_asked_to_slow_down_privately() -> None:
    from leaderboard_bot.config import SpamLimit
    from leaderboard_bot.exts.errors import CommandRateLimited

    cog = Errors(runtime_settings(command_limit=SpamLimit(burst=3, per_seconds=10.0)))
    alice = RateLimitedInter(1)
    for _ in range(3):
        assert cog.bot_slash_command_check_once(alice) is True  # type: ignore[arg-type]
    with pytest.raises(CommandRateLimited) as caught:
        cog.bot_slash_command_check_once(alice)  # type: ignore[arg-type]
    assert 0 < caught.value.retry_after <= 10 / 3
    assert cog.bot_slash_command_check_once(RateLimitedInter(2)) is True  # type: ignore[arg-type]  (per member)
    await cog.on_slash_command_error(alice, caught.value)  # type: ignore[arg-type]
    ((text, ephemeral),) = alice.sent
    assert ephemeral and text.startswith("Slow down a little: try again in") and text.endswith(" s.")


def test_managers_are_exempt_from_the_command_limit_only() -> None:
    from leaderboard_bot.config import SpamLimit

    cog = Errors(runtime_settings(command_limit=SpamLimit(burst=3, per_seconds=10.0)))
    manager = RateLimitedInter(1, manager=True)
    assert all(cog.bot_slash_command_check_once(manager) for _ in range(50))  # type: ignore[arg-type]
    member = RateLimitedInter(2)
    assert [cog.bot_slash_command_check_once(member) for _ in range(3)] == [True] * 3  # type: ignore[arg-type]


def test_command_limit_off_lets_everything_through() -> None:
    cog = Errors(runtime_settings(command_limit=None))
    member = RateLimitedInter(1)
    assert all(cog.bot_slash_command_check_once(member) for _ in range(100))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- buttons


async def test_a_failing_button_is_logged_and_apologised_for_never_printed_by_disnake(
    logs: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """disnake's View.on_error prints a traceback to stderr (past the redacting logger) and
    leaves the member waiting; the bot's views log it and answer privately."""

    class Confirm(ReportingView):
        @disnake.ui.button(label="Go", custom_id="test:go")
        async def go(self, button: disnake.ui.Button, inter: disnake.MessageInteraction) -> None:
            raise RuntimeError("boom")

    view = Confirm()
    inter = FakeInter()
    button = view.children[0]
    await view.on_error(RuntimeError("boom"), button, inter)  # type: ignore[arg-type]
    assert inter.calls == [("send", APOLOGY, True)]
    (record,) = [m.record for m in logs if m.record["level"].name == "ERROR"]
    assert record["message"] == "the Confirm button 'Go' failed for user 42"
    assert capsys.readouterr().err == ""
    inter = FakeInter()
    await view.on_error(StorageError("database is locked", kind="locked"), button, inter)  # type: ignore[arg-type]
    assert inter.calls == [("send", DATABASE_UNAVAILABLE, True)]
