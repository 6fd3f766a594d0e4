"""The scorer's batch path with in-memory doubles (no Kafka, no Redis)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import pytest
import redis
from hostile_corpus import corpus

from fraudstream.service.alerts import BudgetPolicy, DecisionPolicy, ThresholdPolicy
from fraudstream.service.features.definitions import FeatureConfig, feature_names
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import FeatureBatch, FeatureStore, LabelFact
from fraudstream.service.pipeline import (
    ActiveScorer,
    BatchOutcome,
    BegunBatch,
    Pipeline,
    UnreadableRecord,
    validate_records,
)
from fraudstream.service.rules import RulesPrior
from fraudstream.service.schemas import Alert, Transaction
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import CLAIM_CONFLICT, CLAIM_REPLAY


@dataclass
class Record:
    value: bytes | None
    offset: int = 0
    key: bytes | None = None
    topic: str = "transactions"
    partition: int = 0
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class Snapshots:
    stored: dict[str, tuple[np.ndarray, float, int]] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)
    claim_calls: int = 0
    #: put_many fails for transactions of this card, as a record-specific bug would.
    poison: str | None = None

    def claim_many_ids(self, transactions: Sequence[Transaction]) -> np.ndarray:
        self.claim_calls += 1
        out = []
        for tx in transactions:
            held = self.digests.setdefault(tx.transaction_id, tx.content_digest)
            out.append(CLAIM_REPLAY if held == tx.content_digest else CLAIM_CONFLICT)
        return np.array(out, dtype=np.uint8)

    def put_many(
        self,
        transactions: Sequence[Transaction],
        X: np.ndarray,
        scores: np.ndarray,
        model_version: int,
        feature_names: Sequence[str],
        keep_existing: np.ndarray | None = None,
    ) -> None:
        if any(tx.card_id == self.poison for tx in transactions):
            raise ValueError("cannot store this one")
        keep = np.zeros(len(X), bool) if keep_existing is None else keep_existing
        for tx, row, score, only_new in zip(transactions, X, scores, keep, strict=True):
            if not (only_new and tx.transaction_id in self.stored):
                self.stored[tx.transaction_id] = (row.copy(), float(score), model_version)


def _tx(
    i: int, card: str = "c1", amount: float = 20.0, terminal: str = "T1", minute: int = 0
) -> bytes:
    return orjson.dumps(
        {
            "transaction_id": f"t{i}",
            "card_id": card,
            "terminal_id": terminal,
            "amount": amount,
            "timestamp": 1_700_000_000_000 + minute * 60_000,
        }
    )


def _pipeline(
    policy: DecisionPolicy | None = None,
    scores_topic: str | None = "scores",
    store: FeatureStore | None = None,
    max_message_bytes: int = 4096,
    dead_letter_max_bytes: int = 1_000_000,
) -> tuple[Pipeline, Snapshots]:
    config = FeatureConfig.from_settings(Settings(_env_file=None))
    store = store or ReferenceFeatureStore(config)
    snapshots = Snapshots()
    active = ActiveScorer(RulesPrior(feature_names(config)), "rules", 0)
    pipeline = Pipeline(
        features=store,
        active_scorer=lambda: active,
        snapshots=snapshots,
        policy=policy or ThresholdPolicy(0.5),
        topic_alerts="alerts",
        topic_scores=scores_topic,
        topic_dlq="dlq",
        max_message_bytes=max_message_bytes,
        dead_letter_max_bytes=dead_letter_max_bytes,
        clock_ms=lambda: 1_700_000_000_050.0,
    )
    return pipeline, snapshots


def test_one_bad_record_does_not_spoil_its_batch() -> None:
    records = [
        Record(_tx(0)),
        Record(b"\xff\xfe"),
        Record(_tx(1, minute=1)),
        Record(None),
        Record(b'{"transaction_id": "t9", "amount": 5}'),
        Record(b"x" * 5000),
    ]
    transactions: list[Transaction]
    transactions, indices, failures = validate_records(records, 4096)
    assert [t.transaction_id for t in transactions] == ["t0", "t1"]
    assert indices == [0, 2]
    assert [(i, type(e).__name__) for i, e in failures] == [
        (1, "DecodeError"),
        (3, "DecodeError"),
        (4, "ValidationFailedError"),
        (5, "OversizeEventError"),
    ]
    assert "card_id: Field required" in str(failures[2][1])


def test_a_value_holding_two_documents_cannot_shift_the_batch() -> None:
    two = _tx(0)[:-1] + b"}," + _tx(1)
    transactions: list[Transaction]
    transactions, indices, failures = validate_records([Record(two), Record(_tx(2))], 4096)
    assert [t.transaction_id for t in transactions] == ["t2"]
    assert indices == [1]
    assert [i for i, _ in failures] == [0]


def test_process_scores_snapshots_and_alerts_with_reasons_only_for_alerts() -> None:
    pipeline, snapshots = _pipeline()
    history = [Record(_tx(i, amount=20.0 + i % 3, minute=i * 600), offset=i) for i in range(8)]
    attack = Record(_tx(99, amount=5000.0, terminal="T-new", minute=8 * 600), offset=8)
    outcome = pipeline.process([*history, Record(b"{bad", offset=9), attack])

    assert outcome.scored == 9 and outcome.alerts == 1 and len(outcome.dead_letters) == 1
    assert set(snapshots.stored) == {f"t{i}" for i in range(8)} | {"t99"}
    alerts = [o for o in outcome.outgoing if o.topic == "alerts"]
    scores = [o for o in outcome.outgoing if o.topic == "scores"]
    dlq = [o for o in outcome.outgoing if o.topic == "dlq"]
    assert len(alerts) == 1 and len(scores) == 9 and len(dlq) == 1
    alert = Alert.model_validate_json(alerts[0].value or b"")
    assert alert.transaction_id == "t99" and alerts[0].key == b"c1"
    assert {r.feature for r in alert.reasons} >= {"card_amount_zscore", "amount"}
    assert alert.latency_ms == pytest.approx(50.0)
    quiet = [orjson.loads(s.value or b"") for s in scores if b'"t99"' not in (s.value or b"")]
    assert all(q["reasons"] == [] and q["is_alert"] is False for q in quiet)
    assert dlq[0].value == b"{bad"


def test_a_replayed_batch_is_flagged_and_alerts_again_with_the_same_id() -> None:
    pipeline, snapshots = _pipeline()
    batch = [Record(_tx(i, amount=20.0, minute=i * 600), offset=i) for i in range(5)]
    batch.append(Record(_tx(7, amount=9000.0, terminal="T-x", minute=3000), offset=5))
    first = pipeline.process(batch)
    features_first = {k: v[0] for k, v in snapshots.stored.items()}
    again = pipeline.process(batch)
    assert first.duplicates == 0 and again.duplicates == 6
    # The snapshot the learner will use is the one taken when the transaction was new.
    for tx_id, row in features_first.items():
        np.testing.assert_array_equal(snapshots.stored[tx_id][0], row)
    ids = [
        Alert.model_validate_json(o.value or b"").alert_id
        for o in (*first.outgoing, *again.outgoing)
        if o.topic == "alerts"
    ]
    assert len(ids) == 2 and ids[0] == ids[1]


def test_budget_mode_keeps_alerts_near_the_budget() -> None:
    policy = BudgetPolicy(
        budget_per_day=10, expected_per_day=1000, fallback_threshold=0.5, min_history=200
    )
    pipeline, _ = _pipeline(policy, scores_topic=None)
    rng = np.random.default_rng(3)
    alerts = 0
    for b in range(10):
        records = [
            Record(
                _tx(
                    b * 200 + i,
                    card=f"c{i % 50}",
                    amount=float(rng.lognormal(3, 1)),
                    minute=b * 200 + i,
                ),
                offset=i,
            )
            for i in range(200)
        ]
        alerts += pipeline.process(records).alerts
    assert alerts <= 0.03 * 2000  # about 1 %, never a flood


# -- whatever one record causes ends as its dead letter ----------------------------------


def test_records_the_log_could_not_give_are_a_dead_letter_of_their_bytes() -> None:
    """Even bytes that would pass as a transaction: the log could not vouch for them."""
    from fraudstream.service.errors import UnreadableRecordsError

    pipeline, _ = _pipeline()
    unread = UnreadableRecord(
        topic="transactions",
        partition=0,
        offset=7,
        value=_tx(9),
        error=UnreadableRecordsError("transactions[0] offsets 7..9 cannot be read (crc)"),
    )
    outcome = pipeline.process([Record(_tx(0), offset=6), unread, Record(_tx(1), offset=10)])
    assert outcome.scored == 2
    (letter,) = outcome.dead_letters
    assert letter.value == _tx(9)
    headers = dict(letter.headers)
    assert headers["fraudstream.error.class"] == b"UnreadableRecordsError"
    assert headers["fraudstream.source.offset"] == b"7"
    assert headers["fraudstream.error.message"].startswith(b"transactions[0] offsets 7..9")


def _dead_letters_by_offset(outcome: BatchOutcome) -> dict[int, dict[str, bytes]]:
    return {
        int(dict(letter.headers)["fraudstream.source.offset"]): dict(letter.headers)
        for letter in outcome.dead_letters
    }


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_every_hostile_record_is_scored_or_dead_lettered_as_documented(batch_size: int) -> None:
    cases = corpus(max_message_bytes=65_536)
    pipeline, _ = _pipeline(max_message_bytes=65_536, dead_letter_max_bytes=200_000)
    pipeline.max_event_ahead_ms = Settings(_env_file=None).max_event_ahead_s * 1000
    produced_ms = int(time.time() * 1000)  # the corpus is dated from now
    records = [
        Record(c.value, offset=i, key=c.key, headers=list(c.headers), timestamp=produced_ms)
        for i, c in enumerate(cases)
    ]
    scored: list[str] = []
    letters: dict[int, dict[str, bytes]] = {}
    sizes: list[int] = []
    for start in range(0, len(records), batch_size):
        outcome = pipeline.process(records[start : start + batch_size])
        scored += [
            orjson.loads(o.value or b"")["transaction_id"]
            for o in outcome.outgoing
            if o.topic == "scores"
        ]
        letters.update(_dead_letters_by_offset(outcome))
        sizes += [letter.size for letter in outcome.dead_letters]

    assert len(cases) >= 40
    for i, case in enumerate(cases):
        if case.expect == "scored":
            assert i not in letters, f"{case.name}: dead-lettered {letters.get(i)}"
            assert orjson.loads(case.value or b"")["transaction_id"] in scored, case.name
        else:
            assert i in letters, f"{case.name}: not dead-lettered"
            assert letters[i]["fraudstream.error.class"].decode() == case.expect, case.name
    assert max(sizes) <= 200_000
    assert sum(c.expect == "scored" for c in cases) + len(letters) == len(cases)


class _Poisoned:
    """A feature store that fails for one card, as a record-specific bug would."""

    def __init__(self, inner: FeatureStore, poison: str, error: Exception) -> None:
        self.inner, self.poison, self.error = inner, poison, error

    @property
    def names(self) -> tuple[str, ...]:
        return self.inner.names

    def update_and_compute(self, transactions: Sequence[Transaction]) -> FeatureBatch:
        if any(tx.card_id == self.poison for tx in transactions):
            raise self.error
        return self.inner.update_and_compute(transactions)

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        self.inner.record_labels(labels)


class _Claiming:
    """A feature store that claims the ids in its own call, as the Redis store does."""

    claims_ids = True

    def __init__(self, inner: FeatureStore) -> None:
        self.inner = inner
        self.digests: dict[str, bytes] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return self.inner.names

    def update_and_compute(self, transactions: Sequence[Transaction]) -> FeatureBatch:
        conflict = np.array(
            [
                self.digests.setdefault(tx.transaction_id, tx.content_digest) != tx.content_digest
                for tx in transactions
            ],
            dtype=bool,
        )
        counted = self.inner.update_and_compute(
            [tx for tx, bad in zip(transactions, conflict, strict=True) if not bad]
        )
        values = np.zeros((len(transactions), len(self.names)))
        values[~conflict] = counted.values
        duplicate = np.zeros(len(transactions), bool)
        duplicate[~conflict] = counted.is_duplicate
        return FeatureBatch(self.names, values, duplicate, conflict)

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        self.inner.record_labels(labels)


def _reference() -> ReferenceFeatureStore:
    return ReferenceFeatureStore(FeatureConfig.from_settings(Settings(_env_file=None)))


def test_a_record_that_breaks_a_later_step_is_dead_lettered_alone() -> None:
    store = _Poisoned(_reference(), "poison", OverflowError("math range error"))
    pipeline, snapshots = _pipeline(store=store)
    records = [Record(_tx(i, card=f"c{i % 3}", minute=i), offset=i) for i in range(9)]
    records.insert(4, Record(_tx(50, card="poison"), offset=50))
    outcome = pipeline.process(records)

    assert outcome.scored == 9
    assert set(snapshots.stored) == {f"t{i}" for i in range(9)}
    letters = _dead_letters_by_offset(outcome)
    assert list(letters) == [50]
    assert letters[50]["fraudstream.error.class"] == b"UnprocessableEventError"
    assert b"OverflowError: math range error" in letters[50]["fraudstream.error.message"]


def test_a_dependency_error_is_raised_for_a_retry_not_dead_lettered() -> None:
    store = _Poisoned(_reference(), "c1", redis.ConnectionError("Redis went away"))
    pipeline, _ = _pipeline(store=store)
    with pytest.raises(redis.ConnectionError):
        pipeline.process([Record(_tx(0, card="c1")), Record(_tx(1, card="c2"))])


def test_a_batch_failing_record_by_record_is_a_bug_not_bad_input() -> None:
    store = _Poisoned(_reference(), "c1", TypeError("a bug"))
    pipeline, _ = _pipeline(store=store)
    with pytest.raises(TypeError):
        pipeline.process([Record(_tx(i, card="c1", minute=i), offset=i) for i in range(3)])


@pytest.mark.parametrize("store_claims", [False, True])
def test_an_id_reused_with_other_content_is_a_conflict_and_counted_once(
    store_claims: bool,
) -> None:
    pipeline, snapshots = _pipeline(store=_Claiming(_reference()) if store_claims else None)
    first = pipeline.process([Record(_tx(1, card="c1"), offset=0)])
    again = pipeline.process(
        [
            Record(_tx(1, card="c1"), offset=1),  # a replay: same content
            Record(_tx(1, card="c2"), offset=2),  # the same id on another card
            Record(_tx(1, card="c1", amount=99.0), offset=3),  # the same id, another amount
        ]
    )
    assert first.scored == 1 and again.scored == 1 and again.duplicates == 1
    letters = _dead_letters_by_offset(again)
    assert sorted(letters) == [2, 3]
    assert {h["fraudstream.error.class"] for h in letters.values()} == {b"IdConflictError"}
    assert list(snapshots.stored) == ["t1"]
    # The ids were claimed once per batch: by the store itself, or by the snapshot store first.
    assert snapshots.claim_calls == (0 if store_claims else 2)


def test_a_conflict_found_by_the_store_is_dead_lettered_once_when_a_later_step_fails() -> None:
    pipeline, snapshots = _pipeline(store=_Claiming(_reference()))
    snapshots.poison = "poison"
    outcome = pipeline.process(
        [
            Record(_tx(1, card="c1"), offset=0),
            Record(_tx(1, card="c2"), offset=1),  # the same id on another card
            Record(_tx(50, card="poison"), offset=2),  # storing its snapshot fails
            Record(_tx(2, card="c1", minute=1), offset=3),
        ]
    )
    letters = _dead_letters_by_offset(outcome)
    assert sorted(letters) == [1, 2]
    assert letters[1]["fraudstream.error.class"] == b"IdConflictError"
    assert letters[2]["fraudstream.error.class"] == b"UnprocessableEventError"
    assert len(outcome.dead_letters) == 2
    assert outcome.scored == 2 and sorted(snapshots.stored) == ["t1", "t2"]


def test_begin_then_complete_with_the_next_batch_begun_meanwhile_equals_process() -> None:
    """As the overlapping scorer runs it: k + 1 is begun before k is completed."""
    records = [Record(_tx(i, card=f"c{i % 4}", minute=i), offset=i) for i in range(40)]
    records[7] = Record(b"{oops", offset=7)
    records[20] = records[3]  # a replay
    parts = [records[0:15], records[15:28], records[28:40]]
    one_at_a_time, one_snapshots = _pipeline(store=_Claiming(_reference()))
    overlapped, overlapped_snapshots = _pipeline(store=_Claiming(_reference()))
    want = [one_at_a_time.process(part) for part in parts]

    begun = [overlapped.begin(parts[0])]
    got = []
    for part in [*parts[1:], None]:
        if part is not None:
            begun.append(overlapped.begin(part))
        oldest = begun.pop(0)

        def features(b: BegunBatch = oldest) -> FeatureBatch:
            return overlapped.features.update_and_compute(b.transactions)

        got.append(overlapped.complete(oldest, features))
    assert [o.scored for o in got] == [o.scored for o in want] == [14, 13, 12]
    assert [o.duplicates for o in got] == [o.duplicates for o in want] == [0, 1, 0]
    assert [[(r.topic, r.key, r.value) for r in o.outgoing] for o in got] == [
        [(r.topic, r.key, r.value) for r in o.outgoing] for o in want
    ]
    assert overlapped_snapshots.stored.keys() == one_snapshots.stored.keys()


def test_complete_isolates_a_record_whose_features_fail() -> None:
    """The features handed to complete() fail because of one record: only it is dead-lettered."""
    store = _Poisoned(_reference(), "poison", OverflowError("math range error"))
    pipeline, snapshots = _pipeline(store=store)
    records = [Record(_tx(i, card=f"c{i % 3}", minute=i), offset=i) for i in range(6)]
    records.append(Record(_tx(50, card="poison"), offset=50))
    batch = pipeline.begin(records)
    outcome = pipeline.complete(batch, lambda: store.update_and_compute(batch.transactions))
    assert outcome.scored == 6
    assert set(snapshots.stored) == {f"t{i}" for i in range(6)}
    assert list(_dead_letters_by_offset(outcome)) == [50]


def test_complete_raises_a_dependency_error_for_a_retry() -> None:
    pipeline, _ = _pipeline()
    batch = pipeline.begin([Record(_tx(0))])

    def gone() -> FeatureBatch:
        raise redis.ConnectionError("Redis went away")

    with pytest.raises(redis.ConnectionError):
        pipeline.complete(batch, gone)
