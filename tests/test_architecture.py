"""The import graph's rules: no cycles, and nothing under services/ or db/ depends on Discord or the bot."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "leaderboard_bot"
IMPORT_GRAPH_TOOL = PACKAGE.parents[1] / "shared" / "tools" / "import_graph.py"
FORBIDDEN_BELOW_SERVICES = ("disnake", "leaderboard_bot.bot", "leaderboard_bot.exts", "leaderboard_bot.ui")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, with relative imports made absolute (TYPE_CHECKING ones too)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    "path", sorted([*PACKAGE.glob("services/*.py"), *PACKAGE.glob("db/*.py"), PACKAGE / "domain.py"]), ids=str
)
def test_services_db_and_domain_never_import_discord_the_bot_or_extensions(path: Path) -> None:
    bad = sorted(
        name for name in _imports(path) for forbidden in FORBIDDEN_BELOW_SERVICES
        if name == forbidden or name.startswith(forbidden + ".")
    )  # fmt: skip
    assert bad == [], f"{_module_name(path)} imports {bad}"


def test_every_module_says_its_one_job_on_its_first_line() -> None:
    missing = [
        _module_name(path)
        for path in PACKAGE.rglob("*.py")
        if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    ]
    assert missing == []


@pytest.mark.skipif(not IMPORT_GRAPH_TOOL.is_file(), reason=f"{IMPORT_GRAPH_TOOL} is not beside the project")
def test_the_import_graph_has_no_cycles() -> None:
    result = subprocess.run(
        [sys.executable, str(IMPORT_GRAPH_TOOL), str(PACKAGE.parent), "leaderboard_bot"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip().splitlines()[-1] == "cycles=0 services_disnake=0 services_bot=0", result.stdout
