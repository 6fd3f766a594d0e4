"""Contract of every catalogue model (in the spirit of river's check_estimator), rules prior."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from river import stream

from fraudstream.evaluation.synthetic import synthetic_stream
from fraudstream.service.model import CATALOGUE, FraudModel
from fraudstream.service.rules import RulesPrior

NAMES, X, Y = synthetic_stream(600, seed=3, fraud_rate=0.1)


def _x(row: np.ndarray) -> dict[str, float]:
    return dict(zip(NAMES, row.tolist(), strict=True))


def _trained(name: str, n: int = 300) -> FraudModel:
    model = FraudModel(name, NAMES)
    for row, y in zip(X[:n], Y[:n], strict=True):
        model.learn_one(_x(row), bool(y))
    return model


@pytest.fixture(params=sorted(CATALOGUE))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_predict_before_learning(name: str) -> None:
    model = FraudModel(name, NAMES)
    proba = model.predict_proba_one(_x(X[0]))
    assert set(proba) == {False, True}
    assert proba[True] == pytest.approx(0.5)
    p, reasons = model.score_many(X[:5])
    assert p.shape == (5,) and len(reasons) == 5


def test_probabilities_valid(name: str) -> None:
    model = _trained(name)
    for row in X[300:400]:
        proba = model.predict_proba_one(_x(row))
        assert 0.0 <= proba[True] <= 1.0 and 0.0 <= proba[False] <= 1.0
        assert proba[True] + proba[False] == pytest.approx(1.0)
    assert model.labels_learnt == 300 and model.frauds_learnt == int(Y[:300].sum())


def test_predict_does_not_learn(name: str) -> None:
    model = _trained(name, 200)
    before = pickle.dumps(model)
    for row in X[200:260]:
        model.predict_proba_one(_x(row))
    model.score_many(X[200:260])
    after = FraudModel.__new__(FraudModel)
    after.__setstate__(pickle.loads(before).__dict__)
    assert [model.predict_proba_one(_x(r))[True] for r in X[300:320]] == [
        after.predict_proba_one(_x(r))[True] for r in X[300:320]
    ]
    assert model.labels_learnt == 200


def test_x_not_mutated(name: str) -> None:
    model = FraudModel(name, NAMES)
    x = {**_x(X[0]), "extra": 1.0, "card_speed_kmh_prev": float("nan")}
    original = copy.deepcopy(x)
    model.learn_one(x, True)
    model.predict_proba_one(x)
    assert x.keys() == original.keys()
    assert all((x[k] == original[k]) or (np.isnan(x[k]) and np.isnan(original[k])) for k in x)


def test_pickle_round_trip(name: str) -> None:
    model = _trained(name)
    clone = pickle.loads(pickle.dumps(model))
    for row in X[300:350]:
        assert clone.predict_proba_one(_x(row)) == model.predict_proba_one(_x(row))
    np.testing.assert_array_equal(clone.proba_many(X[300:400]), model.proba_many(X[300:400]))
    # Both keep learning identically.
    model.learn_one(_x(X[400]), True)
    clone.learn_one(_x(X[400]), True)
    np.testing.assert_array_equal(clone.proba_many(X[401:420]), model.proba_many(X[401:420]))


def test_score_many_equals_predict_proba_one(name: str) -> None:
    model = _trained(name)
    p, reasons = model.score_many(X[300:600])
    expected = [model.predict_proba_one(_x(row))[True] for row in X[300:600]]
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-9)
    assert all(len(r) <= 3 for r in reasons)


def test_score_many_cache_follows_learning() -> None:
    model = _trained("logreg", 50)
    p1 = model.proba_many(X[:10])
    model.learn_one(_x(X[60]), True)
    p2 = model.proba_many(X[:10])
    assert not np.array_equal(p1, p2)
    expected = [model.predict_proba_one(_x(r))[True] for r in X[:10]]
    np.testing.assert_allclose(p2, expected, atol=1e-9)


def test_every_catalogue_model_scores_on_numpy(name: str) -> None:
    model = FraudModel(name, NAMES)
    assert model.is_vectorised
    assert model.is_linear == name.startswith("logreg")


def test_forest_learns_the_planted_frauds_and_scores_like_row_by_row() -> None:
    names, X, Y = synthetic_stream(20_000, seed=5, fraud_rate=0.05)
    model = FraudModel("forest", names)
    for lo in range(0, 15_000, 500):  # label batches, as the learner gets them
        model.learn_many(X[lo : lo + 500], Y[lo : lo + 500])
    assert (model.labels_learnt, model.frauds_learnt) == (15_000, int(Y[:15_000].sum()))
    p = model.proba_many(X[15_000:])
    from fraudstream.service.progressive import roc_auc

    assert roc_auc(p, Y[15_000:]) > 0.9
    one = [model.predict_proba_one(dict(zip(names, r.tolist(), strict=True)))[True]
           for r in X[15_000:15_200]]  # fmt: skip
    np.testing.assert_allclose(p[:200], one, rtol=0, atol=1e-12)
    # Reasons: z-scores against the learnt rows' running moments.
    reasons = model.reasons_many(X[15_000:15_010])
    assert all(len(r) == 3 for r in reasons)
    # A checkpoint leaves the split histograms out, and scores the same.
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.proba_many(X[15_000:]), p)
    assert len(pickle.dumps(model)) < 2_000_000


def test_the_blend_is_the_weighted_mean_of_its_forest_and_logreg_learnt_alike() -> None:
    names, X5, Y5 = synthetic_stream(6_000, seed=5, fraud_rate=0.05)
    blend, forest, logreg = (FraudModel(n, names) for n in ("forest_logreg", "forest", "logreg"))
    for lo in range(0, 5_000, 500):  # label batches, as the learner gets them
        for m in (blend, forest, logreg):
            m.learn_many(X5[lo : lo + 500], Y5[lo : lo + 500])
    assert blend.labels_learnt == forest.labels_learnt == logreg.labels_learnt == 5_000
    w = blend.pipeline.linear_weight
    assert 0 < w < 1
    p = blend.proba_many(X5[5_000:])
    expected = (1 - w) * forest.proba_many(X5[5_000:]) + w * logreg.proba_many(X5[5_000:])
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)
    # Row by row (River's verb) and after a checkpoint, the same.
    one = [blend.predict_proba_one(dict(zip(names, r.tolist(), strict=True)))[True]
           for r in X5[5_000:5_050]]  # fmt: skip
    np.testing.assert_allclose(p[:50], one, rtol=0, atol=1e-12)
    restored = pickle.loads(pickle.dumps(blend))
    np.testing.assert_array_equal(restored.proba_many(X5[5_000:]), p)
    # It learns online: new labels move both members.
    restored.learn_many(X5[5_000:5_500], Y5[5_000:5_500])
    assert not np.array_equal(restored.proba_many(X5[5_500:]), p[500:])
    assert len(blend.reasons_many(X5[5_000:5_005])[0]) == 3


def test_forest_learn_one_equals_learn_many_in_effect() -> None:
    a, b = FraudModel("forest", NAMES), FraudModel("forest", NAMES)
    for row, y in zip(X, Y, strict=True):
        a.learn_one(_x(row), bool(y))
    b.learn_many(X, Y)
    assert a.labels_learnt == b.labels_learnt == len(X)
    assert a.frauds_learnt == b.frauds_learnt


def test_reasons_are_top_contributions_and_only_where_asked() -> None:
    model = _trained("logreg")
    rows = X[300:400]
    p, reasons = model.score_many(rows, reasons_at=0.9)
    assert all(r == [] for r, pi in zip(reasons, p, strict=True) if pi < 0.9)
    contrib = model.contributions_many(rows)
    full = model.reasons_many(rows)
    for i, rs in enumerate(full):
        top = np.sort(np.abs(contrib[i]))[::-1][:3]
        np.testing.assert_allclose([abs(r.contribution) for r in rs], top[: len(rs)])
        # Exact log-odds: contributions plus intercept give the logit.
        b = model._parameters()[3]
        logit = float(np.sum(contrib[i]) + b)
        assert 1 / (1 + np.exp(-logit)) == pytest.approx(model.proba_many(rows[i : i + 1])[0])


def test_non_finite_features_are_zeroed() -> None:
    model = _trained("logreg")
    bad = X[300:302].copy()
    bad[0, 0] = np.nan
    bad[1, 2] = np.inf
    p = model.proba_many(bad)
    assert np.isfinite(p).all()


def test_unknown_model() -> None:
    with pytest.raises(KeyError, match="unknown model"):
        FraudModel("nope", NAMES)


def test_learns_with_delayed_labels_from_simulate_qa() -> None:
    """simulate_qa yields the question (score) before the answer (learn)."""
    model = FraudModel("logreg", NAMES)
    scores: dict[int, float] = {}
    # Long enough for the default's deliberately small learning rate (see service/model.py).
    _, X, Y = synthetic_stream(2000, seed=3, fraud_rate=0.1)
    rows = ((_x(r), bool(y)) for r, y in zip(X, Y, strict=True))
    # River types x as dict[Hashable, Any], which a dict[str, float] is not (dicts are invariant).
    for i, x, y in stream.simulate_qa(rows, moment=None, delay=50):  # type: ignore[arg-type]
        if y is None:
            scores[i] = model.predict_proba_one(x)[True]
        else:
            model.learn_one(x, y)
    assert model.labels_learnt == len(X)
    late = [i for i in scores if i >= 300]
    auc_pairs = [(scores[i], Y[i]) for i in late]
    pos = [s for s, y in auc_pairs if y]
    neg = [s for s, y in auc_pairs if not y]
    assert np.mean([p > n for p in pos for n in neg]) > 0.8


# -- rules prior -------------------------------------------------------------


def test_rules_prior_scores_and_reasons() -> None:
    prior = RulesPrior(NAMES)
    p, reasons = prior.score_many(X)
    assert p.shape == (len(X),) and ((p >= 0) & (p <= 1)).all()
    points, fired = prior.points_many(X)
    for i in range(len(X)):
        assert sum(r.contribution for r in reasons[i]) == pytest.approx(points[i])
        assert len(reasons[i]) == int(fired[i].sum())
    # The planted frauds score higher on average.
    assert p[Y].mean() > 2 * p[~Y].mean()


def test_rules_prior_ignores_absent_features_and_nan() -> None:
    prior = RulesPrior(["amount", "other"])
    assert [r.feature for r in prior.rules] == ["amount"]
    p, reasons = prior.score_many(np.array([[np.nan, 1.0], [5000.0, 0.0]]))
    assert reasons[0] == [] and reasons[1][0].feature == "amount"
    assert p[1] > p[0]
    x = {"amount": 5000.0}
    assert prior.predict_proba_one(x)[True] == pytest.approx(p[1])
    assert x == {"amount": 5000.0}


def test_rules_prior_reasons_only_above() -> None:
    prior = RulesPrior(NAMES)
    p, reasons = prior.score_many(X, reasons_at=0.5)
    assert all(r == [] for r, pi in zip(reasons, p, strict=True) if pi < 0.5)
