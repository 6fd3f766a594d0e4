"""File readers: JSONL/CSV/gzip, column mapping, bad rows with line numbers."""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from fraudstream.producers.files import (
    HANDBOOK_MAPPING,
    BadRowError,
    FileFormatError,
    ParsedRow,
    RowParser,
    StreamClosedError,
    detect_format,
    open_input,
    open_output,
    read_rows,
    verify_gzip,
)

HANDBOOK_CSV = """\
TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO
0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,0
1,2018-04-01 00:02:10,4961,3412,81.51,130,0,1,2
2,2018-04-01 00:07:56,2,1365,not-a-number,476,0,0,0
3,2018-04-01 00:09:29,4128,8737,15.10,569
"""


def _parse_all(
    path: Path, fmt: str, mapping: Mapping[str, str] | None = None, assume_utc: bool = False
) -> list[ParsedRow | BadRowError]:
    parser = RowParser(assume_utc=assume_utc)
    out: list[ParsedRow | BadRowError] = []
    for line, raw in read_rows(path, fmt, mapping=mapping):
        if isinstance(raw, BadRowError):
            out.append(raw)
            continue
        try:
            out.append(parser.parse(line, raw))
        except BadRowError as exc:
            out.append(exc)
    return out


@pytest.mark.parametrize("gz", [False, True])
def test_handbook_csv_with_mapping(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("tx.csv.gz" if gz else "tx.csv")
    data = HANDBOOK_CSV.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    assert detect_format(path) == "csv"
    rows = _parse_all(path, "csv", mapping=HANDBOOK_MAPPING, assume_utc=True)
    good = [r for r in rows if not isinstance(r, BadRowError)]
    bad = [r for r in rows if isinstance(r, BadRowError)]
    assert [r.transaction_id for r in good] == ["0", "1"]
    assert [r.is_fraud for r in good] == [False, True]
    first = orjson.loads(good[0].value)
    assert first == {
        "transaction_id": "0",
        "card_id": "596",
        "terminal_id": "3156",
        "amount": 57.16,
        "currency": "EUR",
        "timestamp": "2018-04-01T00:00:31Z",
    }
    assert good[0].event_ms == 1522540831000
    assert [(e.line, e.reason.split(":")[0]) for e in bad] == [
        (4, "amount"),
        (5, "6 fields, the header has 9"),
    ]


def test_naive_timestamp_is_a_bad_row_unless_assume_utc(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    path.write_text(HANDBOOK_CSV)
    rows = _parse_all(path, "csv", mapping=HANDBOOK_MAPPING)
    assert isinstance(rows[0], BadRowError) and "timezone" in rows[0].reason


def test_missing_mapped_column_fails_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tx.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(FileFormatError, match="TRANSACTION_ID"):
        list(read_rows(path, "csv", mapping=HANDBOOK_MAPPING))


def test_jsonl_bad_lines_are_numbered(tmp_path: Path) -> None:
    lines = [
        b'{"transaction_id": "a", "card_id": "c", "terminal_id": "t", "amount": 1,'
        b' "timestamp": 1522540800000, "is_fraud": true, "fraud_scenario": 1, "mcc": "5411"}',
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"transaction_id": "b", "card_id": "c", "terminal_id": "t", "amount": -1,'
        b' "timestamp": "2018-04-01T00:00:00Z"}',
        b'{"transaction_id": "c", "card_id": "c", "terminal_id": "t", "amount": 2,'
        b' "timestamp": "2018-04-01T00:00:00Z", "is_fraud": "maybe"}',
    ]
    path = tmp_path / "tx.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = _parse_all(path, "jsonl")
    assert not isinstance(rows[0], BadRowError)
    sent = orjson.loads(rows[0].value)
    assert "is_fraud" not in sent and "fraud_scenario" not in sent and sent["mcc"] == "5411"
    assert rows[0].is_fraud is True
    bad = [(r.line, r.reason) for r in rows[1:] if isinstance(r, BadRowError)]
    assert [line for line, _ in bad] == [3, 4, 5, 6]
    assert "not valid JSON" in bad[0][1] and "not a JSON object" in bad[1][1]
    assert bad[2][1].startswith("amount:") and "not a boolean" in bad[3][1]


def test_unknown_suffix_needs_a_format() -> None:
    with pytest.raises(FileFormatError, match="--format"):
        detect_format(Path("data.txt"))


_TX_ROWS = [
    {
        "transaction_id": f"p{i}",
        "card_id": f"c{i % 3}",
        "terminal_id": "m1",
        "amount": 10 + i,
        "timestamp": f"2024-01-01T00:00:{i:02d}Z",
    }
    for i in range(50)
]
_TX_JSONL = b"".join(orjson.dumps(r) + b"\n" for r in _TX_ROWS)


def _feed(path: str, data: bytes) -> threading.Thread:
    """Write ``data`` to ``path`` (a FIFO or a pipe's /dev/fd) from a thread, in small pieces."""

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), open(path, "wb") as out:
            for start in range(0, len(data), 700):
                out.write(data[start : start + 700])
                out.flush()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(20)
@pytest.mark.parametrize("gz", [False, True])
def test_a_fifo_is_read_once_and_whole(tmp_path: Path, gz: bool) -> None:
    fifo = tmp_path / "feed.jsonl"
    os.mkfifo(fifo)
    writer = _feed(str(fifo), gzip.compress(_TX_JSONL) if gz else _TX_JSONL)
    rows = list(read_rows(fifo, "jsonl"))
    writer.join(5)
    assert [line for line, _ in rows] == list(range(1, 51))
    assert [raw for _, raw in rows] == _TX_ROWS


@pytest.mark.timeout(20)
def test_a_pipe_given_as_dev_fd_is_read_once_and_whole() -> None:
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), os.fdopen(write_fd, "wb") as out:
            for start in range(0, len(_TX_JSONL), 700):
                out.write(_TX_JSONL[start : start + 700])
                out.flush()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        rows = list(read_rows(Path(f"/dev/fd/{read_fd}"), "jsonl"))  # as bash's <(...) gives
        writer.join(5)
    finally:
        os.close(read_fd)
    assert [raw for _, raw in rows] == _TX_ROWS


