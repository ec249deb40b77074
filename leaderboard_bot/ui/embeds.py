"""Embed builders for the leaderboards, final standings, member stats and notices.

Every builder is a pure function of its arguments (no clock, no embed timestamp): the
bot compares ``to_dict()`` of the new embed with the last one it posted and skips the
edit when they match, so identical inputs must give identical embeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import disnake

from ..domain import (
    BOARDS,
    UNKNOWN_MEMBER,
    Board,
    BoardLine,
    FinishedSeason,
    Placing,
    Window,
    shift_day,
    visible_name,
)
from .format import (
    day_range_text,
    day_text,
    discord_timestamp,
    display_name,
    format_count,
    format_duration,
    ordinal_rank,
)

if TYPE_CHECKING:
    from ..services.health import Facts

__all__ = [
    "BRAND_COLOUR",
    "DEFAULT_ARROW",
    "BoardPeriod",
    "board_title",
    "final_standings_embed",
    "format_line",
    "format_value",
    "guild_icon_url",
    "health_embed",
    "leaderboard_embed",
    "notice_embed",
    "settings_embed",
    "stats_embed",
]

# The server owner's look.
BRAND_COLOUR: int = 0x571173
DEFAULT_ARROW: str = "<a:purp_arrow:1403295268505522187>"

# Discord's embed limits.
FIELD_LIMIT = 1024
FIELDS_LIMIT = 25  # fields per embed
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_VALUE_LIMIT = 1024

EMPTY_BOARD_TEXT: dict[str, str] = {
    "messages": "No messages counted yet this season. Say hi and claim the top spot!",
    "voice": "No voice time yet this season. Hop into a voice channel to get on the board!",
}
EMPTY_FINAL_TEXT = "Nobody made it onto this board this season."
NO_CHANGE_YET = "—"


STALE_NOTE = "⚠ The database is busy right now, so these figures may be a little out of date."


@dataclass(frozen=True)
class BoardPeriod:
    """What a board or stats card covers when it is not the running season: a window of days or
    a finished season. ``label`` titles it ("Last 7 days"), ``dates`` says when ("27 Nov – 3 Dec
    2026 · UTC days"), ``during`` ends a sentence ("in the last 7 days")."""

    label: str
    dates: str
    during: str
    live: bool = True  # includes now (a window); False: a finished season


# (label, what ends "No messages counted ...")
WINDOW_WORDS: dict[str, tuple[str, str]] = {
    "today": ("Today", "today"),
    "week": ("Last 7 days", "in the last 7 days"),
    "month": ("Last 30 days", "in the last 30 days"),
    "all-time": ("All time", "yet"),
}


def window_period(window: Window, *, today: str, zone: str, first_day: str) -> BoardPeriod:
    """A window of days ending ``today`` in ``zone``; all time runs from ``first_day`` (the first
    season's)."""
    label, during = WINDOW_WORDS[window.period]
    if window.days is None:
        dates = f"Every season since {day_text(first_day)}"
    else:
        dates = f"{day_range_text(shift_day(today, 1 - window.days), today)} · {zone} days"
    return BoardPeriod(label=label, dates=dates, during=during)


def finished_season_period(number: int, started_at: float, ended_at: float) -> BoardPeriod:
    return BoardPeriod(
        label=f"Season {number}",
        dates=f"Finished · ran {discord_timestamp(started_at, 'D')} – {discord_timestamp(ended_at, 'D')}",
        during=f"in season {number}",
        live=False,
    )


EMPTY_PERIOD_TEXT: dict[str, str] = {
    "messages": "No messages counted {during}.",
    "voice": "No voice time counted {during}.",
}


def board_title(board: Board) -> str:
    return "Message Leaderboard" if board == "messages" else "Voice Leaderboard"


def format_value(board: Board, value: float) -> str:
    """``1,234 messages`` / ``1 message`` for messages, ``12h 05m`` for voice."""
    if board == "voice":
        return format_duration(value)
    # Message counts are whole numbers; the float only comes from the shared ranking type.
    count = max(int(value), 0)
    return f"{format_count(count)} {'message' if count == 1 else 'messages'}"


def format_line(line: BoardLine, *, arrow: str | None, board: Board) -> str:
    """One board line; ``arrow=None`` drops the prefix (used for the caller's own rank)."""
    # display_name escapes markdown, neutralises mentions and truncates to 32 characters.
    name = display_name(nick=line.name, global_name=None, username=None, user_id=line.user_id)
    body = f"**{ordinal_rank(line.rank)}** {name} — **{format_value(board, line.value)}**"
    return f"{arrow} {body}" if arrow else body


def _fit_lines(texts: Sequence[str], budget: int) -> str:
    """Join whole lines with newlines, dropping trailing ones that would exceed ``budget``.

    Cutting mid-line could leave a half ``**`` or a half escape sequence, so lines are
    only ever dropped whole. Never triggers for 25 members with 32-character names; it
    only guards against an unusually long custom arrow.
    """
    kept: list[str] = []
    used = 0
    for text in texts:
        cost = len(text) + (1 if kept else 0)
        if used + cost > budget:
            break
        kept.append(text)
        used += cost
    return "\n".join(kept)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain_name(name: str, limit: int) -> str:
    """Single-line name for places where markdown is not rendered (titles), truncated to ``limit``."""
    # Titles are not markdown-rendered, so only line breaks / control characters need removing.
    cleaned = visible_name(name) or UNKNOWN_MEMBER
    return _clip(cleaned, limit)


def guild_icon_url(guild: disnake.Guild | None) -> str | None:
    """The server's icon, the thumbnail of every leaderboard and final-standings embed."""
    return guild.icon.url if guild is not None and guild.icon is not None else None


def _base_embed(*, title: str, description: str | None, thumbnail_url: str | None) -> disnake.Embed:
    embed = disnake.Embed(
        title=_clip(title, TITLE_LIMIT),
        description=description,
        colour=disnake.Colour(BRAND_COLOUR),
    )
    if thumbnail_url:
        embed.set_thumbnail(url=thumbnail_url)
    return embed


def leaderboard_embed(
    *,
    board: Board,
    lines: Sequence[BoardLine],
    arrow: str = DEFAULT_ARROW,
    guild_icon_url: str | None,
    season_number: int,
    season_ends_at: float,
    changed_at: float | None,
    caller_line: BoardLine | None = None,
    stale: bool = False,
    period: BoardPeriod | None = None,
) -> disnake.Embed:
    """The live board (of the running season, or of ``period``). ``caller_line`` is the invoking
    member's rank when outside the shown top; ``stale`` says the figures could not be brought up
    to date just now."""
    suffix = ""
    if caller_line is not None:
        suffix = "\n\nYour rank: " + format_line(caller_line, arrow=None, board=board)
    if lines:
        # Reserve room for the caller's line so it is never the part that gets dropped.
        rows = [format_line(x, arrow=arrow, board=board) for x in lines]
        description = _fit_lines(rows, DESCRIPTION_LIMIT - len(suffix)) + suffix
    elif period is not None:
        description = EMPTY_PERIOD_TEXT[board].format(during=period.during) + suffix
    else:
        description = EMPTY_BOARD_TEXT[board] + suffix

    title = board_title(board) if period is None else f"{board_title(board)} · {period.label}"
    embed = _base_embed(title=title, description=description, thumbnail_url=guild_icon_url)
    if period is not None:
        embed.add_field(name=period.label, value=period.dates, inline=False)
    else:
        embed.add_field(
            name=f"Season {season_number}",
            value=f"Resets {discord_timestamp(season_ends_at, 'R')}\n{discord_timestamp(season_ends_at, 'f')}",
            inline=True,
        )
        embed.add_field(
            name="Last change",
            value=NO_CHANGE_YET if changed_at is None else discord_timestamp(changed_at, "R"),
            inline=True,
        )
    if stale:
        embed.set_footer(text=STALE_NOTE)
    return embed


def final_standings_embed(
    *,
    board: Board,
    lines: Sequence[BoardLine],
    arrow: str = DEFAULT_ARROW,
    guild_icon_url: str | None,
    season_number: int,
    started_at: float,
    ended_at: float,
) -> disnake.Embed:
    """Posted once when a season ends; one embed per board."""
    header = f"**{board_title(board)}**\n\n"
    if lines:
        body = _fit_lines([format_line(x, arrow=arrow, board=board) for x in lines], DESCRIPTION_LIMIT - len(header))
    else:
        body = EMPTY_FINAL_TEXT
    embed = _base_embed(
        title=f"Season {season_number} — final standings",
        description=header + body,
        thumbnail_url=guild_icon_url,
    )
    # A field rather than the footer: footers show timestamp markup as raw text.
    embed.add_field(
        name="Season ran",
        value=f"{discord_timestamp(started_at, 'D')} – {discord_timestamp(ended_at, 'D')}",
        inline=False,
    )
    return embed


def seasons_embed(seasons: Sequence[FinishedSeason], *, guild_icon_url: str | None) -> disnake.Embed:
    """``/seasons``: finished seasons, newest first, with their dates and each board's winner."""
    embed = _base_embed(
        title="Past seasons",
        description=None if seasons else "No season has finished yet.",
        thumbnail_url=guild_icon_url,
    )
    for season in seasons[:FIELDS_LIMIT]:
        lines = [f"{discord_timestamp(season.started_at, 'D')} – {discord_timestamp(season.ended_at, 'D')}"]
        for board in BOARDS:
            winner = season.winners.get(board)
            label = "Messages" if board == "messages" else "Voice"
            lines.append(f"{label}: " + (format_line(winner, arrow=None, board=board) if winner else "nobody"))
        embed.add_field(name=f"Season {season.number}", value=_clip("\n".join(lines), FIELD_LIMIT), inline=False)
    return embed


def _ranked(text: str, rank: int | None) -> str:
    return f"{text} · rank {ordinal_rank(rank)}" if rank is not None else f"{text} · unranked"


def placing_text(placing: Placing) -> str:
    """``Season 3: #2 in messages (1,234 messages)``."""
    board = "messages" if placing.board == "messages" else "voice time"
    return (
        f"Season {placing.season}: {ordinal_rank(placing.rank)} in {board} "
        f"({format_value(placing.board, placing.value)})"
    )


def stats_embed(
    *,
    name: str,
    avatar_url: str | None,
    messages: int,
    message_rank: int | None,
    voice_seconds: float,
    voice_rank: int | None,
    in_voice_channel_id: int | None,
    live_session_seconds: float | None,
    season_number: int,
    season_ends_at: float,
    stale: bool = False,
    voice_status: str | None = None,
    held_back_today: int = 0,
    period: BoardPeriod | None = None,
    best_season: Placing | None = None,
) -> disnake.Embed:
    """A member's own numbers for the running season (or ``period``); ``voice_status`` says
    whether their voice time counts right now (and why not), ``held_back_today`` what the
    anti-spam limit held back, ``best_season`` their best finished season."""
    prefix = "Stats for "
    suffix = "" if period is None else f" · {period.label}"
    embed = _base_embed(
        title=prefix + _plain_name(name, TITLE_LIMIT - len(prefix) - len(suffix)) + suffix,
        description=None,
        thumbnail_url=avatar_url,
    )
    live = period is None or period.live
    messages_text = _ranked(format_count(messages), message_rank)
    if held_back_today > 0 and live:
        messages_text += f"\n{format_count(held_back_today)} held back by the anti-spam limit today"
    embed.add_field(name="Messages", value=messages_text, inline=True)
    embed.add_field(name="Voice time", value=_ranked(format_duration(voice_seconds), voice_rank), inline=True)
    if live:
        if in_voice_channel_id is None:
            in_voice = "No"
        elif live_session_seconds is None:
            # Session length unknown (e.g. just joined before the tracker saw it): still say where.
            in_voice = f"<#{in_voice_channel_id}>"
        else:
            in_voice = f"<#{in_voice_channel_id}> for {format_duration(live_session_seconds)}"
        if in_voice_channel_id is not None and voice_status:
            in_voice += f"\n{voice_status}"
        embed.add_field(name="In voice now", value=in_voice, inline=True)
    if period is not None:
        embed.add_field(name=period.label, value=period.dates, inline=True)
    else:
        embed.add_field(
            name=f"Season {season_number} ends",
            value=f"{discord_timestamp(season_ends_at, 'D')} ({discord_timestamp(season_ends_at, 'R')})",
            inline=True,
        )
    if best_season is not None:
        embed.add_field(name="Best finished season", value=placing_text(best_season), inline=False)
    if stale:
        embed.set_footer(text=STALE_NOTE)
    return embed


def notice_embed(text: str, *, title: str | None = None) -> disnake.Embed:
    """Small branded embed for friendly replies (errors, confirmations)."""
    embed = disnake.Embed(description=_clip(text, DESCRIPTION_LIMIT), colour=disnake.Colour(BRAND_COLOUR))
    if title:
        embed.title = _clip(title, TITLE_LIMIT)
    return embed


_STATUS_MARK = {"ok": "🟢", "degraded": "🟡", "failing": "🔴"}


def _ago(at: float | None, now: float) -> str:
    return "never" if at is None else f"{discord_timestamp(at, 'R')}"


def health_embed(facts: Facts, *, now: float) -> disnake.Embed:
    """``/health``: the overall status and the facts behind it, for the server's managers."""
    embed = disnake.Embed(
        title=_clip(f"{_STATUS_MARK.get(facts.status, '')} Bot health: {facts.status}", TITLE_LIMIT),
        description=_clip(facts.reason, DESCRIPTION_LIMIT),
        colour=disnake.Colour(BRAND_COLOUR),
    )
    latency = "unknown" if facts.gateway_latency is None else f"{facts.gateway_latency * 1000:.0f} ms"
    embed.add_field("Uptime", format_duration(facts.uptime))
    embed.add_field("Role", facts.role)
    embed.add_field("Gateway latency", latency)
    embed.add_field("Events / s (1 min)", f"{facts.events_per_second:.2f}")
    embed.add_field("Messages counted", format_count(facts.messages_counted))
    embed.add_field("In voice, counting", format_count(facts.voice_counting))
    waiting = (
        f"{format_count(facts.buffered_message_rows)} message rows, "
        f"{format_count(facts.buffered_voice_rows)} voice rows"
    )
    if facts.spilled_rows:
        waiting += f", {format_count(facts.spilled_rows)} rows moved to disk (memory bound reached)"
    if facts.recovery_file_saved:
        waiting += " (also saved to disk)"
    if facts.unsaved_since is not None and now - facts.unsaved_since > 60:
        waiting += f"; oldest unsaved activity {_ago(facts.unsaved_since, now)}"
    embed.add_field("Waiting to be written", waiting, inline=False)
    flush = facts.last_flush
    if flush is None:
        last_flush = "none yet"
    else:
        result = "ok" if flush.ok else f"failed: {flush.detail}"
        last_flush = f"{_ago(flush.at, now)} · {flush.seconds * 1000:.0f} ms · {result}"
    embed.add_field("Last flush", _clip(last_flush, FIELD_LIMIT), inline=False)
    refreshes = [
        f"{board}: {_ago(o.at, now)} · {o.seconds * 1000:.0f} ms · {'ok' if o.ok else o.detail or 'failed'}"
        for board, o in sorted(facts.last_refresh.items())
    ]
    embed.add_field("Last board refresh", _clip("\n".join(refreshes) or "none yet", FIELD_LIMIT), inline=False)
    hit_rate = "no lookups yet" if facts.cache_hit_rate is None else f"{facts.cache_hit_rate:.0%}"
    embed.add_field("Cache hit rate", hit_rate)
    embed.add_field(
        "Anti-spam and clock",
        f"{format_count(facts.spam_blocked)} messages held back · "
        f"{format_count(facts.timestamps_clamped)} timestamps corrected",
    )
    size = "unknown" if facts.database_bytes is None else f"{facts.database_bytes / 1e6:.1f} MB"
    embed.add_field("Database size", size)
    embed.add_field("Process", f"CPU {facts.cpu_percent:.0f}% · {facts.memory_bytes / 1e6:.0f} MB")
    if facts.memory_entries:
        held = " · ".join(f"{name.replace('_', ' ')} {format_count(n)}" for name, n in facts.memory_entries.items())
        embed.add_field("Held in memory (entries)", _clip(held, FIELD_LIMIT), inline=False)
    latencies = [
        f"/{name}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms ({n})"
        for name, (p50, p95, n) in sorted(facts.command_latency.items())
    ]
    embed.add_field(
        "Command response times", _clip("\n".join(latencies) or "no commands yet", FIELD_LIMIT), inline=False
    )
    return embed


def settings_embed(rows: Sequence[tuple[str, str, bool]]) -> disnake.Embed:
    """``/leaderboard settings show``: (variable, value as typed, changed here rather than in .env)."""
    lines = [f"`{name}` = `{value}`{' · *changed here*' if changed else ''}" for name, value, changed in rows]
    embed = disnake.Embed(
        title="Leaderboard settings",
        description=_clip("\n".join(lines), DESCRIPTION_LIMIT),
        colour=disnake.Colour(BRAND_COLOUR),
    )
    embed.set_footer(text="Change one with /leaderboard settings set; values from .env apply unless changed here.")
    return embed
