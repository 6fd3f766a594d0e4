"""The producer commands without Kafka: files out, one-line errors."""

from __future__ import annotations

from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from fraudstream.producers.cli import COMMANDS
from fraudstream.service.schemas import Label, Transaction
from fraudstream.service.settings import Settings


@pytest.fixture
def cli() -> click.Group:
    @click.group()
    @click.pass_context
    def main(ctx: click.Context) -> None:
        # Nothing listens here: a command that needs Kafka fails fast and clearly.
        ctx.obj = Settings(_env_file=None, bootstrap_servers="127.0.0.1:1")

    for command in COMMANDS:
        main.add_command(command)
    return main


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
