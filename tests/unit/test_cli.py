"""The ``fraudstream`` group: invalid settings, the config view of them, log format.

Also the one-line errors of commands that are refused before they connect
(``state rebuild --since``), and Redis errors naming the server actually used.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
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


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on (bound, never listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


#: Servers nothing answers on: a refused rebuild must not get as far as connecting.
_NOWHERE = {
    "FRAUDSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    "FRAUDSTREAM_REDIS_URL": "redis://127.0.0.1:1/0",
}


@pytest.mark.parametrize("when", ["tomorrow", "2999-01-01T00:00:00Z"])
def test_state_rebuild_since_the_future_is_refused(when: str) -> None:
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    since = tomorrow if when == "tomorrow" else when
    result = CliRunner().invoke(main, ["state", "rebuild", "--since", since], env=_NOWHERE)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: --since {since} is in the future (now is ")
    assert "give a past time" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("since", ["1969-12-31", "0001-01-01", "1969-12-31T23:59:59.999Z"])
def test_state_rebuild_since_before_1970_is_refused(since: str) -> None:
    result = CliRunner().invoke(
        main, ["state", "rebuild", "--force", "--since", since], env=_NOWHERE
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: --since {since} is before 1970-01-01, where Kafka's timestamps start: give a "
        "time from 1970-01-01 on (or leave --since out for the default)"
    )


def test_a_redis_error_names_the_server_given_not_the_setting(
    tmp_path: Path, closed_port: int
) -> None:
    stream = tmp_path / "tx.jsonl"
    stream.write_text(
        "".join(
            json.dumps(
                {
                    "transaction_id": f"t{i}",
                    "timestamp": f"2018-04-01T0{i}:00:00Z",
                    "card_id": "C1",
                    "terminal_id": "T1",
                    "amount": 10.0 + i,
                    "is_fraud": False,
                }
            )
            + "\n"
            for i in range(3)
        )
    )
    given = f"redis://127.0.0.1:{closed_port}/0"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(stream),
            "--no-progress",
            "--bootstrap",
            "0",
            "--models",
            "logreg",
            "--warmup-days",
            "0",  # a day of transactions to assess: the replay runs, and meets the Redis
            "--redis-url",
            given,
        ],
        env={"FRAUDSTREAM_REDIS_URL": "redis://:secret@192.0.2.1:6379/0"},
    )
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: Redis at {given} is not reachable ("), result.output
    assert "192.0.2.1" not in result.output and "secret" not in result.output


def test_a_redis_error_of_the_configured_server_names_it_as_configured(closed_port: int) -> None:
    from fraudstream.cli import redis_error_message
    from fraudstream.service.settings import Settings

    settings = Settings(_env_file=None, redis_url=f"redis://:pw@127.0.0.1:{closed_port}")
    with pytest.raises(redis.RedisError) as error:
        redis.Redis.from_url(settings.redis_url.get_secret_value()).ping()
    assert redis_error_message(error.value, settings).startswith(
        f"Redis at redis://:***@127.0.0.1:{closed_port} is not reachable ("
    )
    other = Settings(_env_file=None, redis_url="redis://:pw@192.0.2.1:6379/0")
    assert redis_error_message(error.value, other).startswith(
        f"Redis at redis://:***@127.0.0.1:{closed_port}/0 is not reachable ("
    )


@pytest.mark.parametrize("command", [["schemas", "--output-dir", "x"], ["config"]])
def test_an_env_file_that_is_not_utf8_is_one_line_naming_it(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(
        b"FRAUDSTREAM_LOG_LEVEL=INFO\n# r\xe9seau (Latin-1)\nFRAUDSTREAM_REDIS_PREFIX=x\n"
    )
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == (
        f"Error: {tmp_path / '.env'} is not UTF-8 text (byte 0xe9 on line 2): save it as UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`) or fix that line"
    )
    assert not (tmp_path / "x").exists()


def test_state_rebuild_since_that_is_no_time_names_the_option() -> None:
    result = CliRunner().invoke(main, ["state", "rebuild", "--since", "junk"], env=_NOWHERE)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: Invalid value for --since: 'junk' is not an ISO date or time (e.g. 2026-11-01 "
        "or 2026-11-01T12:00:00Z)"
    )


def test_schemas_into_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    folder = blocker / "schemas"  # under a file: no one, not even root, can make it
    result = CliRunner().invoke(main, ["schemas", "--output-dir", str(folder)], env=_NOWHERE)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: cannot write the schemas to {folder}: Not a directory; give a writable "
        "--output-dir"
    )
