"""Learner logic with in-memory doubles: delayed labels, no look-ahead, claims, versions."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from river import stream

from fraudstream.evaluation.synthetic import synthetic_stream
from fraudstream.service.errors import LabelConflictError, MissingSnapshotError
from fraudstream.service.features.store import LabelFact
from fraudstream.service.learner import Learner
from fraudstream.service.model import FraudModel
from fraudstream.service.progressive import roc_auc
from fraudstream.service.registry import ModelVersion
from fraudstream.service.schemas import Label
from fraudstream.service.snapshots import (
    LABEL_CLAIMED,
    LABEL_CONFLICT,
    LABEL_HELD,
    LABEL_TAKEN,
    Snapshot,
    feature_set_id,
)

NAMES, X, Y = synthetic_stream(4000, seed=11, fraud_rate=0.05)


class FakeSnapshots:
    """Snapshots and claims in dicts, same behaviour as SnapshotStore."""

    def __init__(self) -> None:
        self.data: dict[str, Snapshot] = {}
        self.claims: dict[str, tuple[str, bool]] = {}

    def put(self, tx_id: str, row: np.ndarray, score: float) -> None:
        self.data[tx_id] = Snapshot(
            tx_id,
            "c" + tx_id,
            "t1",
            1_600_000_000_000,
            score,
            0,
            feature_set_id(NAMES),
            row.astype(np.float32),
        )

    def get_many(self, ids: Sequence[str]) -> list[Snapshot | None]:
        return [self.data.get(i) for i in ids]

    def claim_many(
        self,
        ids: Sequence[str],
        is_fraud: Sequence[bool],
        token: str = "1",
        stale: Sequence[str] = (),
    ) -> list[int]:
        out = []
        for i, fraud in zip(ids, is_fraud, strict=True):
            held = self.claims.get(i)
            if held is not None and held[0] not in stale:
                agree = held[1] == fraud
                out.append(
                    (LABEL_HELD if held[0] == token else LABEL_TAKEN) if agree else LABEL_CONFLICT
                )
            else:
                self.claims[i] = (token, fraud)
                out.append(LABEL_CLAIMED)
        return out


class FakeRegistry:
    def __init__(self) -> None:
        self.seq = 0
        self.published: dict[int, tuple[FraudModel, dict[str, Any]]] = {}
        self.reserved: set[int] = set()

    def reserve_version(self) -> int:
        self.seq += 1
        self.reserved.add(self.seq)
        return self.seq

    def abandoned_versions(self) -> list[int]:
        return sorted(self.reserved)

    def versions(self) -> list[int]:
        return sorted(self.published)

    def load(self, version: int) -> ModelVersion:
        import pickle

        model, metrics = self.published[version]
        return ModelVersion(version, {"metrics": metrics}, pickle.loads(pickle.dumps(model)))

    def publish(
        self,
        model: FraudModel,
        metrics: Mapping[str, Any] | None = None,
        version: int | None = None,
        extra: Mapping[str, Any] | None = None,
        lease: str | None = None,
    ) -> int:
        import pickle

        assert version is not None, "the learner publishes the version it reserved"
        self.reserved.discard(version)
        self.published[version] = (pickle.loads(pickle.dumps(model)), dict(metrics or {}))
        return version


class FakeFeatureStore:
    def __init__(self) -> None:
        self.facts: list[LabelFact] = []

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        self.facts.extend(labels)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def label(i: int, fraud: bool) -> Label:
    return Label(transaction_id=str(i), is_fraud=fraud, labeled_at=datetime(2024, 1, 1, tzinfo=UTC))


Fakes = tuple[Learner, FakeSnapshots, FakeRegistry, FakeFeatureStore]


def make(clock: Clock | None = None, **params: Any) -> Fakes:
    snaps, reg, fs = FakeSnapshots(), FakeRegistry(), FakeFeatureStore()
    learner = Learner(FraudModel("logreg", NAMES), snaps, reg, fs, clock=clock or Clock(), **params)
    return learner, snaps, reg, fs


def test_delayed_labels_no_look_ahead_and_improvement() -> None:
    """Scoring never changes the model; only an arrived label does; scores improve."""
    learner, snaps, _, fs = make()
    model = learner.model
    scores: dict[int, float] = {}
    rows = ((i, bool(Y[i])) for i in range(len(X)))
    # The row index stands for x: River types x as a dict, never read with moment=None.
    for _, i, y in stream.simulate_qa(rows, moment=None, delay=200):  # type: ignore[arg-type]
        if y is None:
            learnt = model.labels_learnt
            p, _ = model.score_many(X[i : i + 1])
            scores[i] = float(p[0])
            snaps.put(str(i), X[i], scores[i])
            assert model.labels_learnt == learnt  # scoring learns nothing
        else:
            assert str(i) in snaps.data  # its label comes after its score
            before = model.predict_proba_one(dict(zip(NAMES, X[0].tolist(), strict=True)))
            out = learner.learn_many([label(i, y)])
            assert out.learnt == 1
            after = model.predict_proba_one(dict(zip(NAMES, X[0].tolist(), strict=True)))
            assert before != after  # learning happens exactly here
    assert model.labels_learnt == len(X) and len(fs.facts) == len(X)
    idx = np.arange(len(X))
    early = idx < 1000
    late = idx >= 3000
    s = np.array([scores[int(i)] for i in idx])
    assert roc_auc(s[late], Y[late]) > roc_auc(s[early], Y[early])
    assert roc_auc(s[late], Y[late]) > 0.85
    # Prequential metrics saw the stored scores.
    assert learner.metrics.seen == len(X)


def test_model_unchanged_until_label_arrives() -> None:
    learner, snaps, _, _ = make()
    for i in range(50):
        snaps.put(str(i), X[i], 0.1)
    snapshot = learner.model.proba_many(X[:20]).copy()
    learner.learn_many([])
    np.testing.assert_array_equal(learner.model.proba_many(X[:20]), snapshot)
    learner.learn_many([label(0, True)])
    assert not np.array_equal(learner.model.proba_many(X[:20]), snapshot)


def test_duplicates_and_missing_snapshots() -> None:
    learner, snaps, _, fs = make()
    for i in range(3):
        snaps.put(str(i), X[i], 0.2)
    out = learner.learn_many([label(0, True), label(1, False), label(0, True), label(99, True)])
    assert (out.learnt, out.frauds, out.duplicates) == (2, 1, 1)
    assert [r.label.transaction_id for r in out.rejected] == ["99"]
    assert out.rejected[0].error is MissingSnapshotError
    again = learner.learn_many([label(1, False), label(2, False)])
    assert (again.learnt, again.duplicates) == (1, 1)
    assert [f.transaction_id for f in fs.facts] == ["0", "1", "2"]
    assert fs.facts[0] == LabelFact("0", "c0", "t1", 1_600_000_000_000, True)
    assert learner.model.labels_learnt == 3


def test_a_label_with_the_other_verdict_is_rejected_as_a_conflict_not_learnt() -> None:
    """Genuine, then fraud (a corrected label): the second is rejected with the reason.

    The same in one batch and in a later one, and after a publish; a repeat of
    the first verdict stays a duplicate. The model and the label facts hold the
    first verdict only.
    """
    learner, snaps, _, fs = make()
    for i in range(3):
        snaps.put(str(i), X[i], 0.2)
    out = learner.learn_many([label(0, False), label(0, True), label(0, False)])
    assert (out.learnt, out.frauds, out.duplicates) == (1, 0, 1)
    assert [(r.label.transaction_id, r.error) for r in out.rejected] == [("0", LabelConflictError)]
    assert out.rejected[0].reason.startswith("transaction 0 was labelled genuine; this label")
    assert not out.rejected[0].waitable
    learner.publish()
    later = learner.learn_many([label(0, True), label(1, True), label(1, True)])
    assert (later.learnt, later.frauds, later.duplicates) == (1, 1, 1)
    assert [r.label.transaction_id for r in later.rejected] == ["0"]
    assert "labelled genuine; this label says fraud" in later.rejected[0].reason
    assert [(f.transaction_id, f.is_fraud) for f in fs.facts] == [("0", False), ("1", True)]
    assert learner.model.labels_learnt == 2 and learner.rejected == 2


def test_publish_by_count_and_by_time() -> None:
    clock = Clock()
    learner, snaps, reg, _ = make(clock, publish_every_labels=10, publish_every_s=60.0)
    for i in range(30):
        snaps.put(str(i), X[i], 0.2)
    assert learner.maybe_publish() is None  # nothing learnt
    learner.learn_many([label(i, bool(Y[i])) for i in range(9)])
    assert learner.maybe_publish() is None
    learner.learn_many([label(9, True)])
    v1 = learner.maybe_publish()
    assert v1 == 1 and reg.published[1][0].labels_learnt == 10
    learner.learn_many([label(10, False)])
    clock.t = 59.0
    assert learner.maybe_publish() is None
    clock.t = 61.0
    v2 = learner.maybe_publish()
    assert v2 is not None and v2 > v1 and learner.version == v2
    clock.t = 500.0
    assert learner.maybe_publish() is None  # time alone is not enough


def test_crashed_learner_claims_are_retaken() -> None:
    learner, snaps, reg, _ = make()
    for i in range(5):
        snaps.put(str(i), X[i], 0.2)
    learner.learn_many([label(0, True), label(1, False)])
    learner.publish()
    learner.learn_many([label(2, True)])  # claimed, never published: the learner "crashes"
    successor = Learner.resume(
        snaps, reg, FakeFeatureStore(), model_name="logreg", feature_names=NAMES
    )
    assert successor.model.labels_learnt == 2
    out = successor.learn_many([label(0, True), label(2, True)])
    # 0 is in the published model; 2 died with the crash, so it is learnt again.
    assert (out.learnt, out.duplicates) == (1, 1)


def test_resume_refuses_other_features() -> None:
    learner, snaps, reg, _ = make()
    snaps.put("0", X[0], 0.2)
    learner.learn_many([label(0, True)])
    learner.publish()
    with pytest.raises(Exception, match="other features"):
        Learner.resume(
            snaps, reg, FakeFeatureStore(), model_name="logreg", feature_names=NAMES[:-1]
        )


class FlakyFeatureStore(FakeFeatureStore):
    """Fails the first ``failures`` calls, as Redis does while it is away."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        super().record_labels(labels)


