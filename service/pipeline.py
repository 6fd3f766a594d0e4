"""One batch of transactions, from consumed bytes to alerts: the scorer's path.

Follow a batch top to bottom in :meth:`Pipeline.process`:

1. **validate** every record (size, UTF-8 JSON, the :class:`Transaction`
   contract) — the whole batch in one pydantic call, then only the bad
   records alone, each for its reason; bad records become
   :class:`DeadLetter` s with their original bytes;
2. **features** for the whole batch in one Redis round trip, as of each
   transaction's own event time, counting each transaction id once; the same
   call claims each id with its content (a store without that, e.g. the
   reference store, has the snapshot store claim them first), and an id seen
   before with other content is dead-lettered instead of counted;
3. **score** with the active scorer (the learnt model, or the rules prior
   until the model has learnt enough), vectorised over the batch;
4. **decide** (threshold or daily alert budget) and build reasons for alerts only;
5. **snapshot** the features each transaction was scored with, for the learner;
6. return the records to produce (alerts, optional scores, dead letters).

Kafka stays outside: the caller polls, produces what this returns, flushes and
then commits (see :mod:`fraudstream.service.checkpoint`). That keeps this module testable
with in-memory doubles and the ordering guarantee in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from fraudstream.service.alerts import DecisionPolicy, encode_score_record
from fraudstream.service.deadletter import DEFAULT_MAX_BYTES as DEFAULT_DEAD_LETTER_BYTES
from fraudstream.service.deadletter import DeadLetter
from fraudstream.service.errors import (
    DecodeError,
    EventTimeAheadError,
    IdConflictError,
    OversizeEventError,
    UnprocessableEventError,
    ValidationFailedError,
    is_dependency_error,
)
from fraudstream.service.features.store import FeatureBatch, FeatureStore
from fraudstream.service.model import BatchScorer
from fraudstream.service.schemas import Reason, Scorer, Transaction, batch_adapter, condense
from fraudstream.service.snapshots import CLAIM_CONFLICT

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger(__name__)

#: JSON names of the types a JSON document decodes to.
_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class ConsumedRecord(Protocol):
    """The parts of a kafka-python ``ConsumerRecord`` the pipeline reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class UnreadableRecord:
    """Stands in a batch for records the consumer could not read (a damaged batch in the log).

    Its ``value`` is the bytes that could not be read, ``offset`` the first of
    them; validation makes it a dead letter of ``error``, like a bad event.
    """

    topic: str
    partition: int
    offset: int
    value: bytes | None
    error: Exception
    timestamp: int = -1
    timestamp_type: int = 0
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class SnapshotWriter(Protocol):
    """Stores what each transaction was scored with (see :mod:`fraudstream.service.snapshots`)."""

    def claim_many_ids(self, transactions: Sequence[Transaction]) -> np.ndarray:
        """Claim each transaction id with its content: new, replay or conflict per row."""
        ...

    def put_many(
        self,
        transactions: Sequence[Transaction],
        X: np.ndarray,
        scores: np.ndarray,
        model_version: int,
        feature_names: Sequence[str],
        keep_existing: np.ndarray | None = None,
    ) -> None:
        """Store each row's features and score for the label path."""
        ...


@dataclass(frozen=True, slots=True)
class ActiveScorer:
    """The scorer in use and what alerts say about it."""

    scorer: BatchScorer
    kind: Scorer
    version: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class BatchOutcome:
    """What one batch produced, for the caller to send and for metrics."""

    outgoing: list[Outgoing] = field(default_factory=list)
    scored: int = 0
    duplicates: int = 0
    alerts: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scorer_kind: Scorer = "rules"
    #: Transactions whose record key is not their card id, and one of them described.
    not_keyed_by_card: int = 0
    not_keyed_example: str = ""


