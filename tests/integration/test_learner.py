"""Learner against a real Redis: restart continuity and throughput."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import redis
from pydantic import SecretStr

from fraudstream.evaluation.synthetic import synthetic_stream
from fraudstream.service.features.store import LabelFact
from fraudstream.service.learner import Learner
from fraudstream.service.model import FraudModel
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.schemas import Label, Transaction
from fraudstream.service.snapshots import SnapshotStore

NAMES, X, Y = synthetic_stream(6000, seed=4, fraud_rate=0.02)
AT = datetime(2024, 1, 1, tzinfo=UTC)


class FakeFeatureStore:
    def __init__(self) -> None:
        self.facts: list[LabelFact] = []

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        self.facts.extend(labels)


def _setup(client: redis.Redis, prefix: str) -> tuple[SnapshotStore, ModelRegistry]:
    snaps = SnapshotStore(client, prefix, 3600)
    txs = [
        Transaction(
            transaction_id=f"t{i}",
            card_id=f"c{i % 300}",
            terminal_id=f"m{i % 40}",
            amount=1.0 + i,
            timestamp=1_700_000_000_000 + i,
        )
        for i in range(len(X))
    ]
    for s in range(0, len(X), 2000):
        snaps.put_many(txs[s : s + 2000], X[s : s + 2000], np.full(2000, 0.1), 0, NAMES)
    return snaps, ModelRegistry(client, prefix, SecretStr("k"), keep=5)


def _labels(lo: int, hi: int) -> list[Label]:
    return [
        Label(transaction_id=f"t{i}", is_fraud=bool(Y[i]), labeled_at=AT) for i in range(lo, hi)
    ]


def test_restart_continues_version_and_count(redis_client: redis.Redis, redis_prefix: str) -> None:
    snaps, reg = _setup(redis_client, redis_prefix)

    def start() -> Learner:
        return Learner.resume(
            snaps,
            reg,
            FakeFeatureStore(),
            model_name="logreg",
            feature_names=NAMES,
            publish_every_labels=100,
        )

    first = start()
    first.learn_many(_labels(0, 250))
    v1 = first.maybe_publish()
    assert v1 is not None and first.model.labels_learnt == 250
    first.learn_many(_labels(250, 300))  # learnt, not published: lost in the "crash"

    second = start()
    assert second.version == v1 and second.model.labels_learnt == 250
    out = second.learn_many(_labels(0, 400))
    # 0..249 are in v1 (duplicates); 250..299 were claimed by the dead learner: learnt again.
    assert (out.learnt, out.duplicates) == (150, 250)
    v2 = second.maybe_publish()
    assert v2 is not None and v2 > v1
    assert reg.load().model.labels_learnt == 400 == reg.load().meta["labels_learnt"]


def test_learn_many_throughput(redis_client: redis.Redis, redis_prefix: str) -> None:
    snaps, reg = _setup(redis_client, redis_prefix)
    learner = Learner(
        FraudModel("logreg", NAMES), snaps, reg, FakeFeatureStore(), publish_every_labels=10**9
    )
    labels = _labels(0, len(X))
    t0 = time.perf_counter()
    for s in range(0, len(labels), 500):
        learner.learn_many(labels[s : s + 500])
    elapsed = time.perf_counter() - t0
    rate = len(labels) / elapsed
    print(f"learn_many: {rate:,.0f} labels/s")
    assert learner.model.labels_learnt == len(labels)
    assert rate > 2000
