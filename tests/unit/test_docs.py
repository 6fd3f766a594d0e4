"""The docs and deployment files agree with the code."""

from __future__ import annotations

from pathlib import Path

import yaml
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


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_docker_compose_uses_only_real_settings_and_has_healthchecks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    known = {f"FRAUDSTREAM_{name.upper()}" for name in Settings.model_fields}
    services = compose["services"]
    assert {"kafka", "redis", "fraudstream", "simulator"} <= set(services)
    for name, service in services.items():
        for variable in service.get("environment") or {}:
            if variable.startswith("FRAUDSTREAM_"):
                assert variable in known, f"{name}: unknown setting {variable}"
    for name in ("kafka", "redis", "fraudstream"):
        assert "healthcheck" in services[name], name


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
