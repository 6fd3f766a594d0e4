"""Reading recordings: a last line cut short (a recorder killed while writing) is said so."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from fraudstream.producers.files import FileFormatError
from fraudstream.producers.recorder import read_recording


def _line(offset: int) -> bytes:
    return orjson.dumps(
        {
            "topic": "t",
            "partition": 0,
            "offset": offset,
            "timestamp_ms": 1_700_000_000_000 + offset,
            "timestamp_type": 0,
            "key": None,
            "value": base64.b64encode(b"x" * 40).decode(),
            "headers": [],
        }
    )


def test_a_last_line_cut_short_is_named_with_the_records_before_it(tmp_path: Path) -> None:
    header = orjson.dumps({"fraudstream_recording": 1, "topic": "t"})
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join([header, *(_line(i) for i in range(3))]) + b"\n" + _line(3)[:25])
    with pytest.raises(FileFormatError) as caught:
        read_recording(path)
    assert str(caught.value) == (
        f"{path}:5: the last line is cut short (the recorder was killed while writing it); "
        "the 3 records before it are whole: remove that line to replay them"
    )


def test_a_whole_last_line_without_its_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps({"fraudstream_recording": 1}), _line(0)]))
    meta, records = read_recording(path)
    assert meta["fraudstream_recording"] == 1 and [r["offset"] for r in records] == [0]
