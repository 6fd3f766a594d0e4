"""Reading transaction files: JSON Lines or CSV, optionally gzipped, with line numbers.

A CSV file's columns are renamed by a column mapping (``source=target``); the
:data:`HANDBOOK_MAPPING` preset reads the Fraud Detection Handbook's
simulated data. Each row becomes a :class:`ParsedRow` (the validated
Transaction JSON, its key, event time and optional label) or a
:class:`BadRowError` naming the line, so that no row is dropped silently.

Examples
--------
>>> parser = RowParser(assume_utc=True)
>>> row = parser.parse(3, {"transaction_id": 7, "card_id": "c1", "terminal_id": "t1",
...                        "amount": "12.5", "timestamp": "2018-04-01 10:00:00",
...                        "is_fraud": "1"})
>>> row.value, row.key, row.is_fraud
(b'{"transaction_id":"7","card_id":"c1","terminal_id":"t1","amount":12.5,\
"currency":"EUR","timestamp":"2018-04-01T10:00:00Z"}', b'c1', True)
>>> parser.parse(4, {"card_id": "c1"})
Traceback (most recent call last):
...
fraudstream.producers.files.BadRowError: line 4: transaction_id: Field required; \
terminal_id: Field required; amount: Field required; timestamp: Field required
"""

from __future__ import annotations

import codecs
import csv
import difflib
import gzip
import io
import re
import sys
import zlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
from pydantic import ValidationError

from fraudstream.service.errors import InvalidEventError
from fraudstream.service.schemas import Transaction, condense

#: Columns of the handbook's simulated transactions (``TX_DATETIME`` is naive UTC).
HANDBOOK_MAPPING: dict[str, str] = {
    "TRANSACTION_ID": "transaction_id",
    "TX_DATETIME": "timestamp",
    "CUSTOMER_ID": "card_id",
    "TERMINAL_ID": "terminal_id",
    "TX_AMOUNT": "amount",
    "TX_FRAUD": "is_fraud",
    "TX_FRAUD_SCENARIO": "fraud_scenario",
}

#: Ground-truth fields: read for labels or evaluation, never sent as transaction fields.
GROUND_TRUTH_FIELDS = ("is_fraud", "fraud_scenario")

_GZIP_MAGIC = b"\x1f\x8b"
_HAS_OFFSET = re.compile(r"(?:[zZ]|[+-]\d{2}:?\d{2})$")
_ID_FIELDS = ("transaction_id", "card_id", "terminal_id")
_TRUE = {"1", "true", "t", "yes", "y", "fraud"}
_FALSE = {"0", "false", "f", "no", "n", "genuine", "legit"}


