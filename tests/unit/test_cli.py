"""The ``fraudstream`` group: invalid settings, the config view of them, log format."""

from __future__ import annotations

import io
import json
import logging

from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.service.logs import configure_logging


def test_invalid_setting_is_one_line_naming_it_and_exit_1() -> None:
    result = CliRunner().invoke(main, ["schemas"], env={"FRAUDSTREAM_ALERT_THRESHOLD": "2"})
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: invalid setting FRAUDSTREAM_ALERT_THRESHOLD=2: ")
    assert "less than or equal to 1" in lines[0] and "`fraudstream config`" in lines[0]


def test_config_still_shows_everything_and_marks_invalid_settings() -> None:
    env = {"FRAUDSTREAM_ALERT_THRESHOLD": "2", "FRAUDSTREAM_TOPIC_PARTITIONS": "six"}
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 1
    out = result.output
    assert "FRAUDSTREAM_BOOTSTRAP_SERVERS=" in out and "FRAUDSTREAM_LOG_FORMAT=text" in out
    invalid = "<- INVALID: Input should be less than or equal to 1"
    assert f"FRAUDSTREAM_ALERT_THRESHOLD=2  {invalid}" in out
    assert "FRAUDSTREAM_TOPIC_PARTITIONS=six  <- INVALID: Input should be a valid integer" in out
    assert out.strip().splitlines()[-1] == (
        "Error: 2 invalid setting(s): FRAUDSTREAM_TOPIC_PARTITIONS, FRAUDSTREAM_ALERT_THRESHOLD; "
        "fix or unset them (environment or .env) before running other commands"
    )


def test_invalid_log_level_is_a_setting_error_too() -> None:
    result = CliRunner().invoke(main, ["schemas"], env={"FRAUDSTREAM_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 1
    assert result.output.startswith("Error: invalid setting FRAUDSTREAM_LOG_LEVEL=LOUD: should be")
    shown = CliRunner().invoke(main, ["config"], env={"FRAUDSTREAM_LOG_LEVEL": "LOUD"})
    assert shown.exit_code == 1 and "FRAUDSTREAM_LOG_LEVEL=LOUD  <- INVALID" in shown.output


def test_json_logs_are_one_object_per_line_with_the_traceback_inside() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        log = logging.getLogger("fraudstream.test")
        log.info("assigned %s", ["transactions[0]"], extra={"role": "scorer"})
        log.debug("not shown")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("scorer stopped")
    finally:
        configure_logging("INFO", "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "assigned ['transactions[0]']" and first["role"] == "scorer"
    assert first["level"] == "INFO" and first["logger"] == "fraudstream.test" and first["ts"]
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exception"]
