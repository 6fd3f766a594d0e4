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
