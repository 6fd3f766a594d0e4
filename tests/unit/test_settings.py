"""Settings: an unknown ``FRAUDSTREAM_*`` variable is an error naming the closest setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.service.model import DEFAULT_MODEL
from fraudstream.service.settings import Settings


def test_a_misspelt_variable_is_found_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_MAX_BATCH", "10")
    assert Settings.unknown_variables() == {
        "FRAUDSTREAM_MAX_BATCH": ("10", "not a setting (did you mean FRAUDSTREAM_MAX_BATCH_SIZE?)")
    }


def test_a_misspelt_entry_in_the_env_file_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("FRAUDSTREAM_REDIS_URLL=redis://x:6379/0\n")
    monkeypatch.chdir(tmp_path)
    assert list(Settings.unknown_variables()) == ["FRAUDSTREAM_REDIS_URLL"]


def test_the_cli_refuses_to_run_in_one_line_and_config_shows_it() -> None:
    env = {"FRAUDSTREAM_MODLE": "arf"}
    result = CliRunner().invoke(main, ["schemas", "--help"], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: invalid setting FRAUDSTREAM_MODLE=arf: not a setting (did you mean "
        "FRAUDSTREAM_MODEL?); fix or unset it (environment or .env); `fraudstream config` "
        "shows every setting"
    )
    shown = CliRunner().invoke(main, ["config"], env=env)
    assert shown.exit_code == 1
    assert "FRAUDSTREAM_MODLE=arf  <- INVALID: not a setting (did you mean FRAUDSTREAM_MODEL?)" in (
        shown.output
    )
    assert f"FRAUDSTREAM_MODEL={DEFAULT_MODEL}" in shown.output
