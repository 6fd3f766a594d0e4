"""Quality metrics against hand-computed values, and a tiny prequential run without look-ahead."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from fraudstream.evaluation.prequential import (
    QualityConfig,
    average_precision,
    card_precision_at_k,
    evaluate,
    roc_auc,
    scorer_metrics,
    scorer_names,
)
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import FeatureBatch, LabelFact
from fraudstream.service.schemas import Transaction

# -- metrics ---------------------------------------------------------------------------------


def test_roc_auc_by_hand() -> None:
    # Positives 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    # A tie between a positive and a negative counts one half: (0.5 + 1) / 2.
    assert roc_auc(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 0], bool)) == 0.75
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([0, 0], bool)))


def test_average_precision_by_hand() -> None:
    # Ranked T F T F: precision 1 at recall 1/2, 2/3 at recall 1.
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool))
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Tied scores form one threshold: the positive at 0.5 is found with precision 1/3.
    ap = average_precision(np.array([0.9, 0.5, 0.5]), np.array([0, 1, 0], bool))
    assert ap == pytest.approx(1 / 3)
    assert average_precision(np.array([0.9, 0.1]), np.array([1, 0], bool)) == 1.0


def test_card_precision_at_k_by_hand() -> None:
    day = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    card = np.array([7, 7, 3, 5, 9, 7, 3, 3])
    scores = np.array([0.1, 0.9, 0.8, 0.8, 0.2, 0.4, 0.3, 0.6])
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1], bool)
    # Day 0 cards by max score: 7 (0.9, fraud at another tx that day), then 3 and 5 tied
    # at 0.8 (card 3 first: lower number; 5 is fraud), then 9.
    # Day 1: 3 (0.6, fraud), 7 (0.4).
    assert card_precision_at_k(day, card, scores, labels, k=1) == (1 + 1) / 2
    assert card_precision_at_k(day, card, scores, labels, k=2) == (1 / 2 + 1 / 2) / 2
    assert card_precision_at_k(day, card, scores, labels, k=3) == (2 / 3 + 1 / 3) / 2
    # Fewer cards than k: still divided by k.
    assert card_precision_at_k(day, card, scores, labels, k=10) == (2 / 10 + 1 / 10) / 2
    assert math.isnan(card_precision_at_k(day[:0], card[:0], scores[:0], labels[:0]))


def test_card_precision_is_independent_of_row_order() -> None:
    rng = np.random.default_rng(3)
    n = 500
    day, card = rng.integers(0, 5, n), rng.integers(0, 40, n)
    scores, labels = rng.random(n), rng.random(n) < 0.1
    perm = rng.permutation(n)
    assert card_precision_at_k(day, card, scores, labels, k=7) == card_precision_at_k(
        day[perm], card[perm], scores[perm], labels[perm], k=7
    )


def test_scorer_metrics_threshold_figures() -> None:
    m = scorer_metrics(
        np.array([0.9, 0.6, 0.55, 0.1, 0.7]),
        np.array([1, 0, 1, 1, 0], bool),
        np.array([0, 0, 1, 1, 2]),
        np.array([1, 2, 1, 2, 1]),
        threshold=0.6,
        k=1,
    )
    assert (m["n"], m["frauds"], m["days"]) == (5, 3, 3)
    assert m["alerts_per_day"] == 1.0  # 0.9, 0.6, 0.7 over 3 days
    assert m["precision_at_threshold"] == pytest.approx(1 / 3)
    assert m["recall_at_threshold"] == pytest.approx(1 / 3)
    assert m["card_precision_at_k"] == pytest.approx((1 + 1 + 0) / 3)


# -- the prequential loop --------------------------------------------------------------------


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


CONFIG = QualityConfig(
    days=16,
    customers=80,
    terminals=160,
    models=("logreg", "logreg_under"),
    min_labels_for_model=50,
    warmup_days=9,
    early_fraud_prob=0.5,
    top_k=10,
    keep_trace=True,
)


@pytest.fixture(scope="module")
def run() -> tuple[Any, SpyStore]:
    spy = SpyStore()
    return evaluate(CONFIG, store=spy), spy


def test_no_model_learns_a_label_before_it_arrives(run: tuple[Any, SpyStore]) -> None:
    report, _ = run
    tr = report.trace
    start_ms = int(tr["time_ms"][0] // 86_400_000 * 86_400_000)
    batch_ms = CONFIG.batch_s * 1000
    batch_start = start_ms + (tr["time_ms"] - start_ms) // batch_ms * batch_ms
    arrived = np.searchsorted(np.sort(tr["labeled_ms"]), batch_start, side="left")
    # Exactly the labels that arrived before the batch began were delivered...
    np.testing.assert_array_equal(tr["delivered_at_score"], arrived)
    for name in CONFIG.models:
        learnt = tr[f"learnt_at_score:{name}"]
        # ...and no model had learnt more: never a label from the future, nor its own.
        np.testing.assert_array_equal(learnt, arrived)
        assert (learnt <= np.searchsorted(np.sort(tr["labeled_ms"]), tr["time_ms"])).all()
        active = tr[f"active:{name}"]
        assert active.any() and not active.all()
        assert (learnt[active] >= CONFIG.min_labels_for_model).all()
        # Before activation the service scores with the prior.
        np.testing.assert_array_equal(tr[f"score:{name}"][~active], tr["score:rules"][~active])
    assert report.labels_delivered == int(arrived.max()) > 0


def test_features_receive_labels_only_after_scoring_and_arrival(
    run: tuple[Any, SpyStore],
) -> None:
    report, spy = run
    tr = report.trace
    # Transaction ids are the simulator's: prefix + zero-padded row number.
    labeled_ms: dict[str, int] = {}
    scored: set[str] = set()
    delivered: set[str] = set()
    last_labels: list[str] = []
    n_label_calls = 0
    for kind, payload in spy.events:
        if kind == "tx":
            first_ms = min(ms for _, ms in payload)
            for tx_id in last_labels:
                assert labeled_ms[tx_id] <= first_ms  # arrived before this batch
            scored.update(tx_id for tx_id, _ in payload)
            for tx_id, ms in payload:
                row = int(tx_id.rsplit("-", 1)[1])
                assert tr["time_ms"][row] == ms
                labeled_ms[tx_id] = int(tr["labeled_ms"][row])
            last_labels = []
        else:
            n_label_calls += 1
            assert scored.issuperset(payload)  # a label only for a transaction already scored
            assert delivered.isdisjoint(payload)  # each label once
            delivered.update(payload)
            last_labels += payload
    assert n_label_calls > 0 and len(delivered) == report.labels_delivered


def test_report_is_well_formed(run: tuple[Any, SpyStore]) -> None:
    report, _ = run
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["store"] == "SpyStore"
    assert set(d["metrics"]) == set(scorer_names(CONFIG.models))
    assert d["n_frauds"] == int(report.trace["is_fraud"].sum()) > 0
    for name, periods in d["metrics"].items():
        assert periods["full"]["n"] == d["n_transactions"], name
        assert 0 < periods["post_warmup"]["n"] < d["n_transactions"]
        assert periods["post_warmup"]["days"] == CONFIG.days - CONFIG.warmup_days
        for m in periods.values():
            for key in ("roc_auc", "average_precision", "card_precision_at_k"):
                assert 0.0 <= m[key] <= 1.0, (name, key)
        assert len(d["weekly"][name]) == 3
        assert sum(w["n"] for w in d["weekly"][name]) == d["n_transactions"]
    # After warm-up every model is active: served and model-only agree.
    for model in CONFIG.models:
        assert d["model_active_from_day"][model] < CONFIG.warmup_days
        assert (
            d["metrics"][model]["post_warmup"] == d["metrics"][f"{model}:model-only"]["post_warmup"]
        )
