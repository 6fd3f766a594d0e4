"""Broken input files and an absent broker: one line naming the file, exit 1, nothing sent.

The broker address here is closed, so any error that is not about Kafka shows
that the file was refused before a connection was even tried.
"""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner, Result
from producer_cli import producers_cli

from fraudstream.service.settings import Settings

CLOSED = "127.0.0.1:1"


@pytest.fixture
def cli() -> click.Group:
    return producers_cli(Settings(_env_file=None, bootstrap_servers=CLOSED))


def _rows(n: int) -> list[dict[str, object]]:
    return [
        {
            "transaction_id": f"t{i}",
            "card_id": f"c{i % 7}",
            "terminal_id": f"m{i % 5}",
            "amount": 10 + i,
            "timestamp": f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "is_fraud": i % 50 == 0,
        }
        for i in range(n)
    ]


def _jsonl(rows: list[dict[str, object]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _error_line(result: Result) -> str:
    """The one line the command printed on stderr (asserts there is exactly one)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_csv_with_a_misspelt_column_is_refused_before_sending(
    cli: click.Group, tmp_path: Path
) -> None:
    path = tmp_path / "tx.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["transaction_id", "card_id", "terminal_id", "amount", "timestmp"])
        for r in _rows(3000):
            writer.writerow([r["transaction_id"], r["card_id"], r["terminal_id"], r["amount"],
                             r["timestamp"]])  # fmt: skip
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: {path}: the header has no timestamp column (a transaction needs "
        "transaction_id, card_id, terminal_id, amount, timestamp; the header is "
        "transaction_id, card_id, terminal_id, amount, timestmp); did you mean "
        "--map timestmp=timestamp? Nothing was sent."
    )


def test_a_json_lines_file_read_as_csv_says_so(cli: click.Group, tmp_path: Path) -> None:
    # Before, its first line was taken for a header and --map suggestions made of JSON.
    path = tmp_path / "tx.jsonl"
    path.write_bytes(_jsonl(_rows(3)))
    result = CliRunner().invoke(cli, ["produce", str(path), "--format", "csv", "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: {path}: read as CSV, but its first line is JSON, not a header: give --format "
        "jsonl (or leave --format out: it follows the file name). Nothing was sent."
    )


def test_a_json_line_that_is_not_utf8_says_so(cli: click.Group, tmp_path: Path) -> None:
    # Before: orjson's "str is not valid UTF-8: surrogates not allowed".
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_jsonl(_rows(1)).replace(b'"card_id":"', b'"card_id":"\xe9', 1))
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    assert "(line 1: not UTF-8 text (byte 0xe9 at column " in _error_line(result)
    assert "): save the file as UTF-8)" in _error_line(result)


def test_jsonl_whose_first_rows_are_all_bad_is_refused(cli: click.Group, tmp_path: Path) -> None:
    rows = [{("timestmp" if k == "timestamp" else k): v for k, v in r.items()} for r in _rows(500)]
    path = tmp_path / "tx.jsonl"
    path.write_bytes(_jsonl(rows))
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: {path}: none of the first 100 rows is a valid transaction "
        "(line 1: timestamp: Field required); nothing was sent"
    )


def test_truncated_gzip_is_refused_naming_the_last_intact_line(
    cli: click.Group, tmp_path: Path
) -> None:
    data = gzip.compress(_jsonl(_rows(20_000)))
    path = tmp_path / "tx.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    line = _error_line(result)
    assert line.startswith(f"Error: {path}: the gzip data ends early after line ")
    assert line.endswith(" (the file is truncated); nothing was sent")
    intact = int(line.split("after line ")[1].split(" ")[0].replace(",", ""))
    assert 5_000 < intact < 20_000


def test_bit_flipped_gzip_is_refused_naming_the_file(cli: click.Group, tmp_path: Path) -> None:
    data = bytearray(gzip.compress(_jsonl(_rows(5_000))))
    data[-6] ^= 0x01  # a bit of the stored CRC: every byte decompresses, the check fails
    path = tmp_path / "tx.jsonl.gz"
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    line = _error_line(result)
    assert line.startswith(f"Error: {path}: the gzip checksum does not match, so its data")
    assert line.endswith("nothing was sent")


def test_flipped_bit_in_the_compressed_data_is_refused(cli: click.Group, tmp_path: Path) -> None:
    data = bytearray(gzip.compress(_jsonl(_rows(5_000))))
    data[len(data) // 2] ^= 0x10
    path = tmp_path / "tx.jsonl.gz"
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    line = _error_line(result)
    assert line.startswith(f"Error: {path}: the gzip ") and "nothing was sent" in line


def test_file_named_gz_that_is_not_gzip_is_refused(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "tx.jsonl.gz"
    path.write_bytes(_jsonl(_rows(10)))
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: {path}: named .gz but not gzip-compressed (it starts with "
        "b'{\"transactio'); rename it without .gz, or compress it (gzip)"
    )


def test_kafka_down_is_one_fast_line(
    cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fast because it is found before any Kafka client is built (kafka-python's
    # own bootstrap retries took ~30 s): building one fails this test.
    from fraudstream.service.kafka import clients

    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Kafka client was built although nothing listens")

    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(clients, name, no_client)
    path = tmp_path / "tx.jsonl"
    path.write_bytes(_jsonl(_rows(10)))
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: Kafka at {CLOSED} is not reachable (nothing accepts connections there): "
        "is the broker running? Start a local one with `fraudstream dev up`, or set "
        "FRAUDSTREAM_BOOTSTRAP_SERVERS"
    )
    for args in (["record", "-o", str(tmp_path / "r.jsonl")], ["simulate", "--days", "1"]):
        result = CliRunner().invoke(cli, [*args, "--no-progress"])
        assert result.exit_code == 1
        assert _error_line(result).startswith(f"Error: Kafka at {CLOSED} is not reachable")


def test_simulate_output_dash_is_stdout(
    cli: click.Group, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["simulate", "--customers", "100", "--terminals", "400", "--days", "2", "-o", "-"]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and all(orjson.loads(line)["transaction_id"] for line in lines)
    assert not (tmp_path / "-").exists()
    both = CliRunner().invoke(cli, ["simulate", "-o", "-", "--labels-output", "-"])
    assert both.exit_code == 2 and "cannot both be -" in both.output


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("empty.csv", "", "a header or blank lines"),
        ("header.csv", "transaction_id,card_id,terminal_id,amount,timestamp\r\n", "a header or "
         "blank lines"),
        ("empty.jsonl", "\n\n", "blank lines"),
    ],
)  # fmt: skip
def test_a_file_without_rows_is_an_error_not_sent_0(
    cli: click.Group, tmp_path: Path, name: str, content: str, what: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = CliRunner().invoke(cli, ["produce", str(path), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: {path}: no rows to send (the file is empty, or has only {what}); nothing was sent"
    )


def test_csv_header_problems_end_with_a_full_stop_and_a_repeated_column_is_refused(
    cli: click.Group, tmp_path: Path
) -> None:
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("transaction_id;card_id;terminal_id;amount;timestamp\nt1;c1;m1;5;0\n")
    result = CliRunner().invoke(cli, ["produce", str(semicolons), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result).endswith("; rename the column(s) or use --map. Nothing was sent.")

    dup = tmp_path / "dup.csv"
    dup.write_text(
        "transaction_id,card_id,terminal_id,amount,timestamp,amount\n"
        "t1,c1,m1,5,2024-01-01T00:00:00Z,999\n"
    )
    result = CliRunner().invoke(cli, ["produce", str(dup), "--no-progress"])
    assert result.exit_code == 1
    assert _error_line(result) == (
        f"Error: {dup}: the header repeats column amount (columns 4 and 6); rename or "
        "remove one of them. Nothing was sent."
    )


@pytest.mark.parametrize(
    ("args", "closed_fd", "stream"),
    [
        (["produce", "-"], 0, "input"),
        (["replay", "-"], 0, "input"),
        (["simulate", "--customers", "5", "--terminals", "5", "--days", "1", "-o", "-"], 1,
         "output"),
        (["record", "-o", "-"], 1, "output"),
    ],
)  # fmt: skip
def test_dash_with_a_closed_standard_stream_is_one_line(
    args: list[str], closed_fd: int, stream: str
) -> None:
    # A real process: only then is sys.stdin/sys.stdout None (as after `<&-` / `>&-`).
    fraudstream = Path(sys.executable).with_name("fraudstream")
    env = {**os.environ, "FRAUDSTREAM_BOOTSTRAP_SERVERS": CLOSED}
    done = subprocess.run(
        [str(fraudstream), *args, "--no-progress"],
        preexec_fn=lambda: os.close(closed_fd),  # closes the child's fd only
        stdin=None if closed_fd == 0 else subprocess.DEVNULL,
        stdout=None if closed_fd == 1 else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"Error: standard {stream} is closed, so - ")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["simulate", "-o", "-", "--start"], "--start"),
        (["record", "-o", "-", "--from-time"], "--from-time"),
        (["record", "-o", "-", "--to-time"], "--to-time"),
    ],
)
@pytest.mark.parametrize("value", ["99999999999999999999", "253402300800000"])
def test_an_epoch_ms_out_of_range_is_a_wrong_option(
    cli: click.Group, args: list[str], option: str, value: str
) -> None:
    result = CliRunner().invoke(cli, [*args, value])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: Invalid value for {option}: {value!r} is out of range: epoch ms up to "
        "253402300799999 (9999-12-31)"
    )


@pytest.mark.parametrize(
    ("option", "given", "what", "floor"),
    [("--customers", "2", "customers", 3), ("--terminals", "1", "terminals", 2)],
)
def test_a_population_too_small_for_the_daily_frauds_names_its_option(
    cli: click.Group, option: str, given: str, what: str, floor: int
) -> None:
    result = CliRunner().invoke(cli, ["simulate", "-o", "-", option, given])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: Invalid value for {option}: {given} is too few: the simulation compromises "
        f"{floor} {what} a day; give {option} {floor} or more"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("flag", ["-o", "--labels-output"])
def test_a_failed_write_names_the_file(cli: click.Group, flag: str) -> None:
    other = "--labels-output" if flag == "-o" else "-o"
    args = ["simulate", "--customers", "50", "--terminals", "100", "--days", "1"]
    result = CliRunner().invoke(cli, [*args, flag, "/dev/full", other, os.devnull, "--no-progress"])
    assert result.exit_code == 1, result.output
    assert _error_line(result) == "Error: /dev/full: No space left on device"


def test_a_simulation_without_frauds_says_so_plainly(cli: click.Group) -> None:
    # 5 customers, 10 terminals on the 100 x 100 grid: none within reach, no transaction.
    args = ["simulate", "--customers", "5", "--terminals", "10", "--days", "1", "-o", os.devnull]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("0 transactions (0.000% fraud) written in "), result.stderr


def test_a_simulation_too_big_for_memory_is_one_line(cli: click.Group) -> None:
    args = ["simulate", "--customers", "999999999999999", "--days", "1", "-o", os.devnull]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert line.startswith("Error: not enough memory (Unable to allocate "), line
    assert line.endswith("): give fewer --customers, --terminals or --days"), line


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[1, 2]\n", "an array, not a JSON object"),
        (b'"text"\n', "a string, not a JSON object"),
        (b'{"transaction_id": "t1"}\n', "no 'topic' field"),
        (b"{not json\n", "not JSON: "),
    ],
)
def test_a_file_that_is_no_recording_says_what_is_wrong(
    cli: click.Group, tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(content)
    result = CliRunner().invoke(cli, ["replay", str(path), "--no-progress"])
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert line.startswith(f"Error: {path}:1: not a recording line ({problem}"), line
    assert line.endswith("); replay reads the files `fraudstream record` writes"), line
