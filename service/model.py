"""The online fraud model: a catalogue of River-style classifiers with batch scoring in numpy.

:class:`FraudModel` wraps one classifier from :data:`CATALOGUE` and speaks
River's verbs (``learn_one``, ``predict_proba_one``) plus ``learn_many`` (a
batch of labels) and the scorer's hot path ``score_many(X)`` on a ``float64``
matrix whose columns are ``feature_names``.

Why a numpy path: River's ``predict_proba_one`` costs a few µs per event, which
alone eats most of the scorer's budget per transaction. Every catalogue model
scores a whole batch in numpy: the linear pipelines (``StandardScaler |
LogisticRegression``) as ``sigmoid(w · (x - mean) / std + b)`` over the
scaler's running mean/variance and the regression's weights (equal to River's
own ``predict_proba_one`` to 1e-9, tested), the forest
(:class:`~fraudstream.service.forest.OnlineForest`) by walking all its trees at
once.

Why ``forest_logreg`` is the default: measured with ``fraudstream evaluate
--simulate`` (the handbook's protocol: the simulator's default 183 days, labels
7 days late and none earlier, assessed on its four test weeks with
known-compromised cards left out), it ranks frauds best on every measure: ROC
AUC / average precision / card precision@100 of 0.884 / 0.706 / 0.297, against
0.880 / 0.702 / 0.295 for the forest alone and 0.873 / 0.607 / 0.278 for
``logreg``. It is the forest (40 trees of depth up to 16, every fraud and 5 %
of genuine labels) and ``logreg``, each learning every label as it would alone,
their probabilities mixed 0.9 / 0.1 (:class:`Blend`); it learns about 3,600
labels/s on the loaded machine of that run (the forest alone 5,900) and scores
within a fraction of a µs of the forest alone.
The README holds the full table. ``logreg`` weights frauds 10x
in the loss; ``logreg_under`` under-samples genuine labels instead;
``logreg_plain`` is unweighted (calibrated but weaker). The forest corrects its
scores for the under-sampling, so they are probabilities on the real class mix;
the weighted logistic regressions inflate them (the 0.5 threshold is a tuned
operating point there, not an even chance). The ``budget`` decision mode is the
alternative when the review capacity is what is fixed.

Which model serves, and when it replaces the rules prior, is not decided here:
see :mod:`fraudstream.service.serving`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from river import base, compose, imblearn, linear_model, optim, preprocessing

from fraudstream.service.forest import OnlineForest
from fraudstream.service.schemas import Reason
from fraudstream.service.serving import RecentQuality

#: Reasons returned per scored row.
TOP_K = 3


def _logreg() -> base.Estimator:
    """Scaled logistic regression, Adam, frauds weighted 10x in the loss."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(
            optimizer=optim.Adam(0.0005), loss=optim.losses.Log(weight_pos=10.0)
        ),
    )


def _logreg_plain() -> base.Estimator:
    """Scaled logistic regression, plain SGD, no class weighting (calibrated but weaker)."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.02), l2=1e-4),
    )


def _logreg_under() -> base.Estimator:
    """Scaled logistic regression, Adam, learning from a random under-sample (20 % frauds)."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        imblearn.RandomUnderSampler(
            linear_model.LogisticRegression(optimizer=optim.Adam(0.01)),
            desired_dist={False: 0.8, True: 0.2},
            seed=42,
        ),
    )