class BadRowError(InvalidEventError):
    """A row of an input file that cannot be sent; the message names its line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


class FileFormatError(InvalidEventError):
    """The file as a whole cannot be read (format, encoding, missing columns)."""


class CorruptFileError(FileFormatError):
    """The file's compressed data is truncated or damaged.

    ``after_line`` is the last line read intact (0: none).
    """

    def __init__(self, message: str, after_line: int = 0) -> None:
        super().__init__(message)
        self.after_line = after_line


#: Fields a transaction must have (the others are optional or defaulted).
REQUIRED_FIELDS = tuple(
    name for name, info in Transaction.model_fields.items() if info.is_required()
)

#: Errors the gzip module raises on damaged data: a cut-short stream (EOFError),
#: a bad header or CRC (BadGzipFile), corrupt deflate data (zlib.error).
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)

#: A path of ``-`` means standard input or output.
STDIO = "-"


def is_stdio(path: Path | str) -> bool:
    """Whether ``path`` is ``-`` (standard input/output)."""
    return str(path) == STDIO


def display_name(path: Path | str) -> str:
    """``path`` as messages show it (``-`` is ``<stdin>``/``<stdout>`` in context)."""
    return "<stdin>" if is_stdio(path) else str(path)


@dataclass(frozen=True)
class ParsedRow:
    """One valid transaction read from a file."""

    line: int
    key: bytes  # card id
    value: bytes  # Transaction JSON, without ground-truth fields
    event_ms: int
    transaction_id: str
    is_fraud: bool | None  # None when the row carries no label


class StreamClosedError(FileFormatError):
    """Standard input or output was asked for (``-``) but the process has none (closed)."""


class _StdStream(io.RawIOBase):
    """A binary stream behind a prefix that was already read from it (the gzip magic).

    Reading yields ``prefix`` first, then the rest of the stream, so nothing is lost.
    ``close`` closes the underlying stream only when ``owned`` (a file opened here;
    standard input and output stay open).
    """

    def __init__(self, stream: BinaryIO, prefix: bytes = b"", *, owned: bool = False) -> None:
        self._stream = stream
        self._prefix = prefix
        self._owned = owned

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        # read1: what is there now (at most one system call), so that rows that came down
        # a pipe are handed on at once rather than when a whole buffer has filled.
        read = getattr(self._stream, "read1", self._stream.read)
        data = read(len(view))
        view[: len(data)] = data
        return len(data)

    def write(self, data: Any) -> int:
        self._stream.write(data)
        return len(data)

    def flush(self) -> None:
        # What the writer flushed goes out now (a reader at the end of a pipe sees whole
        # records as they are written, not when a buffer has filled).
        super().flush()
        if not self.closed and not self._stream.closed and self._stream.writable():
            self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            if self._owned:
                self._stream.close()
            elif self._stream.writable():
                self._stream.flush()
        super().close()


def _std_binary(name: str) -> BinaryIO:
    """``sys.stdin.buffer`` or ``sys.stdout.buffer``; :class:`StreamClosedError` if closed.

    A process started with its standard input or output closed (``<&-``,
    ``>&-``) has ``None`` there.
    """
    stream = getattr(sys, name)
    buffer = getattr(stream, "buffer", None)
    if buffer is None or buffer.closed:
        if name == "stdin":
            raise StreamClosedError(
                "standard input is closed, so - has nothing to read; give a file name, "
                "or pipe the data in (e.g. `... < file` or `cat file | ...`)"
            )
        raise StreamClosedError(
            "standard output is closed, so - cannot be written; give a file name, "
            "or run with standard output open (e.g. `... -o - > file`)"
        )
    return cast(BinaryIO, buffer)


def check_stdio(path: Path | str | None, *, output: bool) -> None:
    """Raise :class:`StreamClosedError` when ``path`` is ``-`` and that standard stream is closed.

    Commands call it before any work, so a closed stream is reported at once.
    """
    if path is not None and is_stdio(path):
        _std_binary("stdout" if output else "stdin")


def open_output(path: Path) -> BinaryIO:
    """Open ``path`` for binary writing, gzip-compressed when it ends in ``.gz``.

    ``-`` is standard output (uncompressed; pipe it through ``gzip`` if needed).

    Raises
    ------
    StreamClosedError
        ``path`` is ``-`` and standard output is closed.
    """
    if is_stdio(path):
        return cast(BinaryIO, io.BufferedWriter(_StdStream(_std_binary("stdout"))))
    path = Path(path)
    if path.suffix == ".gz":
        # Level 3: the stream is big and level 6 would triple the time for a few % of size.
        return cast(BinaryIO, gzip.open(path, "wb", compresslevel=3))
    return open(path, "wb")


def open_input(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, gunzipping when it starts with the gzip magic.

    ``-`` is standard input (gzip or not, told by its first bytes). The path is
    opened once and its first bytes are kept, so a pipe or FIFO
    (``produce <(zcat x.gz)``, ``/dev/fd/3``) is read whole, like a file. A
    file named ``.gz`` that is not gzip data is refused rather than read as text.

    Raises
    ------
    StreamClosedError
        ``path`` is ``-`` and standard input is closed.
    FileFormatError
        A ``.gz`` name on data that is not gzip.
    """
    if is_stdio(path):
        source, owned = _std_binary("stdin"), False
    else:
        source, owned = cast(BinaryIO, open(path, "rb")), True  # noqa: SIM115 (the caller closes it)
    try:
        magic = source.read(2)
        if magic != _GZIP_MAGIC and not is_stdio(path) and Path(path).suffix.lower() == ".gz":
            head = magic + source.read(10)
            raise FileFormatError(
                f"{path}: named .gz but not gzip-compressed (it starts with {head!r}); "
                f"rename it without .gz, or compress it (gzip)"
            )
    except BaseException:
        if owned:
            source.close()
        raise
    if owned and source.seekable():
        source.seek(0)  # a regular file: read it directly, without the prefix layer
        stream = source
    else:
        stream = cast(BinaryIO, io.BufferedReader(_StdStream(source, magic, owned=owned)))
    if magic != _GZIP_MAGIC:
        return stream
    return cast(BinaryIO, _GzipReader(stream, owned=owned))


