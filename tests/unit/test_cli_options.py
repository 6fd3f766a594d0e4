"""Option values refused before a command runs: topic names Kafka would refuse, NaN numbers.

Each is one ``Error:`` line naming the option, exit status 2, through the real
``fraudstream`` command. The broker address is closed: a value that got through
would end in a connection error (exit status 1) instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fraudstream.cli import main

ENV = {"FRAUDSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def _refusal(args: list[str]) -> str:
    """The error line of a command refused as a wrong option (exit status 2)."""
    result = CliRunner().invoke(main, args, env=ENV)
    assert result.exit_code == 2, result.output
    return result.output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "command",
    [
        ["produce", "{file}"],
        ["record", "-o", "{out}"],
        ["replay", "{file}"],
        ["alerts", "tail"],
    ],
)
def test_every_topic_option_refuses_a_name_kafka_would_refuse(
    command: list[str], tmp_path: Path
) -> None:
    file = tmp_path / "tx.jsonl"
    file.write_text("{}\n")
    args = [a.format(file=file, out=tmp_path / "r.jsonl") for a in command]
    assert _refusal([*args, "--topic", "bad!topic"]) == (
        "Error: Invalid value for '--topic': 'bad!topic' is not a Kafka topic name: use 1 to "
        "249 letters, digits, '.', '_' or '-'"
    )
    assert _refusal([*args, "--topic", ".."]) == (
        "Error: Invalid value for '--topic': '..' is not a Kafka topic name: '.' and '..' are "
        "reserved"
    )


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-1", "2"])
def test_min_score_is_a_number_from_0_to_1(value: str) -> None:
    line = _refusal(["alerts", "tail", "--min-score", value])
    assert line.startswith("Error: Invalid value for '--min-score': "), line
    assert line.endswith("0.0<=x<=1.0.") or line.endswith("(give one in 0.0<=x<=1.0)."), line


def test_no_number_option_takes_nan(tmp_path: Path) -> None:
    file = tmp_path / "tx.jsonl"
    file.write_text("{}\n")
    assert _refusal(["produce", str(file), "--speed", "nan"]) == (
        "Error: Invalid value for '--speed': nan is not a number (give one in x>=0)."
    )
    assert _refusal(["alerts", "tail", "--idle-timeout", "nan"]).startswith(
        "Error: Invalid value for '--idle-timeout': nan is not a number"
    )


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["simulate", "-o", "-"], "--label-delay-days"),
        (["evaluate", "--simulate"], "--label-delay-days"),
        (["alerts", "tail"], "--idle-timeout"),
        (["status"], "--interval"),
        (["bench", "pipeline"], "--latency-seconds"),
    ],
)
def test_a_range_open_above_refuses_infinity(command: list[str], option: str) -> None:
    line = _refusal([*command, option, "inf"])
    assert line.startswith(f"Error: Invalid value for '{option}': inf is not a finite number"), line


def test_speed_takes_infinity_as_fast_as_possible(tmp_path: Path) -> None:
    out = tmp_path / "tx.jsonl"
    args = ["simulate", "--customers", "50", "--terminals", "100", "--days", "1", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--speed", "inf", "--no-progress"], env=ENV)
    assert result.exit_code == 0, result.output
    assert out.read_text().count("\n") > 0


@pytest.mark.parametrize(
    "command",
    [
        ["simulate", "-o", "-"],
        ["produce", "{file}"],
        ["evaluate", "--simulate"],
        ["bench", "pipeline"],
    ],
)
def test_every_seed_is_a_whole_number_from_0(command: list[str], tmp_path: Path) -> None:
    file = tmp_path / "tx.jsonl"
    file.write_text("{}\n")
    args = [a.format(file=file) for a in command]
    assert _refusal([*args, "--seed", "-1"]) == (
        "Error: Invalid value for '--seed': -1 is not in the range x>=0."
    )


def test_nan_is_refused_by_the_bench_options_too() -> None:
    assert _refusal(["bench", "hot-card", "--hot-share", "nan"]) == (
        "Error: Invalid value for '--hot-share': nan is not a number (give one in 0.0<=x<=1.0)."
    )


@pytest.mark.parametrize(
    "command", [["bench", "pipeline"], ["bench", "hot-card"], ["evaluate", "--simulate"]]
)
def test_a_redis_url_option_is_checked_as_the_setting_is(command: list[str]) -> None:
    assert _refusal([*command, "--redis-url", "junk"]) == (
        "Error: Invalid value for '--redis-url': 'junk' is not a Redis URL: it must start with "
        "redis://, rediss:// (TLS) or unix://"
    )
    assert _refusal([*command, "--redis-url", "redis://:secret@h:99999/0"]) == (
        "Error: Invalid value for '--redis-url': 'redis://:***@h:99999/0': the port '99999' is "
        "not a whole number from 1 to 65535 (redis://host:port/db)"
    )


@pytest.mark.parametrize("command", [["bench", "pipeline"], ["evaluate", "--simulate"]])
def test_a_bootstrap_servers_option_is_checked_as_the_setting_is(command: list[str]) -> None:
    assert _refusal([*command, "--bootstrap-servers", "::::"]) == (
        "Error: Invalid value for '--bootstrap-servers': '::::': port '' is not a whole number "
        "from 1 to 65535 (write host:port, comma separated)"
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["dev", "status", "--kafka-port", "0"],
            "Error: Invalid value for '--kafka-port': 0 is not in the range 1<=x<=65535.",
        ),
        (
            ["dev", "up", "--redis-port", "99999"],
            "Error: Invalid value for '--redis-port': 99999 is not in the range 1<=x<=65535.",
        ),
        (
            ["demo", "--speed", "nan"],
            "Error: Invalid value for '--speed': nan is not a number (give one in x>=0).",
        ),
        (
            ["demo", "--seed", "-5"],
            "Error: Invalid value for '--seed': -5 is not in the range x>=0.",
        ),
        (["demo", "--days", "0"], "Error: Invalid value for '--days': 0 is not in the range x>=1."),
        (
            ["demo", "--customers", "2"],
            "Error: Invalid value for --customers: 2 is too few: the simulation compromises 3 "
            "customers a day; give --customers 3 or more",
        ),
    ],
)
def test_the_dev_stack_refuses_wrong_numbers_before_starting_anything(
    args: list[str], line: str, tmp_path: Path
) -> None:
    assert _refusal([*args, "--home", str(tmp_path / "dev")]) == line