def test_a_batch_retried_after_a_redis_failure_is_learnt_once() -> None:
    snaps, reg, fs = FakeSnapshots(), FakeRegistry(), FlakyFeatureStore(failures=1)
    learner = Learner(FraudModel("logreg", NAMES), snaps, reg, fs, clock=Clock())
    for i in range(3):
        snaps.put(str(i), X[i], 0.2)
    batch = [label(0, True), label(1, False), label(1, False), label(2, False)]
    with pytest.raises(ConnectionError):
        learner.learn_many(batch)
    assert learner.model.labels_learnt == 0
    retried = learner.learn_many(batch)  # the loop rewinds and delivers the batch again
    assert (retried.learnt, retried.duplicates) == (3, 1)
    assert [f.transaction_id for f in fs.facts] == ["0", "1", "2"]
    assert learner.learn_many(batch).duplicates == 4  # and never again
    assert learner.model.labels_learnt == 3


class SplitClaims(FakeSnapshots):
    """Once ``split`` is set: claims that many labels of the next call, then fails.

    As a Redis Cluster does when one master refuses its part of the call (its
    slots being resharded) while the others claimed theirs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.split: int | None = None

    def claim_many(
        self,
        ids: Sequence[str],
        is_fraud: Sequence[bool],
        token: str = "1",
        stale: Sequence[str] = (),
    ) -> list[int]:
        if self.split is not None:
            super().claim_many(ids[: self.split], is_fraud[: self.split], token, stale)
            self.split = None
            raise ConnectionError("a master refused its part (non local key)")
        return super().claim_many(ids, is_fraud, token, stale)


def test_labels_claimed_by_a_call_that_failed_are_learnt_by_its_retry() -> None:
    snaps, reg, fs = SplitClaims(), FakeRegistry(), FakeFeatureStore()
    learner = Learner(FraudModel("logreg", NAMES), snaps, reg, fs, clock=Clock())
    for i in range(6):
        snaps.put(str(i), X[i], 0.2)
    learner.learn_many([label(0, True)])
    batch = [label(1, False), label(2, True), label(0, True), label(3, False), label(2, True)]
    snaps.split = 3
    with pytest.raises(ConnectionError):
        learner.learn_many(batch)
    assert learner.publish() is None  # not while the batch waits for its retry
    retried = learner.learn_many(batch)
    # 1 and 2 were claimed by the failed call: learnt now; 0 was learnt before.
    assert (retried.learnt, retried.duplicates) == (3, 2)
    assert [f.transaction_id for f in fs.facts] == ["0", "1", "2", "3"]
    assert learner.publish() is not None
    assert learner.learn_many(batch).duplicates == 5  # and never again
    assert learner.model.labels_learnt == 4


def test_resume_continues_another_model_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    learner, snaps, reg, _ = make()
    snaps.put("0", X[0], 0.2)
    learner.learn_many([label(0, True)])
    version = learner.publish()
    with caplog.at_level(logging.WARNING, logger="fraudstream.service.learner"):
        same = Learner.resume(
            snaps, reg, FakeFeatureStore(), model_name="logreg", feature_names=NAMES
        )
    assert same.model.name == "logreg" and not caplog.records
    with caplog.at_level(logging.WARNING, logger="fraudstream.service.learner"):
        other = Learner.resume(
            snaps, reg, FakeFeatureStore(), model_name="forest", feature_names=NAMES
        )
    assert other.model.name == "logreg" and other.model.labels_learnt == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"FRAUDSTREAM_MODEL is 'forest', but model version {version} is a 'logreg' model: the "
        "learner continues it (the setting chooses the model of an empty registry only)"
    ]