class _GzipReader(gzip.GzipFile):
    """A gzip reader over an open stream that, when ``owned``, closes it as well."""

    def __init__(self, stream: BinaryIO, *, owned: bool) -> None:
        super().__init__(fileobj=stream, mode="rb")
        self._source = stream if owned else None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._source is not None:
                self._source.close()
                self._source = None


def _corrupt(path: Path, exc: BaseException, after_line: int) -> CorruptFileError:
    where = f"after line {after_line:,}" if after_line else "before the first line"
    if isinstance(exc, EOFError):
        problem = f"the gzip data ends early {where} (the file is truncated)"
    else:
        detail = str(exc).removeprefix("Error -3 while decompressing data: ")
        if "incorrect data check" in detail or "CRC check failed" in detail:
            problem = (
                f"the gzip checksum does not match, so its data is damaged "
                f"({after_line:,} lines read before the check)"
            )
        else:
            problem = f"the gzip data is corrupt {where} ({detail})"
    return CorruptFileError(f"{display_name(path)}: {problem}", after_line)


def verify_gzip(path: Path, chunk_bytes: int = 1 << 20) -> None:
    """Decompress a gzip file once without parsing it.

    Truncation or corruption is found before anything is sent (no-op for other files, for
    standard input, and for pipes and FIFOs, which can be read only once).

    zlib checks each member's CRC and length; lines are counted exactly, so the
    error names the last intact line. Costs one decompression pass (~0.3 s per
    100 MB of text).

    Raises
    ------
    CorruptFileError
        Naming the line after which the data breaks.
    """
    if is_stdio(path) or not Path(path).is_file():
        return
    with open(path, "rb") as probe:
        if probe.read(2) != _GZIP_MAGIC:
            return
    lines = 0
    member = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer, CRC checked
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                while chunk:
                    if member.eof:  # the previous member ended: another one follows
                        member = zlib.decompressobj(wbits=31)
                    # Bounded output per call, so lines are counted up to the damage.
                    lines += member.decompress(chunk, 1 << 16).count(b"\n")
                    chunk = member.unused_data if member.eof else member.unconsumed_tail
        if not member.eof:
            raise EOFError("compressed data ends before the end-of-stream marker")
    except (EOFError, zlib.error) as exc:
        raise _corrupt(path, exc, lines) from None


