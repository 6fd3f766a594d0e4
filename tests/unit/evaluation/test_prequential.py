"""The evaluation engine never lets a label in before its time, and serves as the service does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from fraudstream.evaluation.prequential import ReplayConfig, ReplayResult, replay
from fraudstream.evaluation.stream import LabelledStream
from fraudstream.producers.simulator import SimulationConfig, simulate
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import FeatureBatch, LabelFact
from fraudstream.service.schemas import Transaction
from fraudstream.service.serving import ServingPolicy


class SpyStore:
    """The reference store, recording the order of transactions and labels it is given."""

    def __init__(self) -> None:
        self.inner = ReferenceFeatureStore(FeatureConfig(prefix="t"))
        self.events: list[tuple[str, Any]] = []

    @property
    def names(self) -> tuple[str, ...]:
        return self.inner.names

    def update_and_compute(self, transactions: Sequence[Transaction]) -> FeatureBatch:
        self.events.append(("tx", [(t.transaction_id, t.event_time_ms) for t in transactions]))
        return self.inner.update_and_compute(transactions)

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        self.events.append(("labels", [lb.transaction_id for lb in labels]))
        self.inner.record_labels(labels)


CONFIG = ReplayConfig(
    models=("logreg", "forest"),
    label_delay_days=3.0,
    early_fraud_share=0.5,
    policy=ServingPolicy(min_labels=50, min_frauds=3),
)
STREAM = LabelledStream.from_simulation(
    simulate(SimulationConfig(n_customers=300, n_terminals=600, n_days=24))
)


@pytest.fixture(scope="module")
def run() -> tuple[ReplayResult, SpyStore]:
    spy = SpyStore()
    return replay(STREAM, CONFIG, store=spy), spy


def test_no_model_learns_a_label_before_it_arrives(run: tuple[ReplayResult, SpyStore]) -> None:
    result, _ = run
    time_ms, labeled_ms = STREAM.time_ms, result.labeled_ms
    batch_ms = CONFIG.batch_s * 1000
    batch_start = time_ms // batch_ms * batch_ms
    arrived = np.searchsorted(np.sort(labeled_ms), batch_start, side="left")
    # Exactly the labels that arrived before the batch began were delivered...
    np.testing.assert_array_equal(result.delivered_at_score, arrived)
    for name in CONFIG.models:
        learnt = result.learnt_at_score[name]
        # ...and no model had learnt more: never a label from the future, nor its own.
        np.testing.assert_array_equal(learnt, arrived)
        assert (learnt <= np.searchsorted(np.sort(labeled_ms), time_ms)).all()
    assert result.labels_learnt["logreg"] == int((labeled_ms < batch_start[-1]).sum())


def test_features_receive_labels_only_after_scoring_and_arrival(
    run: tuple[ReplayResult, SpyStore],
) -> None:
    result, spy = run
    row_of = {tx_id: i for i, tx_id in enumerate(STREAM.transaction_ids(np.arange(len(STREAM))))}
    scored: set[str] = set()
    delivered: set[str] = set()
    last_labels: list[str] = []
    for kind, payload in spy.events:
        if kind == "tx":
            first_ms = min(ms for _, ms in payload)
            for tx_id in last_labels:
                assert result.labeled_ms[row_of[tx_id]] <= first_ms  # arrived before this batch
            scored.update(tx_id for tx_id, _ in payload)
            last_labels = []
        else:
            assert scored.issuperset(payload)  # a label only for a transaction already scored
            assert delivered.isdisjoint(payload)  # each label once
            delivered.update(payload)
            last_labels += payload
    assert delivered and len(delivered) == result.labels_learnt["forest"]


def test_the_prior_scores_until_the_policy_lets_a_model_serve(
    run: tuple[ReplayResult, SpyStore],
) -> None:
    result, _ = run
    for name in CONFIG.models:
        start = result.serving_from_ms[name]
        assert start is not None, name
        before = STREAM.time_ms < start
        assert before.any() and not before.all()
        np.testing.assert_array_equal(result.scores[name][before], result.scores["rules"][before])
        np.testing.assert_array_equal(
            result.scores[name][~before], result.model_scores[name][~before]
        )
        # It served only after learning enough labels and frauds.
        assert result.learnt_at_score[name][~before].min() >= CONFIG.policy.min_labels


def test_same_stream_and_seed_same_scores() -> None:
    small = LabelledStream.from_simulation(
        simulate(SimulationConfig(n_customers=30, n_terminals=60, n_days=6))
    )
    config = ReplayConfig(
        models=("forest",), label_delay_days=1.0, policy=ServingPolicy(min_labels=10, min_frauds=1)
    )
    a = replay(small, config, store="reference")
    b = replay(small, config, store="reference")
    for name in a.scores:
        np.testing.assert_array_equal(a.scores[name], b.scores[name])
