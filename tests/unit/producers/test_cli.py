"""The producer commands without Kafka: files out, one-line errors, signals."""

from __future__ import annotations

import gzip
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner
from producer_cli import producers_cli

from fraudstream.producers.simulator import Simulation
from fraudstream.service.schemas import Label, Transaction
from fraudstream.service.settings import Settings


@pytest.fixture
def cli() -> click.Group:
    # Nothing listens here: a command that needs Kafka fails fast and clearly.
    return producers_cli(Settings(_env_file=None, bootstrap_servers="127.0.0.1:1"))


def _run(cli: click.Group, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_simulate_writes_transactions_and_delayed_labels(cli: click.Group, tmp_path: Path) -> None:
    out, labels = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl.gz"
    args = [
        "simulate",
        "--seed",
        "5",
        "--customers",
        "200",
        "--terminals",
        "400",
        "--days",
        "5",
        "--output",
        str(out),
        "--labels-output",
        str(labels),
        "--no-progress",
    ]
    code, text = _run(cli, *args)
    assert code == 0, text
    assert "transactions" in text and "fraud" in text
    tx = [Transaction.model_validate_json(line) for line in out.read_bytes().splitlines()]
    assert tx and all(t.model_extra and "is_fraud" in t.model_extra for t in tx)
    import gzip

    when = {t.transaction_id: t.timestamp for t in tx}
    lab = [
        Label.model_validate_json(line)
        for line in gzip.decompress(labels.read_bytes()).splitlines()
    ]
    assert len(lab) == len(tx)
    assert all(label.labeled_at > when[label.transaction_id] for label in lab)
    assert [x.labeled_at for x in lab] == sorted(x.labeled_at for x in lab)
    first = out.read_bytes()
    assert _run(cli, *args)[0] == 0
    assert out.read_bytes() == first  # same seed, same bytes


def test_simulate_extra_and_start(cli: click.Group, tmp_path: Path) -> None:
    out = tmp_path / "tx.jsonl"
    code, text = _run(
        cli,
        "simulate",
        "--customers",
        "100",
        "--terminals",
        "200",
        "--days",
        "3",
        "--start",
        "2024-01-01T00:00:00Z",
        "--extra",
        "card-testing",
        "-o",
        str(out),
        "--no-progress",
    )
    assert code == 0, text
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert rows[0]["timestamp"].startswith("2024-01-0")
    assert any(r["fraud_scenario"] == 4 for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--start", "yesterday-ish", "-o", "x.jsonl"], "is not a time"),
        (["simulate", "--extra", "bogus", "-o", "x.jsonl"], "bogus"),
        (["produce", "does-not-exist.csv"], "does not exist"),
        (
            ["record", "-o", "x.jsonl", "--from-time", "2024-01-01", "--from-offset", "3"],
            "not both",
        ),
    ],
)
def test_bad_arguments_give_one_line_errors(
    cli: click.Group, args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, text = _run(cli, *args)
    assert code == 2 and message in text


def test_produce_unknown_format_is_a_clear_error(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("x\n")
    code, text = _run(cli, "produce", str(path), "--no-progress")
    assert code == 1 and "--format" in text


def test_a_time_range_that_ends_before_it_starts_is_refused_before_connecting(
    cli: click.Group, tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    times = ["--from-time", "2024-02-01", "--to-time", "2024-01-01"]
    code, text = _run(cli, "record", "-o", str(out), *times, "--no-progress")
    assert code == 2, text
    assert text.strip().splitlines()[-1] == (
        "Error: Invalid value for --from-time: 2024-02-01 is not before --to-time 2024-01-01: "
        "the range holds no record"
    )
    offsets = ["--from-offset", "9", "--to-offset", "9"]
    code, text = _run(cli, "record", "-o", str(out), *offsets, "--no-progress")
    assert code == 2 and "9 is not below --to-offset 9" in text, text
    assert not out.exists()


class _SignalNotHandled(Exception):
    """The command let the signal through (it would have killed the process)."""


@pytest.fixture
def unhandled_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`_SignalNotHandled` unless a command handles it.

    So the test run is never killed by a command that does not.
    """

    def fail(signum: int, frame: object) -> None:
        raise _SignalNotHandled(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, fail)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_simulate_to_a_file_stopped_by_sigterm_leaves_a_valid_file_of_whole_lines(
    cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unhandled_sigterm: None
) -> None:
    lines_of = Simulation.to_json_lines

    def stopped_after_1000(sim: Simulation, *, ground_truth: bool = True) -> Iterator[bytes]:
        for n, line in enumerate(lines_of(sim, ground_truth=ground_truth)):
            if n == 1000:
                os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before kill returns
            yield line

    monkeypatch.setattr(Simulation, "to_json_lines", stopped_after_1000)
    out = tmp_path / "tx.jsonl.gz"
    args = ["simulate", "--customers", "100", "--terminals", "200", "--days", "10", "-o", str(out)]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])

    assert result.exit_code == 128 + signal.SIGTERM, result.output
    (line,) = result.stderr.strip().splitlines()
    said = re.fullmatch(
        rf"stopped by SIGTERM: wrote 1,000 of ([\d,]+) transactions to {re.escape(str(out))} "
        r"in [\d.]+ s \(whole lines; each file is complete up to there\)",
        line,
    )
    assert said, line
    assert int(said.group(1).replace(",", "")) > 1000
    written = gzip.decompress(out.read_bytes()).splitlines()  # a complete gzip file
    assert len(written) == 1000
    assert [orjson.loads(w)["transaction_id"] for w in written[-1:]]


def test_simulate_stopped_before_writing_writes_nothing(
    cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraudstream.producers import cli as producer_commands

    def interrupted(config: object) -> Simulation:
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("SIGINT did not stop the simulation")

    monkeypatch.setattr(producer_commands, "simulate", interrupted)
    out = tmp_path / "tx.jsonl.gz"
    result = CliRunner().invoke(cli, ["simulate", "-o", str(out), "--no-progress"])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "stopped by SIGINT: nothing was written or sent"
    assert not out.exists()


@pytest.mark.parametrize(("follow", "code"), [(False, 128 + signal.SIGTERM), (True, 0)])
def test_a_recording_stopped_by_a_signal_ends_cleanly(
    cli: click.Group,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    unhandled_sigterm: None,
    follow: bool,
    code: int,
) -> None:
    from fraudstream.producers import recorder

    def record_topic(*args: object, should_stop: Callable[[], bool], **kwargs: object) -> object:
        assert not should_stop()
        os.kill(os.getpid(), signal.SIGTERM)  # while records are being written
        assert should_stop()
        return recorder.RecordStats(records=5, partitions=1, wall_s=0.5, stopped=True)

    monkeypatch.setattr(recorder, "record_topic", record_topic)
    out = tmp_path / "r.jsonl"
    args = ["record", "-o", str(out), *(["--follow"] if follow else []), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    summary = f"stopped by SIGTERM: recorded 5 records from 1 partition(s) to {out} in 0.5 s"
    if not follow:  # the range was cut short
        summary += ", before the end of the range (the file is complete up to there)"
    assert result.stderr.strip() == summary
