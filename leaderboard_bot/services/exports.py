"""Files of the members' and owners' exports (``/privacy export``, ``/leaderboard export``), built
off the event loop: queries on a Storage reader, CSV writing on a worker thread.

An owners' export streams: the reader hands rows in chunks through a small bounded queue to the
writer, which writes them straight to a temporary file, so a million-member board is never a
million Python objects at once. Members who chose ``hide`` are left out and only counted; those who
chose ``stop`` (or deleted their data) are left out without a trace. Ranks are renumbered without
them, like the boards. A file over Discord's attachment limit is gzipped, and if still over, split
into row-aligned parts (each with the header), each gzipped.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import queue
import shutil
from bisect import bisect_left
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..db import Storage, repository
from ..db.repository import ExportRow

HEADER = ("user_id", "name", "messages", "voice_seconds", "message_rank", "voice_rank")
DAY_HEADER = ("day", *HEADER)
QUEUE_CHUNKS = 4  # chunks in flight between the reader and the writer (bounds the memory)
LIMIT_MARGIN = 64 * 1024  # room for the multipart envelope under Discord's limit


@dataclass(frozen=True)
class ExportSpec:
    """What an owners' export covers: a season or window (``scope``, its member_stats rows), or
    the daily buckets from ``first_day`` to ``last_day`` (``scope`` None). ``per_day``: one row per
    member per day of ``first_day``..``last_day`` instead."""

    scope: int | None
    first_day: str
    last_day: str
    per_day: bool = False
    stem: str = "leaderboard"  # the file's name without extension


@dataclass
class ExportFile:
    path: Path
    filename: str
    size: int


@dataclass
class ExportResult:
    files: list[ExportFile] = field(default_factory=list)
    rows: int = 0  # data rows written (without the header)
    hidden: int = 0  # members (or, per day, member-days) left out by their choice to hide
    compressed: bool = False
    raw_size: int = 0


class _Renumber:
    """Ranks without the excluded members: a raw rank minus the excluded members ahead on that
    board (board order: value descending, then user id), per day for a per-day export."""

    def __init__(self, excluded: Iterable[tuple[str | None, int, int, float]]) -> None:
        self._messages: dict[str | None, list[tuple[float, int]]] = {}
        self._voice: dict[str | None, list[tuple[float, int]]] = {}
        for day, user, messages, voice in excluded:
            if messages > 0:
                self._messages.setdefault(day, []).append((-float(messages), user))
            if voice > 0:
                self._voice.setdefault(day, []).append((-float(voice), user))
        for keys in (*self._messages.values(), *self._voice.values()):
            keys.sort()

    def ranks(self, row: ExportRow) -> tuple[int | None, int | None]:
        day, user, _, messages, voice, message_rank, voice_rank = row
        out_m = out_v = None
        if messages > 0:
            ahead = self._messages.get(day)
            out_m = message_rank - (bisect_left(ahead, (-float(messages), user)) if ahead else 0)
        if voice > 0:
            ahead = self._voice.get(day)
            out_v = voice_rank - (bisect_left(ahead, (-float(voice), user)) if ahead else 0)
        return out_m, out_v


def _write_csv(
    chunks: queue.Queue[tuple[str, list[Any]] | None],
    path: Path,
    *,
    per_day: bool,
    hidden: Collection[int],
    stopped: Collection[int],
) -> tuple[int, int]:
    """The writer thread: rows from the queue to ``path`` until the end mark. On an error it
    keeps draining the queue (the reader must never block on a full one), then raises it."""
    rows = left_out = 0
    renumber = _Renumber(())
    failure: BaseException | None = None
    out: io.TextIOWrapper | None = None
    try:
        out = path.open("w", newline="", encoding="utf-8")
        writer = csv.writer(out)
        writer.writerow(DAY_HEADER if per_day else HEADER)
    except BaseException as error:  # re-raised once the queue is drained
        failure = error
    while (item := chunks.get()) is not None:
        if failure is not None:
            continue
        kind, payload = item
        try:
            if kind == "excluded":
                renumber = _Renumber(payload)
                continue
            for row in payload:
                day, user, name, messages, voice, _, _ = row
                if user in stopped or (messages <= 0 and voice <= 0):
                    continue
                if user in hidden:
                    left_out += 1
                    continue
                message_rank, voice_rank = renumber.ranks(row)
                line = [
                    user,
                    spreadsheet_safe(name or ""),
                    messages,
                    f"{voice:.1f}",
                    message_rank or "",
                    voice_rank or "",
                ]
                writer.writerow([day, *line] if per_day else line)
                rows += 1
        except BaseException as error:  # re-raised once the queue is drained
            failure = error
    if out is not None:
        out.close()
    if failure is not None:
        raise failure
    return rows, left_out


async def write_export(
    storage: Storage,
    guild_id: int,
    spec: ExportSpec,
    directory: Path,
    *,
    hidden: Collection[int],
    stopped: Collection[int],
    limit: int,
) -> ExportResult:
    """Build the CSV of ``spec`` in ``directory`` and fit it under ``limit`` bytes per file."""
    path = directory / f"{spec.stem}.csv"
    chunks: queue.Queue[tuple[str, list[Any]] | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
    writer = asyncio.ensure_future(
        asyncio.to_thread(_write_csv, chunks, path, per_day=spec.per_day, hidden=hidden, stopped=stopped)
    )
    try:
        await storage.read(
            repository.export_rows,
            guild_id,
            scope=spec.scope,
            first_day=spec.first_day,
            last_day=spec.last_day,
            per_day=spec.per_day,
            excluded=set(hidden) | set(stopped),
            on_excluded=lambda values: chunks.put(("excluded", values)),
            emit=lambda rows: chunks.put(("rows", rows)),
        )
    finally:
        await asyncio.to_thread(chunks.put, None)  # the end mark (it may wait for room in the queue)
        rows, left_out = await writer
    result = ExportResult(rows=rows, hidden=left_out)
    await asyncio.to_thread(_fit, path, limit, result)
    return result


def _fit(path: Path, limit: int, result: ExportResult) -> None:
    """Keep ``path`` as it is, or gzip it, or split it into gzipped parts, to stay under ``limit``."""
    budget = max(1024, limit - LIMIT_MARGIN)
    size = path.stat().st_size
    result.raw_size = size
    if size <= budget:
        result.files = [ExportFile(path, path.name, size)]
        return
    result.compressed = True
    packed = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(packed, "wb", compresslevel=6) as target:
        shutil.copyfileobj(source, target)
    if packed.stat().st_size <= budget:
        result.files = [ExportFile(packed, packed.name, packed.stat().st_size)]
        return
    packed.unlink()
    result.files = [ExportFile(p, p.name, p.stat().st_size) for p in _split(path, budget)]


def _split(path: Path, budget: int) -> list[Path]:
    """Row-aligned parts of at most ``budget`` bytes of CSV each (so each gzipped part is under it
    too), each starting with the header, gzipped."""
    parts: list[Path] = []
    stem = path.name.removesuffix(".csv")
    with path.open("rb") as source:
        header = source.readline()
        part: gzip.GzipFile | None = None
        written = 0
        for line in source:
            if part is None or written + len(line) > budget:
                if part is not None:
                    part.close()
                target = path.with_name(f"{stem}.part{len(parts) + 1}.csv.gz")
                parts.append(target)
                part = gzip.open(target, "wb", compresslevel=6)  # noqa: SIM115  (closed when full)
                part.write(header)
                written = len(header)
            part.write(line)
            written += len(line)
        if part is not None:
            part.close()
    if not parts:  # only a header
        target = path.with_name(f"{stem}.part1.csv.gz")
        with gzip.open(target, "wb") as only:
            only.write(header)
        parts.append(target)
    return parts


# --------------------------------------------------------------------------- a member's own data


def member_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False).encode()


# A cell a spreadsheet would read as a formula (=HYPERLINK(...) as a member's name): OWASP's
# advice, a leading apostrophe, which spreadsheets show as text and do not display.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def member_days_csv(days: Iterable[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("day", "messages", "voice_seconds"))
    for row in days:
        writer.writerow((row["day"], row["messages"], f"{row['voice_seconds']:.1f}"))
    return out.getvalue().encode()
