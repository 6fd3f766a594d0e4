"""Settings: an unknown ``FRAUDSTREAM_*`` variable is an error naming the closest setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from fraudstream.cli import main
from fraudstream.service.settings import Settings


def test_a_misspelt_variable_is_an_error_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAUDSTREAM_MAX_BATCH", "10")
    with pytest.raises(ValidationError, match="did you mean FRAUDSTREAM_MAX_BATCH_SIZE"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_a_misspelt_entry_in_the_env_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FRAUDSTREAM_REDIS_URLL=redis://x:6379/0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="FRAUDSTREAM_REDIS_URLL is not a setting"):
        Settings()


def test_the_cli_says_it_in_one_line_and_exits_non_zero() -> None:
    result = CliRunner().invoke(main, ["schemas", "--help"], env={"FRAUDSTREAM_MODLE": "arf"})
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: FRAUDSTREAM_MODLE is not a setting (did you mean FRAUDSTREAM_MODEL?) "
        "(`fraudstream config` lists the settings)"
    )
