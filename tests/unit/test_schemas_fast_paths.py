"""The event-time fast paths of :mod:`fraudstream.service.schemas` change no outcome.

A timestamp string of the usual shape (``_UTC_TIME``) is parsed by
``datetime.fromisoformat`` instead of pydantic, and an event time already in UTC
skips the conversion of ``_require_aware_utc``. Every record here, hostile ones
included, must validate to the same transaction (same fields, digest, event time)
or fail with the same dead-letter reason as with the fast path switched off.
"""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from hostile_corpus import corpus
from pydantic import TypeAdapter, ValidationError
from pydantic_core import TzInfo

from fraudstream.service import schemas
from fraudstream.service.pipeline import BatchValidation, validate_records
from fraudstream.service.schemas import Label, Transaction, _require_aware_utc

#: Strings of the fast path's shape at every edge of a calendar and of the accepted range.
SHAPED = [
    "2018-04-01T01:27:09Z",
    "2018-04-01T01:27:09.9Z",
    "2018-04-01T01:27:09.903Z",
    "2018-04-01T01:27:09.123456Z",
    "2000-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999999Z",
    "2099-12-31T23:59:59.999999Z",
    "2100-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "0999-06-15T12:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "2016-02-29T00:00:00Z",
    "2018-02-29T00:00:00Z",
    "2018-04-31T00:00:00Z",
    "2018-00-10T00:00:00Z",
    "2018-13-10T00:00:00Z",
    "2018-04-00T00:00:00Z",
    "2018-04-01T24:00:00Z",
    "2018-04-01T23:60:00Z",
    "2018-04-01T23:59:60Z",
    "2018-04-01T99:99:99Z",
]

#: Near misses of the shape, and other forms of time: left to pydantic as before.
OTHERS: list[Any] = [
    "2018-04-01T01:27:09.1234567Z",
    "2018-04-01T01:27:09,5Z",
    "2018-04-01t01:27:09Z",
    "2018-04-01T01:27:09z",
    "2018-04-01 01:27:09Z",
    " 2018-04-01T01:27:09Z",
    "2018-04-01T01:27:09Z ",
    "20180401T012709Z",
    "2018-W13-7T01:27:09Z",
    "2018-04-01T01:27Z",
    "2018-04-01T01:27:09",
    "2018-04-01",
    "2018-04-01T01:27:09+00:00",
    "2018-04-01T03:27:09+02:00",
    "2018-03-31T20:27:09-05:00",
    "2018-04-01T01:27:09.5-00:30",
    "2018-04-01T01:27:09+14:00",
    "2099-12-31T23:59:59+23:59",
    "2000-01-01T00:30:00+01:00",
    "\u0662\u0660\u0661\u0668-04-01T01:27:09Z",  # Arabic-Indic digits
    "\uff12\uff10\uff11\uff18-04-01T01:27:09Z",  # fullwidth digits
    "1522540800000",
    "1522540800000.5",
    "-1522540800000",
    "",
    "Z",
    1522540800000,
    1522540800000.4,
    1522540800000.5,
    -1,
    0,
    946684800000,
    946684799999,
    4102444800000,
    4102444799999.999,
    10**30,
    -(10**20),
    1e300,
    True,
    None,
    [],
    {"at": 1},
]


#: What :func:`validate_records` returns: transactions, their indices, failures.
Validated = tuple[list[Transaction], list[int], list[tuple[int, Exception]]]


def _outcomes(values: list[bytes]) -> list[tuple[Any, ...]]:
    """What :func:`validate_records` makes of each value: the transaction, or the reason."""
    records = [SimpleNamespace(value=value) for value in values]
    # Alone (each record's own outcome) and as one batch (the one-call fast path).
    alone: list[Validated] = [validate_records([record], 1 << 20) for record in records]
    together: Validated = validate_records(records, 1 << 20)
    out: list[tuple[Any, ...]] = []
    for (txs, _, failures), value in zip(alone, values, strict=True):
        if txs:
            tx = txs[0]
            out.append(
                (
                    "ok",
                    tx.model_dump(),
                    tx.model_dump_json(),
                    tx.timestamp.tzinfo is UTC,
                    tx.timestamp.fold,
                    tx.event_time_ms,
                    tx.content_digest,
                )
            )
        else:
            (_, error), *_ = failures
            out.append(("failed", type(error).__name__, str(error), value))
    txs, indices, failures = together
    out.append(("batch", [t.model_dump_json() for t in txs], indices))
    out.append(("batch failures", [(i, type(e).__name__, str(e)) for i, e in failures]))
    return out


def _values() -> list[bytes]:
    """The hostile corpus, then one transaction per timestamp above (unicode ids among them)."""
    values = [case.value or b"" for case in corpus(max_message_bytes=1 << 20)]
    for i, stamp in enumerate(SHAPED + OTHERS):
        document = {
            "transaction_id": f"tx-é-日本-{i}",
            "card_id": "carte-🙂",
            "terminal_id": "T\u00a01",
            "amount": 12.5,
            "timestamp": stamp,
        }
        values.append(json.dumps(document, ensure_ascii=False).encode())
    return values


