"""Owners' exports (services.exports) against a real Storage: the rows, ranks renumbered without the
members who chose to hide (only counted) or stop (absent), per-day rows, and files over the limit."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from leaderboard_bot.db import Storage, repository
from leaderboard_bot.domain import ALL_TIME, ActivityBatch
from leaderboard_bot.services.exports import (
    DAY_HEADER,
    HEADER,
    ExportSpec,
    member_days_csv,
    member_json,
    write_export,
)
from tests.factories import MIDNIGHT, open_storage

G = 5151
A, B, C, D, E = (510000000000000000 + n for n in range(1, 6))


async def write(storage: Storage, day: str, messages: dict[int, int], voice: dict[int, float] | None = None) -> None:
    batch = ActivityBatch(
        guild_id=G,
        season=1,
        heartbeat_at=MIDNIGHT,
        messages={(day, u): n for u, n in messages.items()},
        voice={(day, u): s for u, s in (voice or {}).items()},
        names={A: ("Ann", "ann"), B: ("Bo, \"the\" best", "bo"), C: ("Cy", "cy")},
        today=day,
    )
    await storage.run(repository.apply_batch, batch)


def read_csv(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return list(csv.reader(io.StringIO(data.decode())))


async def test_a_season_export_renumbers_without_hidden_members_and_leaves_stopped_ones_out(tmp_path: Path) -> None:
    async with open_storage(f"sqlite:///{tmp_path}/e.db") as storage:
        await write(storage, "2024-03-10", {A: 9, B: 7, C: 5, D: 3}, {B: 100.0, D: 50.0, E: 10.0})
        spec = ExportSpec(1, "2024-03-10", "2024-03-10", stem="season-1")
        result = await write_export(storage, G, spec, tmp_path, hidden={A}, stopped={C}, limit=10 * 1024 * 1024)
        assert result.hidden == 1 and result.rows == 3 and not result.compressed
        assert [f.filename for f in result.files] == ["season-1.csv"]
        assert read_csv(result.files[0].path) == [
            list(HEADER),
            [str(B), 'Bo, "the" best', "7", "100.0", "1", "1"],  # Ann (hidden) had 9: Bo moves up
            [str(D), "", "3", "50.0", "2", "2"],  # no stored name: empty
            [str(E), "", "0", "10.0", "", "3"],  # no messages: no message rank
        ]


async def test_a_name_a_spreadsheet_would_run_as_a_formula_is_exported_as_text(tmp_path: Path) -> None:
    names = {
        A: '=HYPERLINK("http://evil.example","x")',
        B: "+cmd|' /C calc'!A0",
        C: "-2+3",
        D: "@SUM(A1:A9)",
        E: "Zo\u00eb = fine",
    }
    async with open_storage(f"sqlite:///{tmp_path}/e.db") as storage:
        batch = ActivityBatch(
            guild_id=G, season=1, heartbeat_at=MIDNIGHT, messages={("2024-03-10", u): 1 for u in names},
            names={u: (n, None) for u, n in names.items()}, today="2024-03-10",
        )  # fmt: skip
        await storage.run(repository.apply_batch, batch)
        spec = ExportSpec(1, "2024-03-10", "2024-03-10", stem="season-1")
        result = await write_export(storage, G, spec, tmp_path, hidden=set(), stopped=set(), limit=10 * 1024 * 1024)
        shown = {int(row[0]): row[1] for row in read_csv(result.files[0].path)[1:]}
    assert shown == {user: ("'" + name if user != E else name) for user, name in names.items()}


async def test_windows_date_ranges_and_per_day_rows(tmp_path: Path) -> None:
    async with open_storage(f"sqlite:///{tmp_path}/e.db") as storage:
        await write(storage, "2024-03-09", {A: 1, B: 4})
        await write(storage, "2024-03-10", {A: 5, B: 1, C: 2})
        everything = await write_export(
            storage, G, ExportSpec(ALL_TIME.scope, "2024-03-09", "2024-03-10"), tmp_path, hidden=(), stopped=(),
            limit=1 << 20,
        )  # fmt: skip
        assert [r[:3] for r in read_csv(everything.files[0].path)[1:]] == [[str(A), "Ann", "6"], [str(B), "Bo, \"the\" best", "5"], [str(C), "Cy", "2"]]  # noqa: E501
        one_day = await write_export(
            storage, G, ExportSpec(None, "2024-03-09", "2024-03-09", stem="range"), tmp_path, hidden=(), stopped=(),
            limit=1 << 20,
        )  # fmt: skip
        assert [(r[0], r[2], r[4]) for r in read_csv(one_day.files[0].path)[1:]] == [(str(B), "4", "1"), (str(A), "1", "2")]  # noqa: E501
        per_day = await write_export(
            storage, G, ExportSpec(None, "2024-03-09", "2024-03-10", per_day=True, stem="days"), tmp_path,
            hidden={A}, stopped=(), limit=1 << 20,
        )  # fmt: skip
        rows = read_csv(per_day.files[0].path)
        assert rows[0] == list(DAY_HEADER)
        assert [(r[0], r[1], r[3], r[5]) for r in rows[1:]] == [
            ("2024-03-09", str(B), "4", "1"),
            ("2024-03-10", str(C), "2", "1"),  # Ann (hidden) led that day: renumbered per day
            ("2024-03-10", str(B), "1", "2"),
        ]
        assert per_day.hidden == 2  # Ann's two days


async def test_a_file_over_the_limit_is_gzipped_then_split_into_parts(tmp_path: Path) -> None:
    async with open_storage(f"sqlite:///{tmp_path}/e.db") as storage:
        many = {510000000000100000 + n: n for n in range(1, 3001)}
        await write(storage, "2024-03-10", many)
        spec = ExportSpec(1, "2024-03-10", "2024-03-10", stem="big")
        (tmp_path / "a").mkdir()
        whole = await write_export(storage, G, spec, tmp_path / "a", hidden=(), stopped=(), limit=1 << 20)
        assert not whole.compressed and whole.rows == 3000
        raw = whole.raw_size
        (tmp_path / "b").mkdir()
        packed = await write_export(
            storage, G, spec, tmp_path / "b", hidden=(), stopped=(), limit=raw // 2 + 64 * 1024
        )
        assert packed.compressed and [f.filename for f in packed.files] == ["big.csv.gz"]
        assert read_csv(packed.files[0].path) == read_csv(whole.files[0].path)
        (tmp_path / "c").mkdir()
        split = await write_export(storage, G, spec, tmp_path / "c", hidden=(), stopped=(), limit=64 * 1024 + 20_000)
        assert split.compressed and len(split.files) > 1
        assert all(f.size <= 20_000 for f in split.files)
        parts = [read_csv(f.path) for f in split.files]
        assert all(p[0] == list(HEADER) for p in parts)
        assert [r for p in parts for r in p[1:]] == read_csv(whole.files[0].path)[1:]  # every row once, in order


async def test_a_failing_query_neither_hangs_nor_leaves_the_writer_waiting(tmp_path: Path) -> None:
    async with open_storage(f"sqlite:///{tmp_path}/e.db") as storage:
        await write(storage, "2024-03-10", {A: 1})
        spec = ExportSpec(1, "2024-03-10", "2024-03-10")
        bad_dir = tmp_path / "missing" / "dir"  # the writer cannot open its file: it still drains
        try:
            await write_export(storage, G, spec, bad_dir, hidden=(), stopped=(), limit=1 << 20)
        except FileNotFoundError:
            pass
        else:
            raise AssertionError("expected the writer's error")


def test_a_members_files_are_json_and_a_csv_per_day() -> None:
    data = {"days": [{"day": "2024-03-10", "messages": 3, "voice_seconds": 12.25}], "name": "Ä"}
    assert b'"name": "\xc3\x84"' in member_json(data)
    assert member_days_csv(data["days"]).decode().splitlines() == ["day,messages,voice_seconds", "2024-03-10,3,12.2"]
