"""The serving policy: a model replaces the rules prior on measured quality, not a count."""

from __future__ import annotations

import numpy as np
import pytest

from fraudstream.service.model import FraudModel
from fraudstream.service.rules import RulesPrior
from fraudstream.service.serving import RecentQuality, ServingPolicy, learn_labelled

NAMES = ("amount", "card_amount_zscore")


def _model(labels_learnt: int) -> FraudModel:
    model = FraudModel("logreg", NAMES)
    model.labels_learnt = labels_learnt
    return model


def test_recent_quality_keeps_the_last_window() -> None:
    q = RecentQuality(window=4)
    q.update_many(np.array([0.1, 0.2, 0.3]), np.zeros(3), np.array([False, True, False]))
    q.update_many(np.array([0.9, 0.8, 0.7]), np.zeros(3), np.array([True, False, True]))
    report = q.report()
    assert (report["labels"], report["frauds"], q.seen) == (4, 2, 6)
    # Kept: 0.3 (genuine), 0.9 (fraud), 0.8 (genuine), 0.7 (fraud).
    assert report["model_roc_auc"] == pytest.approx(0.75)
    q.update_many(np.arange(10) / 10, np.zeros(10), np.arange(10) >= 8)
    assert q.report()["frauds"] == 2 and q.report()["model_roc_auc"] == 1.0


def test_policy_asks_for_labels_frauds_and_better_ranking_than_the_prior() -> None:
    policy = ServingPolicy(min_labels=100, min_frauds=3)
    y = np.array([True, False, False, True, False, True, False, False])
    good = np.where(y, 0.9, 0.1)
    poor = np.where(y, 0.2, 0.5)
    prior = np.where(y, 0.6, 0.4) * np.array([1, 1, 2, 1, 1, 0.5, 1, 1])

    model = _model(labels_learnt=99)
    model.recent.update_many(good, prior, y)
    assert not policy.may_serve(model)
    assert "fewer than 100" in (policy.reason(model) or "")

    model = _model(labels_learnt=500)
    model.recent.update_many(good[:4], prior[:4], y[:4])  # 2 frauds only
    assert "2 frauds" in (policy.reason(model) or "")

    model.recent.update_many(good[4:], prior[4:], y[4:])
    assert policy.may_serve(model)

    worse = _model(labels_learnt=500)
    worse.recent.update_many(poor, prior, y)
    reason = policy.reason(worse)
    assert reason is not None and "rules prior" in reason
    # A margin asks for more than a tie.
    tie = _model(labels_learnt=500)
    tie.recent.update_many(prior, prior, y)
    assert policy.may_serve(tie)
    assert not ServingPolicy(min_labels=100, min_frauds=3, margin=0.01).may_serve(tie)


def test_learn_labelled_records_scores_before_learning() -> None:
    model = FraudModel("logreg", NAMES)
    prior = RulesPrior(NAMES)
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    X = np.column_stack([np.where(y, 900.0, 30.0), np.where(y, 4.0, 0.0)]) + rng.normal(
        0, 1, (300, 2)
    )
    before = model.proba_many(X)
    learn_labelled(model, prior, X, y)
    assert model.labels_learnt == 300
    recorded = model.recent._model[:300]
    np.testing.assert_allclose(recorded, before.astype(np.float32))
    assert not np.allclose(model.proba_many(X), before)  # it did learn, afterwards
    np.testing.assert_allclose(model.recent._prior[:300], prior.score_many(X)[0].astype(np.float32))


def test_a_model_pickled_before_the_policy_existed_loads_with_an_empty_record() -> None:
    model = FraudModel("logreg", NAMES)
    state = model.__dict__.copy()
    del state["recent"], state["_moments"]
    old = FraudModel.__new__(FraudModel)
    old.__setstate__(state)
    assert old.recent.report()["labels"] == 0
    assert not ServingPolicy(min_labels=0).may_serve(old)
