"""The docs and deployment files agree with the code."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.service.cli import settings_table
from fraudstream.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table:start -->\n") + len("<!-- settings-table:start -->\n")
    end = readme.index("<!-- settings-table:end -->")
    assert readme[start:end].strip() == settings_table().strip(), (
        "README's settings table is stale: paste `fraudstream config --markdown` into it"
    )


def _module_table(readme: str) -> set[str]:
    """The paths the README's module table names (its first column)."""
    start = readme.index("| Module | Concept |")
    rows = readme[start:].split("\n\n", 1)[0].splitlines()[2:]
    return {p for row in rows for p in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def test_readme_module_table_matches_the_service_tree() -> None:
    named = _module_table((ROOT / "README.md").read_text())
    assert all((ROOT / path).exists() for path in named), sorted(
        p for p in named if not (ROOT / p).exists()
    )
    service = ROOT / "service"
    modules = {f"service/{p.name}" for p in service.glob("*.py") if p.name != "__init__.py"}
    packages = {f"service/{p.name}/" for p in service.iterdir() if (p / "__init__.py").exists()}
    assert sorted((modules | packages) - named) == [], "modules missing from the README table"


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "exec make test" in ci


def test_schemas_command_writes_every_schema(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "alert.schema.json",
        "label.schema.json",
        "score.schema.json",
        "transaction.schema.json",
    ]


def test_readme_shows_the_dashboard_picture_and_the_tested_examples() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "![fraudstream dashboard](docs/dashboard.png)" in readme
    assert (ROOT / "docs" / "dashboard.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        "make dashboard-picture" in readme
        and "dashboard-picture:" in (ROOT / "Makefile").read_text()
    )
    case_queue = (ROOT / "examples" / "case_queue.py").read_text()
    for snippet in ("INSERT OR IGNORE", 'isolation_level="read_committed"', "consumer.commit()"):
        assert snippet in readme.replace("'", '"') or snippet in readme, snippet
        assert snippet in case_queue, snippet
    assert (ROOT / "examples" / "embedding" / "service" / "__init__.py").exists()
