"""When a model may serve: measured quality on recent labels, not a label count.

A fresh service scores with the transparent rules prior. A model replaces it
-- and a newer model version replaces the one in use -- only once it has shown,
on the most recent labels, that it ranks frauds better than the prior would.

How quality is measured (prequential, no look-ahead): when a batch of labels
arrives, *before* the model learns them, :func:`learn_labelled` scores their
feature snapshots with the model as it is and with the rules prior, and keeps
the pairs in the model's :class:`RecentQuality` (a ring of the last
``window`` labels, pickled with the model). Then the model learns the batch.
So every recorded score comes from a model that had not seen that label.

:class:`ServingPolicy` reads that record: a model version may serve when it
has learnt at least ``min_labels`` labels, its window holds at least
``min_frauds`` frauds, and its average precision on the window is at least the
prior's (plus ``margin``). The scorer's model watcher and ``fraudstream
evaluate`` both ask :meth:`ServingPolicy.may_serve`; a version that may not
serve is not swapped in, and the scorer keeps what it uses.

Examples
--------
>>> import numpy as np
>>> from fraudstream.service.model import FraudModel
>>> from fraudstream.service.rules import RulesPrior
>>> model = FraudModel("logreg", ["amount"])
>>> policy = ServingPolicy(min_labels=10, min_frauds=2)
>>> policy.may_serve(model)
False
>>> rng = np.random.default_rng(0)
>>> for _ in range(20):
...     y = rng.random(200) < 0.1
...     X = np.where(y, 900.0, 20.0)[:, None] + rng.normal(0, 5, (200, 1))
...     learn_labelled(model, RulesPrior(["amount"]), X, y)
>>> policy.may_serve(model), model.recent.report()["frauds"] > 2
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudstream.service.progressive import average_precision, roc_auc

if TYPE_CHECKING:
    from fraudstream.service.model import FraudModel
    from fraudstream.service.rules import RulesPrior
    from fraudstream.service.settings import Settings

#: Labels kept in a model's record of recent quality.
RECENT_WINDOW = 10_000


class RecentQuality:
    """The model's and the prior's scores on the last ``window`` labels, before learning them.

    Parameters
    ----------
    window
        Labels kept (default :data:`RECENT_WINDOW`).
    """

    def __init__(self, window: int = RECENT_WINDOW) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._model = np.zeros(window, dtype=np.float32)
        self._prior = np.zeros(window, dtype=np.float32)
        self._labels = np.zeros(window, dtype=bool)
        self.seen = 0

    def update_many(self, model: np.ndarray, prior: np.ndarray, labels: np.ndarray) -> None:
        """Record the scores given to labelled transactions before they were learnt."""
        n = len(labels)
        if n >= self.window:
            model, prior, labels = (
                model[-self.window :],
                prior[-self.window :],
                labels[-self.window :],
            )
        start = self.seen % self.window
        idx = (start + np.arange(len(labels))) % self.window
        self._model[idx] = model
        self._prior[idx] = prior
        self._labels[idx] = labels
        self.seen += n

    def report(self) -> dict[str, float | int]:
        """Labels and frauds in the window, the model's and the prior's AUC and AP on them."""
        n = min(self.seen, self.window)
        y = self._labels[:n]
        model, prior = self._model[:n].astype(np.float64), self._prior[:n].astype(np.float64)
        return {
            "labels": n,
            "frauds": int(y.sum()),
            "model_roc_auc": roc_auc(model, y),
            "model_average_precision": average_precision(model, y),
            "prior_roc_auc": roc_auc(prior, y),
            "prior_average_precision": average_precision(prior, y),
        }

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ServingPolicy:
    """Whether a model version may score in place of the rules prior (or an older version).

    Parameters
    ----------
    min_labels
        Labels the version must have learnt (default 500).
    min_frauds
        Frauds among its recent labels, so that the comparison means something
        (default 20).
    margin
        How much higher than the prior's its average precision on recent labels
        must be (default 0.0: at least as good; -1: no comparison, only
        ``min_labels`` counts).
    """

    min_labels: int = 500
    min_frauds: int = 20
    margin: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingPolicy:
        """Build the policy of the settings.

        From ``min_labels_for_model``, ``min_frauds_for_model`` and
        ``model_margin_over_prior``.
        """
        return cls(
            min_labels=settings.min_labels_for_model,
            min_frauds=settings.min_frauds_for_model,
            margin=settings.model_margin_over_prior,
        )

    def may_serve(self, model: FraudModel) -> bool:
        """True when ``model`` ranks recent labels at least as well as the prior."""
        return self.reason(model) is None

    def reason(self, model: FraudModel) -> str | None:
        """Why ``model`` may not serve, or ``None`` when it may."""
        if model.labels_learnt < self.min_labels:
            return f"learnt {model.labels_learnt} labels, fewer than {self.min_labels}"
        if self.margin <= -1.0:
            return None  # no comparison asked for
        report = model.recent.report()
        if report["frauds"] < self.min_frauds:
            return f"{report['frauds']} frauds among recent labels, fewer than {self.min_frauds}"
        ap, prior_ap = report["model_average_precision"], report["prior_average_precision"]
        if not ap >= prior_ap + self.margin:
            return (
                f"average precision on the last {report['labels']} labels {ap:.3f} "
                f"< the rules prior's {prior_ap:.3f}"
            )
        return None


def learn_labelled(model: FraudModel, prior: RulesPrior, X: np.ndarray, y: np.ndarray) -> None:
    """Record the model's and the prior's scores of labelled rows, then learn them.

    This is how the learner and ``fraudstream evaluate`` both learn a batch of
    labels: the recorded scores are prequential (given before learning).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    if len(y) == 0:
        return
    model.recent.update_many(model.proba_many(X), prior.score_many(X, reasons_at=2.0)[0], y)
    model.learn_many(X, y)