class Blend(base.Classifier):
    """Weighted mean of an online forest's and a linear pipeline's fraud probabilities.

    Both learn every label they are given (the forest under-samples genuine
    labels itself); the blend scores ``(1 - linear_weight) * forest +
    linear_weight * linear``. :class:`FraudModel` scores it in numpy.

    Parameters
    ----------
    forest
        The online forest.
    linear
        A ``StandardScaler | LogisticRegression`` pipeline.
    linear_weight
        Weight of the linear pipeline's probability, in ``[0, 1]``.

    Examples
    --------
    >>> b = Blend(OnlineForest(n_trees=2, warmup=10), _logreg(), linear_weight=0.25)
    >>> b.predict_proba_one({"amount": 1.0})  # neither has learnt: no opinion
    {False: 0.5, True: 0.5}
    """

    def __init__(self, forest: OnlineForest, linear: Any, linear_weight: float = 0.1) -> None:
        # Any: River's own annotations (dict[Hashable, Any]) do not accept dict[str, float].
        if not 0.0 <= linear_weight <= 1.0:
            raise ValueError("linear_weight must be within [0, 1]")
        self.forest = forest
        self.linear = linear
        self.linear_weight = linear_weight

    @classmethod
    def _unit_test_params(cls) -> Any:
        yield {"forest": OnlineForest(n_trees=2, warmup=50, grace_period=20), "linear": _logreg()}

    def learn_one(self, x: Mapping[str, float], y: bool, **kwargs: Any) -> None:  # type: ignore[override]
        """Both members learn the label."""
        self.forest.learn_one(x, y)
        self.linear.learn_one(x, y)

    def mix(self, p_forest: Any, p_linear: Any) -> Any:
        """The blended probability (floats or arrays)."""
        return (1.0 - self.linear_weight) * p_forest + self.linear_weight * p_linear

    def predict_proba_one(self, x: Mapping[str, float], **kwargs: Any) -> dict[bool, float]:  # type: ignore[override]
        """``{False: 1 - p, True: p}``, ``p`` the blended probability."""
        p_linear = self.linear.predict_proba_one(x).get(True, 0.5)
        p = float(self.mix(self.forest.predict_proba_one(x)[True], p_linear))
        return {False: 1.0 - p, True: p}


def _forest() -> base.Estimator:
    """Online random forest of 40 histogram Hoeffding trees, 5 % of genuine labels."""
    # Tuned on the handbook protocol (`fraudstream evaluate --simulate`): 40 trees
    # of depth up to 16 over 128 bins; 20 trees of depth 12 over 64 bins ranked
    # about 0.005 AUC and 0.015 AP lower.
    return OnlineForest(n_trees=40, n_bins=128, max_depth=16, min_child_weight=2.0)


def _forest_logreg() -> base.Estimator:
    """The forest (90 %) blended with the logistic regression ``logreg`` (10 %) (default)."""
    # Same forest, same logistic regression; the blend ranks better than either
    # on the handbook protocol (see the README's Detection quality): weights of
    # 0.03 to 0.2 on logreg all did, 0.1 is the middle.
    forest = _forest()
    assert isinstance(forest, OnlineForest)
    return Blend(forest, _logreg(), linear_weight=0.1)


#: Model name -> factory of a fresh River classifier.
CATALOGUE: dict[str, Callable[[], base.Estimator]] = {
    "forest_logreg": _forest_logreg,
    "forest": _forest,
    "logreg": _logreg,
    "logreg_plain": _logreg_plain,
    "logreg_under": _logreg_under,
}
#: The model a service uses unless told otherwise.
DEFAULT_MODEL = "forest_logreg"