def json_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSON-lines file (gzipped or not), numbered from 1.

    A UTF-8 byte order mark before the first line (some Windows editors write
    one) is dropped. Damaged gzip data raises :class:`CorruptFileError` naming
    the last good line.
    """
    line_no = 0
    with open_input(path) as f:
        try:
            for line_no, line in enumerate(f, start=1):
                if line_no == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8) :]
                if line.strip():
                    yield line_no, line
        except _GZIP_ERRORS as exc:
            raise _corrupt(path, exc, line_no) from None


def detect_format(path: Path) -> str:
    """``jsonl`` or ``csv`` from the file name.

    The names are ``.jsonl``, ``.json``, ``.ndjson``, ``.csv``, each optionally followed by
    ``.gz``; standard input (``-``) is JSON Lines.

    >>> detect_format(Path("tx.csv.gz")), detect_format(Path("tx.jsonl"))
    ('csv', 'jsonl')
    """
    if is_stdio(path):
        return "jsonl"
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    last = suffixes[-1] if suffixes else ""
    if last == ".csv":
        return "csv"
    if last in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise FileFormatError(f"{path}: cannot tell the format from the name; pass --format jsonl|csv")


def read_rows(
    path: Path,
    fmt: str,
    *,
    mapping: Mapping[str, str] | None = None,
    keep_unmapped: bool = False,
) -> Generator[tuple[int, dict[str, Any] | BadRowError], None, None]:
    """Raw rows of a file with their 1-based line numbers (``close()`` closes the file).

    Parameters
    ----------
    fmt
        ``jsonl`` or ``csv``.
    mapping
        Source column -> contract field. Without one, names are kept as they
        are; with one, unmapped columns are dropped unless ``keep_unmapped``.
    """
    if fmt == "jsonl":
        yield from _read_jsonl(path, mapping, keep_unmapped)
    elif fmt == "csv":
        yield from _read_csv(path, mapping, keep_unmapped)
    else:
        raise FileFormatError(f"unknown format {fmt!r} (jsonl or csv)")


def _rename(row: dict[str, Any], mapping: Mapping[str, str] | None, keep: bool) -> dict[str, Any]:
    if not mapping:
        return row
    out = {target: row[source] for source, target in mapping.items() if source in row}
    if keep:
        for name, value in row.items():
            if name not in mapping and name not in out:
                out[name] = value
    return out


def json_line_problem(line: bytes, exc: Exception) -> str:
    r"""Why ``line`` is no JSON document (``exc``: the parser's error), said for a person.

    A line that is not UTF-8 (a file saved as Latin-1, say) is named as such:
    the JSON parser's own words for it are about surrogates.

    >>> json_line_problem(b'{"card_id": "c\xe91"}', ValueError("surrogates"))
    'not UTF-8 text (byte 0xe9 at column 15): save the file as UTF-8'
    >>> json_line_problem(b'{"card_id": ', ValueError("unexpected end of data"))
    'not valid JSON (unexpected end of data)'
    """
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"not UTF-8 text (byte 0x{line[bad.start]:02x} at column {bad.start + 1}): save the "
            "file as UTF-8"
        )
    return f"not valid JSON ({exc})"


def _read_jsonl(
    path: Path, mapping: Mapping[str, str] | None, keep: bool
) -> Iterator[tuple[int, dict[str, Any] | BadRowError]]:
    for line_no, line in json_lines(path):
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield line_no, BadRowError(line_no, json_line_problem(line, exc))
            continue
        if not isinstance(row, dict):
            yield line_no, BadRowError(line_no, "not a JSON object")
            continue
        yield line_no, _rename(row, mapping, keep)


def check_columns(
    path: Path, header: list[str], mapping: Mapping[str, str] | None, keep: bool
) -> None:
    """Refuse a CSV header that cannot give every required transaction field.

    The message names the missing fields, the header, and a close column name
    with the ``--map`` that would use it.
    """
    name = display_name(path)
    if mapping:
        missing_sources = [
            c
            for c, target in mapping.items()
            if c not in header and target not in GROUND_TRUTH_FIELDS
        ]
        if missing_sources:
            raise FileFormatError(
                f"{name}: column(s) {', '.join(missing_sources)} of the mapping are not in "
                f"the header ({', '.join(header)})"
            )
        available = set(mapping.values()) | (set(header) - set(mapping) if keep else set())
    else:
        available = set(header)
    missing = [f for f in REQUIRED_FIELDS if f not in available]
    if not missing:
        return
    if header and header[0].lstrip().startswith(("{", "[")):
        raise FileFormatError(
            f"{name}: read as CSV, but its first line is JSON, not a header: give --format "
            "jsonl (or leave --format out: it follows the file name). Nothing was sent."
        )
    hints = []
    unused = [h for h in header if h not in available and h not in (mapping or {})] or header
    for field_name in missing:
        close = difflib.get_close_matches(field_name, unused, n=1, cutoff=0.6)
        if close:
            hints.append(f"--map {close[0]}={field_name}")
    hint = f"; did you mean {' '.join(hints)}?" if hints else "; rename the column(s) or use --map."
    raise FileFormatError(
        f"{name}: the header has no {', '.join(missing)} column (a transaction needs "
        f"{', '.join(REQUIRED_FIELDS)}; the header is {', '.join(header)}){hint} "
        "Nothing was sent."
    )


def check_unique_columns(path: Path, header: list[str]) -> None:
    """Refuse a CSV header that names a column twice (which cell would be meant is unclear).

    >>> check_unique_columns(Path("t.csv"), ["id", "amount", "card", "amount"])
    Traceback (most recent call last):
    ...
    fraudstream.producers.files.FileFormatError: t.csv: the header repeats column amount \
(columns 2 and 4); rename or remove one of them. Nothing was sent.
    """
    first_at: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if name in first_at:
            raise FileFormatError(
                f"{display_name(path)}: the header repeats column {name} (columns "
                f"{first_at[name]} and {number}); rename or remove one of them. Nothing was sent."
            )
        first_at[name] = number


def _read_csv(
    path: Path, mapping: Mapping[str, str] | None, keep: bool
) -> Iterator[tuple[int, dict[str, Any] | BadRowError]]:
    # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is not part of the first column's name.
    with (
        open_input(path) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text,
    ):
        reader = csv.reader(text)
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            check_unique_columns(path, header)
            check_columns(path, header, mapping, keep)
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield reader.line_num, BadRowError(reader.line_num, f"CSV error ({exc})")
                    continue
                line_no = reader.line_num  # last physical line of the row
                if not fields:
                    continue
                if len(fields) != len(header):
                    yield (
                        line_no,
                        BadRowError(line_no, f"{len(fields)} fields, the header has {len(header)}"),
                    )
                    continue
                yield line_no, _rename(dict(zip(header, fields, strict=True)), mapping, keep)
        except UnicodeDecodeError as exc:
            raise FileFormatError(
                f"{display_name(path)}: not UTF-8 text near line {reader.line_num + 1}"
            ) from exc
        except _GZIP_ERRORS as exc:
            raise _corrupt(path, exc, reader.line_num) from None


class RowParser:
    """Turns a raw row into a :class:`ParsedRow`, or raises :class:`BadRowError`.

    Parameters
    ----------
    assume_utc
        Read timestamps without an offset (the handbook's ``2018-04-01 00:00:31``)
        as UTC; otherwise they are bad rows.
    label_field
        Field holding the fraud verdict (default ``is_fraud``); removed from
        the transaction sent.
    """

    def __init__(self, *, assume_utc: bool = False, label_field: str = "is_fraud") -> None:
        self.assume_utc = assume_utc
        self.label_field = label_field
        self._drop = {*GROUND_TRUTH_FIELDS, label_field}

    def parse(self, line: int, raw: Mapping[str, Any]) -> ParsedRow:
        """Validate one row against the Transaction contract."""
        label = _parse_bool(raw.get(self.label_field), line, self.label_field)
        tx = {k: v for k, v in raw.items() if k not in self._drop}
        for name in _ID_FIELDS:
            value = tx.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                tx[name] = str(value)
        stamp = tx.get("timestamp")
        if isinstance(stamp, str):
            text = stamp.strip()
            if text.isdigit():
                tx["timestamp"] = int(text)
            elif self.assume_utc and not _HAS_OFFSET.search(text) and len(text) > 10:
                tx["timestamp"] = text + "Z"
        for name in ("lat", "lon", "merchant_category", "channel", "country"):
            if tx.get(name) == "":  # an empty CSV cell means "not given"
                tx[name] = None
        for name in ("amount", "lat", "lon"):
            if name in tx:  # CSV cells are text; the contract wants JSON numbers
                tx[name] = _number(tx[name])
        try:
            model = Transaction.model_validate(tx)
        except ValidationError as exc:
            raise BadRowError(line, condense(exc, whole="row")) from None
        value = orjson.dumps(model.model_dump(mode="json", exclude_none=True))
        return ParsedRow(
            line=line,
            key=model.card_id.encode(),
            value=value,
            event_ms=model.event_time_ms,
            transaction_id=model.transaction_id,
            is_fraud=label,
        )


def _number(value: Any) -> Any:
    """A number from a CSV cell (``"12.5"`` -> ``12.5``); anything else unchanged.

    >>> _number("12.5"), _number(" 3 "), _number("lots"), _number(7)
    (12.5, 3.0, 'lots', 7)
    """
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _parse_bool(value: Any, line: int, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise BadRowError(line, f"{name}: {value!r} is not a boolean (0/1, true/false)")