def test_a_pipe_is_not_probed_for_gzip_damage(tmp_path: Path) -> None:
    fifo = tmp_path / "feed.jsonl.gz"
    os.mkfifo(fifo)
    verify_gzip(fifo)  # returns at once: opening the FIFO would wait for a writer


def test_a_utf8_bom_is_not_part_of_the_first_column_or_row(tmp_path: Path) -> None:
    csv_path = tmp_path / "excel.csv"
    csv_path.write_bytes(
        b"\xef\xbb\xbftransaction_id,card_id,terminal_id,amount,timestamp\r\n"
        b"t1,c1,m1,12.5,2024-01-01T00:00:00Z\r\n"
    )
    jsonl_path = tmp_path / "notepad.jsonl"
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + _TX_JSONL)
    assert list(read_rows(csv_path, "csv")) == [
        (
            2,
            {
                "transaction_id": "t1",
                "card_id": "c1",
                "terminal_id": "m1",
                "amount": "12.5",
                "timestamp": "2024-01-01T00:00:00Z",
            },
        )
    ]
    assert [raw for _, raw in read_rows(jsonl_path, "jsonl")] == _TX_ROWS


def test_a_csv_header_that_repeats_a_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text(
        "transaction_id,card_id,terminal_id,amount,timestamp,amount\n"
        "t1,c1,m1,12.5,2024-01-01T00:00:00Z,999\n"
    )
    with pytest.raises(FileFormatError) as caught:
        list(read_rows(path, "csv"))
    assert str(caught.value) == (
        f"{path}: the header repeats column amount (columns 4 and 6); rename or remove one "
        "of them. Nothing was sent."
    )


def test_closed_standard_streams_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(StreamClosedError, match=r"^standard input is closed, so - has nothing"):
        open_input(Path("-"))
    with pytest.raises(StreamClosedError, match=r"^standard output is closed, so - cannot be"):
        open_output(Path("-"))