def describe(name: str) -> str:
    """One-line description of a catalogue model.

    >>> describe("logreg")
    'Scaled logistic regression, Adam, frauds weighted 10x in the loss.'
    """
    doc = CATALOGUE[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else name


def sigmoid(z: np.ndarray) -> np.ndarray:
    """River's clamped logistic function, vectorised.

    River returns exactly 0 below -30 and 1 above 30; doing the same keeps the
    numpy path equal to ``predict_proba_one``.

    >>> sigmoid(np.array([-40.0, 0.0, 40.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(-z))
    p = np.where(z < -30.0, 0.0, p)
    return np.where(z > 30.0, 1.0, p)


def top_reasons(
    names: Sequence[str], values: np.ndarray, contributions: np.ndarray, k: int = TOP_K
) -> list[list[Reason]]:
    """The ``k`` largest contributions by absolute value, per row, largest first.

    Parameters
    ----------
    names
        Feature names, the columns of ``values`` and ``contributions``.
    values
        Raw feature values, shape ``(n, d)``.
    contributions
        Contribution of each feature to each row's score, shape ``(n, d)``.
    k
        Reasons per row; zero contributions are left out.

    Examples
    --------
    >>> r = top_reasons(["a", "b", "c"], np.array([[1.0, 2.0, 3.0]]),
    ...                 np.array([[0.5, -2.0, 0.0]]), k=2)
    >>> [(x.feature, x.contribution) for x in r[0]]
    [('b', -2.0), ('a', 0.5)]
    """
    n, d = contributions.shape
    if n == 0 or d == 0:
        return [[] for _ in range(n)]
    k = min(k, d)
    mag = np.abs(contributions)
    # argpartition then a sort of k columns: O(n·d) instead of a full sort per row.
    idx = np.argpartition(-mag, k - 1, axis=1)[:, :k] if k < d else np.tile(np.arange(d), (n, 1))
    order = np.argsort(-np.take_along_axis(mag, idx, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    out: list[list[Reason]] = []
    for row in range(n):
        reasons = []
        for j in idx[row]:
            c = float(contributions[row, j])
            if c != 0.0:
                # model_construct skips validation: values are floats we just computed.
                reasons.append(
                    Reason.model_construct(
                        feature=names[j], value=float(values[row, j]), contribution=c
                    )
                )
        out.append(reasons)
    return out


class BatchScorer(Protocol):
    """What the scorer needs: the model and the rules prior both provide it."""

    def score_many(
        self, X: np.ndarray, reasons_at: float = 0.0
    ) -> tuple[np.ndarray, list[list[Reason]]]:
        """Fraud probabilities of the rows of ``X`` and reasons of rows scoring ≥ ``reasons_at``."""
        ...


def _sanitise(X: np.ndarray) -> np.ndarray:
    """Non-finite features become 0.0 (one NaN would poison the scaler forever)."""
    X = np.asarray(X, dtype=np.float64)
    if not np.isfinite(X).all():
        X = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
    return X


class FraudModel:
    """A catalogue model bound to an ordered list of feature names.

    Parameters
    ----------
    name
        Key of :data:`CATALOGUE`.
    feature_names
        Feature names, in the column order of the matrices given to ``score_many``.

    Examples
    --------
    >>> m = FraudModel("logreg", ["amount", "card_tx_count_1h"])
    >>> m.predict_proba_one({"amount": 10.0, "card_tx_count_1h": 1.0})
    {False: 0.5, True: 0.5}
    >>> for i in range(2000):
    ...     m.learn_one({"amount": 10.0 + i % 7, "card_tx_count_1h": 1.0}, False)
    ...     m.learn_one({"amount": 900.0 + i % 5, "card_tx_count_1h": 6.0}, True)
    >>> p, reasons = m.score_many(np.array([[950.0, 7.0], [12.0, 1.0]]))
    >>> bool(p[0] > 0.8 and p[0] > p[1] + 0.2), m.labels_learnt, m.frauds_learnt
    (True, 4000, 2000)
    >>> reasons[0][0].feature in {"amount", "card_tx_count_1h"}
    True
    """

    def __init__(self, name: str, feature_names: Sequence[str]) -> None:
        if name not in CATALOGUE:
            raise KeyError(f"unknown model {name!r}; choose one of {', '.join(CATALOGUE)}")
        if len(set(feature_names)) != len(feature_names):
            raise ValueError("feature names must be unique")
        self.name = name
        self.feature_names: tuple[str, ...] = tuple(feature_names)
        # Any: River's own annotations (dict[Hashable, Any]) do not accept dict[str, float].
        self.pipeline: Any = CATALOGUE[name]()
        self.labels_learnt = 0
        self.frauds_learnt = 0
        #: Scores of the latest labels before they were learnt (see :mod:`.serving`).
        self.recent = RecentQuality()
        # Running count, mean and sum of squared deviations of every feature: the
        # reasons of non-linear models (z-scores).
        self._moments = np.zeros((3, len(self.feature_names)))
        self._params: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self._bind()

    def _bind(self) -> None:
        """Find the numpy-scorable parts of the pipeline (after init or unpickling).

        ``_linear``: the whole model is ``scaler | logreg``; ``_forest``: the
        model is, or blends, an :class:`OnlineForest`; ``_blend`` and
        ``_blend_linear``: a :class:`Blend` and its linear member's parts.
        """
        pipeline = self.pipeline
        self._blend = pipeline if isinstance(pipeline, Blend) else None
        self._linear = self._find_linear(pipeline)
        self._blend_linear = self._find_linear(self._blend.linear) if self._blend else None
        if self._blend is not None:
            self._forest: OnlineForest | None = self._blend.forest
        else:
            self._forest = pipeline if isinstance(pipeline, OnlineForest) else None

    # -- River verbs ---------------------------------------------------------

    def learn_one(self, x: Mapping[str, float], y: bool) -> None:
        """Update the model with one labelled transaction (``x`` is not modified)."""
        if self._forest is not None:
            row = np.array([[float(x.get(f, 0.0)) for f in self.feature_names]])
            self.learn_many(row, np.array([bool(y)]))
            return
        xs = self._clean(x)
        self.pipeline.learn_one(xs, bool(y))
        if self._linear is None:
            self._update_moments(np.array([[xs[f] for f in self.feature_names]]))
        self.labels_learnt += 1
        self.frauds_learnt += int(bool(y))
        self._params = None  # cached numpy parameters are stale now

    def learn_many(self, X: np.ndarray, y: np.ndarray) -> None:
        """Learn labelled rows in order (columns are ``feature_names``); ``X`` is not modified.

        The forest learns the whole batch in numpy; River pipelines row by row.
        """
        X = _sanitise(X)
        y = np.asarray(y, dtype=bool)
        if self._forest is not None:
            self._forest.learn_many(X, y, self.feature_names)
            if self._blend is not None:
                names = self.feature_names
                for row, label in zip(X.tolist(), y.tolist(), strict=True):
                    self._blend.linear.learn_one(dict(zip(names, row, strict=True)), label)
                self._params = None
            self._update_moments(X)
            self.labels_learnt += int(y.shape[0])
            self.frauds_learnt += int(y.sum())
            return
        names = self.feature_names
        for row, label in zip(X.tolist(), y.tolist(), strict=True):
            self.learn_one(dict(zip(names, row, strict=True)), label)

    def _update_moments(self, X: np.ndarray) -> None:
        """Fold a batch into the running moments (Chan et al.'s parallel update)."""
        n_a, mean_a, m2_a = self._moments
        n_b = float(X.shape[0])
        mean_b = X.mean(axis=0)
        m2_b = ((X - mean_b) ** 2).sum(axis=0)
        n = n_a + n_b
        delta = mean_b - mean_a
        self._moments = np.stack(
            [n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n]
        )

    def predict_proba_one(self, x: Mapping[str, float]) -> dict[bool, float]:
        """``{False: 1 - p, True: p}`` with ``p`` the probability of fraud."""
        if self._forest is not None:
            row = np.array([[self._clean(x)[f] for f in self.feature_names]])
            p = float(self.proba_many(row)[0])
            return {False: 1.0 - p, True: p}
        proba = self.pipeline.predict_proba_one(self._clean(x))
        p = float(proba.get(True, 0.0))
        if not proba or sum(proba.values()) == 0:
            p = 0.5  # a tree that has seen nothing: no opinion
        p = min(max(p, 0.0), 1.0)
        return {False: 1.0 - p, True: p}

    # -- hot path -------------------------------------------------------------

    @property
    def is_linear(self) -> bool:
        """True for the linear pipelines (exact log-odds contributions as reasons)."""
        return self._linear is not None

    @property
    def is_vectorised(self) -> bool:
        """True when ``score_many`` runs on numpy (no per-row River call)."""
        return self._linear is not None or self._forest is not None

    def proba_many(self, X: np.ndarray) -> np.ndarray:
        """Fraud probability of every row of ``X`` (columns are ``feature_names``)."""
        X = _sanitise(X)
        if self._linear is not None:
            return sigmoid(self._logits(X))
        if self._forest is not None:
            p = self._forest.proba_many(X)
            if self._blend is not None:
                mixed: np.ndarray = self._blend.mix(p, sigmoid(self._logits(X)))
                return mixed
            return p
        return np.array(
            [
                self.predict_proba_one(dict(zip(self.feature_names, row, strict=True)))[True]
                for row in X.tolist()
            ],
            dtype=np.float64,
        )

    def contributions_many(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contribution to each row's score.

        Linear models: ``weight * scaled value`` (log-odds, exact). Others: the
        feature's z-score against its running mean/std over the labelled
        transactions, a transparent proxy.
        """
        X = _sanitise(X)
        if self._linear is not None:
            mean, std, w, _ = self._parameters()
            contributions: np.ndarray = self._scale(X, mean, std) * w
            return contributions
        n, mean, m2 = self._moments
        std = np.sqrt(np.where(n > 0, m2 / np.maximum(n, 1.0), 0.0))
        return self._scale(X, mean, std)

    def reasons_many(
        self, X: np.ndarray, rows: np.ndarray | None = None, k: int = TOP_K
    ) -> list[list[Reason]]:
        """Top-``k`` reasons of the selected rows (bool mask or indices), ``[]`` for others."""
        X = _sanitise(X)
        out: list[list[Reason]] = [[] for _ in range(len(X))]
        sel = np.arange(len(X)) if rows is None else np.arange(len(X))[rows]
        if len(sel):
            sub = X[sel]
            for i, r in zip(
                sel.tolist(),
                top_reasons(self.feature_names, sub, self.contributions_many(sub), k),
                strict=True,
            ):
                out[i] = r
        return out

    def score_many(
        self, X: np.ndarray, reasons_at: float = 0.0
    ) -> tuple[np.ndarray, list[list[Reason]]]:
        """Probabilities of every row, and reasons for rows whose probability ≥ ``reasons_at``.

        The scorer passes its alert threshold so reasons are built only for alerts.
        """
        X = _sanitise(X)
        p = self.proba_many(X)
        return p, self.reasons_many(X, p >= reasons_at)

    # -- internals ------------------------------------------------------------

    def _clean(self, x: Mapping[str, float]) -> dict[str, float]:
        # A fresh dict: River may keep references, and x belongs to the caller.
        out = {}
        for f in self.feature_names:
            v = float(x.get(f, 0.0))
            out[f] = v if math.isfinite(v) else 0.0
        return out

    @staticmethod
    def _find_linear(
        pipeline: base.Estimator,
    ) -> tuple[preprocessing.StandardScaler, linear_model.LogisticRegression] | None:
        """(scaler, logreg) if the pipeline is ``StandardScaler | [sampler of] LogReg``."""
        if not isinstance(pipeline, compose.Pipeline):
            return None
        steps = list(pipeline.steps.values())
        if len(steps) != 2 or type(steps[0]) is not preprocessing.StandardScaler:
            return None
        last = steps[1]
        if isinstance(last, imblearn.RandomUnderSampler | imblearn.RandomOverSampler):
            last = last.classifier  # samplers only change learning, not prediction
        if type(last) is not linear_model.LogisticRegression:
            return None
        return steps[0], last

    def _parameters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        if self._params is None:
            linear = self._linear or self._blend_linear
            assert linear is not None
            scaler, lr = linear
            names = self.feature_names
            mean = np.array([scaler.means.get(f, 0.0) for f in names], dtype=np.float64)
            std = np.array([scaler.vars.get(f, 0.0) for f in names], dtype=np.float64) ** 0.5
            weights = lr._weights  # VectorDict; missing keys are 0 at prediction time
            w = np.array([weights.get(f, 0.0) for f in names], dtype=np.float64)
            self._params = (mean, std, w, float(lr.intercept))
        return self._params

    @staticmethod
    def _scale(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        # River's StandardScaler maps a zero-variance feature to 0.0.
        safe = np.where(std > 0, std, 1.0)
        return np.where(std > 0, (X - mean) / safe, 0.0)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        mean, std, w, b = self._parameters()
        logits: np.ndarray = self._scale(X, mean, std) @ w + b
        return logits

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_params"] = None  # derived; rebuilt on first use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # Versions pickled before these attributes existed.
        self.__dict__.setdefault("recent", RecentQuality())
        self.__dict__.setdefault("_moments", np.zeros((3, len(self.feature_names))))
        self.__dict__.pop("_stats", None)
        # Re-find the (scaler, logreg) references inside the unpickled pipeline.
        self._bind()

    def __repr__(self) -> str:
        return (
            f"FraudModel({self.name!r}, {len(self.feature_names)} features, "
            f"labels_learnt={self.labels_learnt}, frauds_learnt={self.frauds_learnt})"
        )
