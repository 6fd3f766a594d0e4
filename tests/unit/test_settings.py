"""Settings: unknown variables, and values that would only fail later, are clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

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


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        (
            "bootstrap_servers",
            "127.0.0.1:19392,bogus::x",
            "'bogus::x': port 'x' is not a whole number from 1 to 65535",
        ),
        ("bootstrap_servers", "", "no server given (write host:port, comma separated)"),
        ("bootstrap_servers", "a:9092,", "an empty entry in 'a:9092,'"),
        ("bootstrap_servers", "kafka:0", "'kafka:0': port '0' is not a whole number"),
        ("bootstrap_servers", "[::1:9092", "an IPv6 address is written [address]"),
        (
            "redis_url",
            "redis://127.0.0.1:notaport/0",
            "the port 'notaport' is not a whole number from 1 to 65535",
        ),
        ("redis_url", "redis://h:1/abc", "the database 'abc' is not a whole number"),
        ("redis_url", "redis://h:0/0", "the port 0 is not one Redis listens on"),
        ("redis_url", "unix://", "a unix:// URL needs the path of the socket"),
        ("topic_alerts", "bad!topic", "'bad!topic' is not a Kafka topic name"),
        ("topic_transactions", "", "'' is not a Kafka topic name"),
        ("topic_scores", "..", "'..' is not a Kafka topic name: '.' and '..' are reserved"),
        ("topic_labels_dlq", "x" * 250, "is not a Kafka topic name: use 1 to 249"),
    ],
)
def test_a_setting_that_would_end_in_a_traceback_is_invalid(
    setting: str, value: str, problem: str
) -> None:
    values: dict[str, Any] = {setting: value}
    with pytest.raises(ValidationError) as error:
        Settings(_env_file=None, **values)
    assert problem in str(error.value)
    variable = f"FRAUDSTREAM_{setting.upper()}"
    result = CliRunner().invoke(main, ["schemas", "--help"], env={variable: value})
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: invalid setting {variable}=")
    assert problem in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("output", "source"),
    [
        ("topic_alerts", "topic_transactions"),
        ("topic_scores", "topic_transactions"),
        ("topic_transactions_dlq", "topic_transactions"),
        ("topic_alerts", "topic_labels"),
        ("topic_labels_dlq", "topic_labels"),
    ],
)
def test_an_output_topic_that_is_an_input_topic_is_refused(output: str, source: str) -> None:
    values: dict[str, Any] = {source: "loop-tx", output: "loop-tx"}
    with pytest.raises(ValidationError, match="the service would read what it writes"):
        Settings(_env_file=None, **values)
    env = {f"FRAUDSTREAM_{source.upper()}": "loop-tx", f"FRAUDSTREAM_{output.upper()}": "loop-tx"}
    shown = CliRunner().invoke(main, ["config"], env=env)
    assert shown.exit_code == 1
    assert (
        f"FRAUDSTREAM_{output.upper()}=loop-tx  <- INVALID: FRAUDSTREAM_{output.upper()} is "
        f"FRAUDSTREAM_{source.upper()} ('loop-tx'): the service would read what it writes"
    ) in shown.output


def test_labels_and_transactions_on_one_topic_are_refused() -> None:
    with pytest.raises(ValidationError, match="labels and transactions need topics of their own"):
        Settings(_env_file=None, topic_transactions="events", topic_labels="events")


@pytest.mark.parametrize(
    ("stream", "other"),
    [
        ("topic_alerts", "topic_scores"),
        ("topic_alerts", "topic_transactions_dlq"),
        ("topic_alerts", "topic_labels_dlq"),
        ("topic_scores", "topic_transactions_dlq"),
        ("topic_scores", "topic_labels_dlq"),
    ],
)
def test_alerts_or_scores_sharing_a_topic_with_another_output_are_refused(
    stream: str, other: str
) -> None:
    kind = stream.removeprefix("topic_")
    with pytest.raises(ValidationError) as refused:
        values: dict[str, Any] = {stream: "out", other: "out"}
        Settings(_env_file=None, **values)
    assert (
        f"FRAUDSTREAM_{other.upper()} is FRAUDSTREAM_{stream.upper()} ('out'): "
        f"{kind[:-1]} readers would take its records for {kind}; give it a topic of its own"
    ) in str(refused.value)


def test_the_dead_letter_topics_may_be_one_topic() -> None:
    Settings(_env_file=None, topic_transactions_dlq="dead", topic_labels_dlq="dead")


def test_the_learner_in_the_scorers_group_is_refused() -> None:
    result = CliRunner().invoke(
        main, ["status"], env={"FRAUDSTREAM_LEARNER_GROUP": "fraudstream-scorer"}
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: invalid setting FRAUDSTREAM_LEARNER_GROUP=fraudstream-scorer: "
        "FRAUDSTREAM_LEARNER_GROUP and FRAUDSTREAM_CONSUMER_GROUP are both "
        "'fraudstream-scorer': the learner and the scorers need groups of their own"
    )


def test_usual_values_stay_valid() -> None:
    Settings(_env_file=None)
    Settings(
        _env_file=None,
        # docker-compose.yml's service environment
        bootstrap_servers="kafka:9092",
        redis_url="redis://redis:6379/0",
        metrics_host="0.0.0.0",
    )
    Settings(
        _env_file=None,
        bootstrap_servers=" b1:9096, b2 ,[::1]:9093,::1,SASL_SSL://b3.example.com:9094",
        redis_url="rediss://app:pw@[::1]:6380/15?socket_timeout=5",
        topic_transactions="tx_in.v2-eu",
        topic_alerts="A" * 249,
    )
    Settings(_env_file=None, redis_url="unix:///run/redis.sock?db=2")
    Settings(_env_file=None, redis_url="redis://h:6379")


@pytest.mark.parametrize(
    ("value", "hint"),
    [("arf", ""), ("logreg_undr", "did you mean 'logreg_under'? ")],
)
def test_a_model_not_in_the_catalogue_is_refused_before_anything_runs(
    value: str, hint: str
) -> None:
    # Before, the service connected to Kafka and Redis and its learner and
    # scorer then died with a KeyError traceback each (on a fresh registry).
    result = CliRunner().invoke(main, ["serve"], env={"FRAUDSTREAM_MODEL": value})
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: invalid setting FRAUDSTREAM_MODEL={value}: unknown model {value!r}: {hint}one "
        "of forest_logreg, forest, logreg, logreg_plain, logreg_under (`fraudstream model "
        "catalogue` describes them); fix or unset it (environment or .env); `fraudstream "
        "config` shows every setting"
    )