def _utc(ms: float) -> str:
    """Epoch milliseconds as an RFC 3339 UTC time.

    >>> _utc(1_700_000_000_000)
    '2023-11-14T22:13:20Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def not_keyed_by_card(
    records: Sequence[ConsumedRecord], transactions: Sequence[Transaction], indices: Sequence[int]
) -> tuple[int, str]:
    """How many transactions came in a record whose key is not their card id, and one described.

    The contract is key = card id: a card's transactions then share a partition,
    are read in order and by one scorer. Keyed otherwise (a transaction id, no
    key), they are still scored and counted once, but a card's transactions may
    be spread over partitions, read out of their order and by several scorers at
    once.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> records = [R(topic="tx", key=b"c1", partition=0, offset=7)]
    >>> records.append(R(topic="tx", key=b"t9", partition=2, offset=5))
    >>> not_keyed_by_card(records, [R(card_id="c1"), R(card_id="c2")], [0, 1])
    (1, "tx[2]@5: key b't9', card 'c2'")
    >>> not_keyed_by_card(records[:1], [R(card_id="c1")], [0])
    (0, '')
    >>> records = [R(topic="tx", key=b"k" * 1000, partition=0, offset=1)]
    >>> not_keyed_by_card(records, [R(card_id="c1")], [0])[1]
    "tx[0]@1: key b'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk'..., card 'c1'"
    """
    count, example = 0, ""
    for tx, i in zip(transactions, indices, strict=True):
        key = records[i].key
        if key is None or key != tx.card_id.encode():
            if not count:
                record = records[i]
                where = f"{record.topic}[{record.partition}]@{record.offset}"
                shown = repr(key[:40]) + ("..." if len(key) > 40 else "") if key else repr(key)
                example = f"{where}: key {shown}, card {tx.card_id!r}"
            count += 1
    return count, example


def refuse_ahead(
    records: Sequence[ConsumedRecord],
    transactions: list[Transaction],
    indices: list[int],
    max_ahead_ms: int,
) -> tuple[list[Transaction], list[int], list[tuple[int, Exception]]]:
    """Transactions whose event time is more than ``max_ahead_ms`` after their record's timestamp.

    Counted, one transaction dated years ahead (a terminal's clock, a unit
    mistake) would move its card's newest event there: every real transaction
    after it older than the retention before that date, too late, and the
    card's windows empty until then. The record's Kafka timestamp (the
    producer's clock, or the broker's) is the reference, not this process's
    clock, so a replay or a state rebuild decides the same. ``0``: no limit;
    a record without a timestamp (negative) is not checked.

    Returns the kept transactions and indices, and ``(index, error)`` for the others.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> day = 86_400_000
    >>> txs = [R(event_time_ms=5 * day), R(event_time_ms=9 * day)]
    >>> kept, idx, bad = refuse_ahead([R(timestamp=day), R(timestamp=day)], txs, [0, 1], 7 * day)
    >>> idx, [(i, type(e).__name__) for i, e in bad]
    ([0], [(1, 'EventTimeAheadError')])
    """
    if not max_ahead_ms:
        return transactions, indices, []
    kept: list[Transaction] = []
    kept_indices: list[int] = []
    refused: list[tuple[int, Exception]] = []
    for tx, i in zip(transactions, indices, strict=True):
        at = records[i].timestamp
        if at >= 0 and tx.event_time_ms - at > max_ahead_ms:
            ahead_h = (tx.event_time_ms - at) / 3_600_000
            refused.append(
                (
                    i,
                    EventTimeAheadError(
                        f"event time {_utc(tx.event_time_ms)} is {ahead_h:,.1f} h after its "
                        f"record's timestamp {_utc(at)}, more than max_event_ahead_s="
                        f"{max_ahead_ms // 1000} allows (a clock or unit mistake)"
                    ),
                )
            )
        else:
            kept.append(tx)
            kept_indices.append(i)
    return kept, kept_indices, refused


def validate_records(
    records: Sequence[ConsumedRecord],
    max_bytes: int,
    model: type[M] = Transaction,  # type: ignore[assignment]
    *,
    expect_bad: bool = False,
) -> tuple[list[M], list[int], list[tuple[int, Exception]]]:
    """Validate a batch against ``model``; return messages, their record indices, failures.

    The fast path validates all values in one pydantic call over a JSON array
    built from the raw bytes. When a record is bad the call is made again with
    the tolerant adapter (:func:`~fraudstream.service.schemas.batch_adapter`:
    a bad record comes back as its JSON value instead of failing the call), and
    only the bad records are then validated one at a time, which gives each
    its reason. ``expect_bad`` (bad records came lately: :class:`BatchValidation`)
    goes to the tolerant call at once. A value that is not one JSON document
    breaks the array (or, holding several, its count): those are found with
    ``orjson`` and the rest validated in one call again.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> ok = b'{"transaction_id":"t1","card_id":"c","terminal_id":"m","amount":3,'
    >>> ok += b'"timestamp":"2024-01-01T00:00:00Z"}'
    >>> txs, idx, bad = validate_records([R(value=ok), R(value=b"{oops")], 1024)
    >>> [t.transaction_id for t in txs], idx, [type(e).__name__ for _, e in bad]
    (['t1'], [0], ['DecodeError'])
    """
    candidates, failures = _screen(records, max_bytes)
    if not candidates:
        return [], [], failures
    values = [records[i].value or b"" for i in candidates]
    items = _validate_joined(values, model, strict_first=not expect_bad)
    if items is not None and set(map(type, items)) == {model}:
        return items, candidates, failures  # the whole batch is good: the usual case
    if items is None:
        documents = [k for k, value in enumerate(values) if _is_one_document(value)]
        items = [None] * len(values)
        some = _validate_joined([values[k] for k in documents], model, strict_first=False)
        if some is not None:
            for k, item in zip(documents, some, strict=True):
                items[k] = item
    messages: list[M] = []
    indices: list[int] = []
    for i, value, item in zip(candidates, values, items, strict=True):
        if not isinstance(item, model):
            item = _validate_one(value, model)
            if isinstance(item, Exception):
                failures.append((i, item))
                continue
        messages.append(item)
        indices.append(i)
    failures.sort(key=lambda failure: failure[0])
    return messages, indices, failures


def _screen(
    records: Sequence[ConsumedRecord], max_bytes: int
) -> tuple[list[int], list[tuple[int, Exception]]]:
    """Indices of the records worth parsing, and the failures of the rest (empty, too big, unread).

    >>> from types import SimpleNamespace as R
    >>> candidates, failures = _screen([R(value=b"{}"), R(value=b" "), R(value=b"x" * 9)], 8)
    >>> candidates, [(i, type(e).__name__) for i, e in failures]
    ([0], [(1, 'DecodeError'), (2, 'OversizeEventError')])
    """
    failures: list[tuple[int, Exception]] = []
    candidates: list[int] = []
    for i, record in enumerate(records):
        value = record.value
        if type(record) is UnreadableRecord:
            failures.append((i, record.error))
        elif value is None or not value.strip():
            failures.append((i, DecodeError("empty value (no JSON document)")))
        elif len(value) > max_bytes:
            failures.append(
                (
                    i,
                    OversizeEventError(
                        f"value has {len(value)} bytes, more than max_message_bytes={max_bytes}"
                    ),
                )
            )
        else:
            candidates.append(i)
    return candidates, failures


class BatchValidation:
    """:func:`validate_records` for one stream: after a bad record, expect more for a while.

    A clean batch is validated fastest by the strict call; a batch with a bad
    record pays for that call and then the tolerant one. A producer that sends
    one bad record in a hundred makes every batch such a batch, so for
    :attr:`BATCHES` batches after one with a bad record, the tolerant call is
    made at once (~6 % dearer on a clean batch, about half the cost of both
    calls on a bad one).

    >>> from types import SimpleNamespace as R
    >>> validation = BatchValidation()
    >>> _ = validation([R(value=b"{oops")], 1024)
    >>> validation.expect_bad
    True
    """

    #: Batches after one with a bad record validated expecting bad records.
    BATCHES = 8

    def __init__(self) -> None:
        self._left = 0

    @property
    def expect_bad(self) -> bool:
        """Whether the next batch is expected to hold bad records."""
        return self._left > 0

    def __call__(
        self,
        records: Sequence[ConsumedRecord],
        max_bytes: int,
        model: type[M] = Transaction,  # type: ignore[assignment]
    ) -> tuple[list[M], list[int], list[tuple[int, Exception]]]:
        """:func:`validate_records` of ``records``."""
        validated = validate_records(records, max_bytes, model, expect_bad=self.expect_bad)
        self._left = self.BATCHES if validated[2] else max(0, self._left - 1)
        return validated


def _validate_joined(
    values: list[bytes], model: type[M], *, strict_first: bool
) -> list[M | Any] | None:
    """``values`` validated in one call: a ``model`` per good value, its JSON for a bad one.

    ``strict_first``: the strict adapter first, the tolerant one only when an
    item is bad. ``None`` when the array they make is not one item per value (a
    value that is not one JSON document).
    """
    if not values:
        return []
    joined = b"[" + b",".join(values) + b"]"
    if strict_first:
        try:
            items: list[Any] = batch_adapter(model).validate_json(joined)
            return items if len(items) == len(values) else None
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                return None
        except Exception:  # a validator's own error: each record alone finds whose
            return None
    try:
        items = batch_adapter(model, tolerant=True).validate_json(joined)
    except Exception:
        return None
    return items if len(items) == len(values) else None


def _is_one_document(value: bytes) -> bool:
    """Whether ``value`` is one JSON document (``orjson``, as :func:`_validate_one` reads it)."""
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def _validate_one(value: bytes, model: type[M]) -> M | Exception:
    """One record's ``model``, or the error saying why it is not one."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return DecodeError(f"not UTF-8 JSON: {exc}")
    if not isinstance(document, dict):
        kind = _JSON_TYPES.get(type(document), type(document).__name__)
        return ValidationFailedError(f"expected a JSON object, got {kind}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        return ValidationFailedError(condense(exc))
    except Exception as exc:
        return ValidationFailedError(f"{type(exc).__name__}: {exc}")


def dead_letter_of(
    record: ConsumedRecord,
    error: BaseException,
    now_ms: int,
    max_bytes: int = DEFAULT_DEAD_LETTER_BYTES,
) -> DeadLetter:
    """The dead letter of a consumed record, with its original bytes and headers (cut to fit)."""
    return DeadLetter.of(
        error,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        now_ms=now_ms,
        original_headers=record.headers,
        max_bytes=max_bytes,
    )


@dataclass(frozen=True, slots=True)
class BegunBatch:
    """A batch after :meth:`Pipeline.begin`: its valid transactions wait for their features."""

    records: Sequence[ConsumedRecord]
    transactions: list[Transaction]
    #: Index in ``records`` of each transaction.
    indices: list[int]
    #: Dead letters so far; :meth:`Pipeline.complete` adds the rest.
    outcome: BatchOutcome


class Pipeline:
    """Validates, featurises, scores and decides a batch of transaction records.

    Parameters
    ----------
    features
        The feature store (Redis in production, the reference store in unit tests).
    active_scorer
        Returns the scorer to use now; called once per batch so a new model
        version is picked up between batches.
    snapshots
        Where the scored features are kept for the learner.
    policy
        Threshold or budget decision.
    topic_alerts, topic_scores, topic_dlq
        Output topics; ``topic_scores=None`` publishes alerts only.
    max_message_bytes
        Larger records are dead-lettered.
    dead_letter_max_bytes
        Bound of a dead letter: larger records are cut to fit
        (see :mod:`~fraudstream.service.deadletter`).
    max_event_ahead_ms
        Transactions dated further ahead of their record's timestamp are
        dead-lettered (:func:`refuse_ahead`); 0: no limit.
    clock_ms
        Wall clock in epoch milliseconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        features: FeatureStore,
        active_scorer: Callable[[], ActiveScorer],
        snapshots: SnapshotWriter,
        policy: DecisionPolicy,
        topic_alerts: str,
        topic_scores: str | None,
        topic_dlq: str,
        max_message_bytes: int,
        dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_BYTES,
        max_event_ahead_ms: int = 0,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.features = features
        self.active_scorer = active_scorer
        self.snapshots = snapshots
        self.policy = policy
        self.topic_alerts = topic_alerts
        self.topic_scores = topic_scores
        self.topic_dlq = topic_dlq
        self.max_message_bytes = max_message_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.max_event_ahead_ms = max_event_ahead_ms
        self.clock_ms = clock_ms
        self._validate = BatchValidation()
        # A store that claims the ids in its own round trip (the Redis store with
        # claim_ttl_s) saves the separate claim call.
        self._store_claims: bool = bool(getattr(features, "claims_ids", False))

    def process(self, records: Sequence[ConsumedRecord]) -> BatchOutcome:
        """Process one batch; nothing here commits or produces.

        Whatever a single record causes ends as its dead letter: validation
        errors, and any error a later step raises because of one record (found
        by :meth:`_isolate`). Errors of a dependency (Redis down) are raised for
        the caller to back off and retry the batch.

        The same as :meth:`begin` then :meth:`complete` with the store's
        ``update_and_compute``.
        """
        batch = self.begin(records)
        return self.complete(batch, lambda: self.features.update_and_compute(batch.transactions))

    def begin(self, records: Sequence[ConsumedRecord]) -> BegunBatch:
        """Validate a batch (dead letters for bad records) and claim ids the store does not.

        The caller then gets the features of ``transactions`` (a scorer that
        overlaps batches sends the feature script here and reads its reply in
        :meth:`complete`).
        """
        outcome = BatchOutcome()
        transactions: list[Transaction]
        transactions, indices, failures = self._validate(records, self.max_message_bytes)
        if self.max_event_ahead_ms:
            transactions, indices, ahead = refuse_ahead(
                records, transactions, indices, self.max_event_ahead_ms
            )
            if ahead:
                failures = sorted(failures + ahead, key=lambda failure: failure[0])
        for i, error in failures:
            self._dead_letter(records[i], error, outcome)
        outcome.not_keyed_by_card, outcome.not_keyed_example = not_keyed_by_card(
            records, transactions, indices
        )
        if transactions and not self._store_claims:
            conflict = self.snapshots.claim_many_ids(transactions) == CLAIM_CONFLICT
            transactions, indices = self._drop_conflicts(
                records, transactions, indices, conflict, outcome
            )
        return BegunBatch(records, transactions, indices, outcome)

    def complete(self, batch: BegunBatch, features: Callable[[], FeatureBatch]) -> BatchOutcome:
        """Score a begun batch with the features ``features()`` returns; return its outcome.

        ``features`` is called once, only when the batch has transactions to
        score. When it or scoring fails because of a record, the batch is
        isolated record by record with the store's ``update_and_compute``.
        """
        outcome = batch.outcome
        if batch.transactions:
            try:
                self._score_features(
                    batch.records, batch.transactions, batch.indices, features(), outcome
                )
            except Exception as exc:
                if is_dependency_error(exc):
                    raise
                self._isolate(batch.records, batch.transactions, batch.indices, outcome, exc)
        return outcome

    def _drop_conflicts(
        self,
        records: Sequence[ConsumedRecord],
        transactions: list[Transaction],
        indices: list[int],
        conflict: np.ndarray,
        outcome: BatchOutcome,
    ) -> tuple[list[Transaction], list[int]]:
        """Dead-letter transactions whose id was seen before with other content."""
        if not conflict.any():
            return transactions, indices
        kept: list[Transaction] = []
        kept_indices: list[int] = []
        for tx, i, bad in zip(transactions, indices, conflict.tolist(), strict=True):
            if bad:
                self._dead_letter(
                    records[i],
                    IdConflictError(
                        f"transaction_id {tx.transaction_id!r} was seen before with other "
                        "content (card, terminal, time, amount or currency); ids must be unique"
                    ),
                    outcome,
                )
            else:
                kept.append(tx)
                kept_indices.append(i)
        return kept, kept_indices

    def _dead_letter(
        self, record: ConsumedRecord, error: BaseException, outcome: BatchOutcome
    ) -> None:
        letter = dead_letter_of(record, error, int(self.clock_ms()), self.dead_letter_max_bytes)
        outcome.dead_letters.append(letter)
        outcome.outgoing.append(Outgoing(self.topic_dlq, letter.key, letter.value, letter.headers))

    def _isolate(
        self,
        records: Sequence[ConsumedRecord],
        transactions: list[Transaction],
        indices: list[int],
        outcome: BatchOutcome,
        error: Exception,
    ) -> None:
        """Find the records that make a step fail: halve the batch until each fails alone.

        Every record that fails on its own becomes a dead letter carrying the
        error; the others are processed. Processing is idempotent per
        transaction id, so running part of a batch again counts nothing twice.
        When a batch of several records fails record by record, the fault is
        not in the input (a bug, or a dependency): the first error is raised.
        """
        failed: list[tuple[int, Exception]] = []

        def run(part: list[int], part_error: Exception | None) -> None:
            if part_error is None:
                try:
                    self._process_valid(
                        records,
                        [transactions[k] for k in part],
                        [indices[k] for k in part],
                        outcome,
                    )
                    return
                except Exception as exc:
                    if is_dependency_error(exc):
                        raise
                    part_error = exc
            if len(part) == 1:
                failed.append((part[0], part_error))
                return
            middle = len(part) // 2
            run(part[:middle], None)
            run(part[middle:], None)

        run(list(range(len(transactions))), error)
        if len(transactions) > 1 and len(failed) == len(transactions):
            raise error
        for k, exc in failed:
            log.error(
                "transaction %r could not be processed and is dead-lettered: %s: %s",
                transactions[k].transaction_id,
                type(exc).__name__,
                exc,
            )
            self._dead_letter(
                records[indices[k]],
                UnprocessableEventError(f"{type(exc).__name__}: {exc}"),
                outcome,
            )

    def _process_valid(
        self,
        records: Sequence[ConsumedRecord],
        transactions: list[Transaction],
        indices: list[int],
        outcome: BatchOutcome,
    ) -> None:
        """Features, score, decision, snapshots and outgoing records of valid transactions."""
        self._score_features(
            records, transactions, indices, self.features.update_and_compute(transactions), outcome
        )

    def _score_features(
        self,
        records: Sequence[ConsumedRecord],
        transactions: list[Transaction],
        indices: list[int],
        batch: FeatureBatch,
        outcome: BatchOutcome,
    ) -> None:
        """Score, decision, snapshots and outgoing records of transactions with their features."""
        if batch.is_conflict is None or not batch.is_conflict.any():
            self._score(records, transactions, indices, batch, outcome)
            return
        # The store claimed the ids: dead-letter the conflicts, score the rest.
        # The dead letters join the outcome last: should scoring fail, this part
        # is processed again (see _isolate) and finds the same conflicts.
        conflicts = BatchOutcome()
        kept = np.flatnonzero(~batch.is_conflict)
        transactions, indices = self._drop_conflicts(
            records, transactions, indices, batch.is_conflict, conflicts
        )
        if transactions:
            batch = FeatureBatch(batch.names, batch.values[kept], batch.is_duplicate[kept])
            self._score(records, transactions, indices, batch, outcome)
        outcome.dead_letters += conflicts.dead_letters
        outcome.outgoing += conflicts.outgoing

    def _score(
        self,
        records: Sequence[ConsumedRecord],
        transactions: list[Transaction],
        indices: list[int],
        batch: FeatureBatch,
        outcome: BatchOutcome,
    ) -> None:
        """Score, decision, snapshots and outgoing records of counted transactions."""
        active = self.active_scorer()
        scores, _ = active.scorer.score_many(batch.values, reasons_at=np.inf)
        is_alert, threshold = self.policy.decide(scores, active.version)
        alert_rows = np.flatnonzero(is_alert)
        reasons_by_row: dict[int, list[Reason]] = {}
        if len(alert_rows):
            _, alert_reasons = active.scorer.score_many(batch.values[alert_rows], reasons_at=0.0)
            reasons_by_row = dict(zip(alert_rows.tolist(), alert_reasons, strict=True))
        self.snapshots.put_many(
            transactions,
            batch.values,
            scores,
            active.version,
            batch.names,
            keep_existing=batch.is_duplicate,
        )

        scored_at_ms = self.clock_ms()
        produced_ms = np.array([records[i].timestamp for i in indices], dtype=np.float64)
        latencies = scored_at_ms - produced_ms
        rows = range(len(transactions)) if self.topic_scores else alert_rows.tolist()
        for row in rows:
            tx = transactions[row]
            alert = bool(is_alert[row])
            value = encode_score_record(
                transaction_id=tx.transaction_id,
                card_id=tx.card_id,
                terminal_id=tx.terminal_id,
                amount=tx.amount,
                event_time_ms=tx.event_time_ms,
                score=float(scores[row]),
                threshold=threshold,
                is_alert=alert,
                scorer=active.kind,
                model_version=active.version,
                reasons=reasons_by_row.get(row, []),
                scored_at_ms=scored_at_ms,
                latency_ms=float(latencies[row]),
            )
            key = tx.card_id.encode()
            if alert:
                outcome.outgoing.append(Outgoing(self.topic_alerts, key, value))
            if self.topic_scores:
                outcome.outgoing.append(Outgoing(self.topic_scores, key, value))
        outcome.scored += len(transactions)
        outcome.duplicates += int(batch.is_duplicate.sum())
        outcome.alerts += len(alert_rows)
        outcome.latencies_ms = np.concatenate([outcome.latencies_ms, latencies])
        outcome.scorer_kind = active.kind