def test_the_fast_path_changes_no_transaction_and_no_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = _values()
    fast = _outcomes(values)
    assert sum(o[0] == "ok" for o in fast) >= 20, "the corpus scores too little to compare"
    monkeypatch.setattr(schemas, "_UTC_TIME", re.compile(r"(?!)"))  # matches nothing
    assert _outcomes(values) == fast


@pytest.mark.parametrize("stamp", SHAPED)
def test_a_shaped_string_is_read_as_pydantic_reads_it(stamp: str) -> None:
    fast = schemas._parse_event_time(stamp)
    try:
        slow: object = TypeAdapter(datetime).validate_python(stamp).astimezone(UTC)
    except ValidationError:
        slow = stamp  # pydantic refuses it: the fast path must leave it to pydantic
    assert fast == slow
    if isinstance(fast, datetime):
        assert fast.tzinfo is UTC and fast.fold == 0


def test_a_label_time_takes_the_same_paths() -> None:
    document = {"transaction_id": "t", "is_fraud": True, "labeled_at": "2018-04-01T01:27:09.9Z"}
    label = Label.model_validate_json(json.dumps(document))
    assert label.labeled_at == datetime(2018, 4, 1, 1, 27, 9, 900000, tzinfo=UTC)
    assert label.labeled_at.tzinfo is UTC


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2000, 1, 1),
        datetime(2018, 4, 1, 1, 27, 9, 903000),
        datetime(2099, 12, 31, 23, 59, 59, 999999),
        datetime(1999, 12, 31, 23, 59, 59, 999999),
        datetime(2100, 1, 1),
        datetime(2018, 4, 1, fold=1),
        datetime(1, 1, 1),
    ],
)
def test_a_utc_time_is_checked_as_any_other_offset_zero_time(moment: datetime) -> None:
    """UTC itself (the fast path) and pydantic's offset-zero zone (the conversion) agree."""

    def outcome(value: datetime) -> tuple[str, object]:
        try:
            checked = _require_aware_utc(value)
        except ValueError as exc:
            return ("error", str(exc))
        assert checked.tzinfo is UTC
        return ("ok", (checked, checked.isoformat()))

    fast = outcome(moment.replace(tzinfo=UTC))
    assert fast == outcome(moment.replace(tzinfo=TzInfo(0)))
    assert fast == outcome(moment.replace(tzinfo=timezone(timedelta(0), "Z")))


def test_a_transaction_from_epoch_milliseconds_is_unchanged() -> None:
    tx = Transaction(
        transaction_id="t", card_id="c", terminal_id="m", amount=1, timestamp=1522540800123
    )
    assert tx.timestamp == datetime(2018, 4, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert tx.timestamp.tzinfo is UTC and tx.event_time_ms == 1522540800123


def _verdicts(values: list[bytes], expect_bad: bool = False) -> list[tuple[Any, ...]]:
    """Each value's verdict when validated as one batch: its transaction, or its reason."""
    records = [SimpleNamespace(value=v) for v in values]
    txs: list[Transaction]
    txs, indices, failures = validate_records(records, 1 << 20, expect_bad=expect_bad)
    verdicts: dict[int, tuple[Any, ...]] = {
        i: ("ok", tx.model_dump_json(), tx.content_digest)
        for tx, i in zip(txs, indices, strict=True)
    }
    verdicts.update({i: ("failed", type(e).__name__, str(e)) for i, e in failures})
    return [verdicts[i] for i in range(len(values))]


@pytest.mark.parametrize("expect_bad", [False, True])
def test_a_record_is_judged_alike_alone_among_good_records_and_among_bad_ones(
    expect_bad: bool,
) -> None:
    """Good records of a batch with bad ones are kept from one call: the verdicts stay.

    Each value of the hostile corpus and of the timestamp lists alone, between
    two good transactions, and in one shuffled batch of them all; with the
    strict call first and with the tolerant call at once.
    """
    values = _values()
    alone = [_verdicts([v])[0] for v in values]
    good = values[alone.index(next(v for v in alone if v[0] == "ok"))]
    assert [_verdicts([good, v, good], expect_bad)[1] for v in values] == alone
    order = list(range(len(values)))
    random.Random(7).shuffle(order)
    shuffled = _verdicts([values[k] for k in order], expect_bad)
    assert [shuffled[order.index(k)] for k in range(len(values))] == alone
    assert sum(v[0] == "failed" for v in alone) >= 20, "too few bad records to mix"


def test_after_a_bad_record_a_stream_expects_more_for_a_few_batches() -> None:
    good = (
        b'{"transaction_id":"t1","card_id":"c","terminal_id":"m","amount":3,'
        b'"timestamp":"2024-01-01T00:00:00Z"}'
    )
    validation = BatchValidation()
    clean = [SimpleNamespace(value=good)]
    bad = [SimpleNamespace(value=good), SimpleNamespace(value=b'{"transaction_id": "t"}')]
    assert not validation.expect_bad
    validation(clean, 1 << 20)
    assert not validation.expect_bad
    txs: list[Transaction]
    txs, indices, failures = validation(bad, 1 << 20)
    assert (len(txs), indices, [i for i, _ in failures]) == (1, [0], [1])
    for _ in range(BatchValidation.BATCHES):
        assert validation.expect_bad
        validation(clean, 1 << 20)
    assert not validation.expect_bad
