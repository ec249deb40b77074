"""The /privacy extension's pure parts: date ranges from the export options, and the summary."""

from __future__ import annotations

from pathlib import Path

from leaderboard_bot.exts.privacy import _export_summary, parse_range
from leaderboard_bot.services.exports import ExportFile, ExportResult


def test_a_date_range_needs_both_days_in_order_and_in_iso_form() -> None:
    assert parse_range("2026-01-01", " 2026-01-31 ") == ("2026-01-01", "2026-01-31")
    assert parse_range("2026-01-05", "2026-01-05") == ("2026-01-05", "2026-01-05")
    assert "needs both" in str(parse_range("2026-01-01", None))
    assert "needs both" in str(parse_range(None, "2026-01-01"))
    assert "YYYY-MM-DD" in str(parse_range("01/02/2026", "2026-01-31"))
    assert "YYYY-MM-DD" in str(parse_range("2026-02-30", "2026-03-01"))
    assert "swap" in str(parse_range("2026-02-01", "2026-01-01"))


def test_the_summary_counts_rows_and_hidden_members_and_says_how_the_file_was_fitted() -> None:
    files = [ExportFile(Path("a"), "a.csv", 10)]
    plain = _export_summary("season 3", ExportResult(files=files, rows=1), 10 * 1024 * 1024)
    assert plain.startswith("**Season 3**: 1 row.") and "hide" not in plain and "MiB" not in plain
    hidden = _export_summary("the last 7 days", ExportResult(files=files, rows=1234, hidden=2), 1 << 20)
    assert "1,234 rows" in hidden and "2 members who chose to hide are left out" in hidden
    parts = [ExportFile(Path(f"p{i}"), f"p{i}.csv.gz", 5) for i in range(3)]
    split = _export_summary("all time", ExportResult(files=parts, rows=9, compressed=True), 25 * 1024 * 1024)
    assert "25 MiB upload limit, so split into 3 gzipped parts" in split
    one = _export_summary("today", ExportResult(files=parts[:1], rows=9, hidden=1, compressed=True), 1 << 20)
    assert "1 member who chose to hide is left out" in one and "so gzipped" in one
