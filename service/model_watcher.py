"""Which model serves: the scorer's view of the registry, and the one rule that decides.

:class:`ServingPolicy` is the only place that says when a learnt model may
replace the transparent rules prior (the service's :class:`ModelWatcher` and
the prequential evaluation both ask it). :class:`ModelWatcher` polls the
registry between batches and keeps the active scorer current.

Examples
--------
>>> from fraudstream.service.model import FraudModel
>>> model = FraudModel("logreg", ("amount",))
>>> policy = ServingPolicy(min_labels=2)
>>> policy.may_serve(model)
False
>>> model.learn_one({"amount": 10.0}, False); model.learn_one({"amount": 900.0}, True)
>>> policy.may_serve(model)
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fraudstream.service.errors import ModelVersionError
from fraudstream.service.metrics import Metrics
from fraudstream.service.model import FraudModel
from fraudstream.service.pipeline import ActiveScorer
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.rules import RulesPrior

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServingPolicy:
    """When a learnt model may replace the rules prior.

    Parameters
    ----------
    min_labels
        Labels a model must have learnt (``Settings.min_labels_for_model``);
        at least one of them must be a fraud, or it has never seen the class
        it is meant to find.
    """

    min_labels: int

    def may_serve(self, model: FraudModel) -> bool:
        """Whether ``model`` may score instead of the rules prior."""
        return model.labels_learnt >= self.min_labels and model.frauds_learnt > 0


class ModelWatcher:
    """Keeps the active scorer current: the newest verified model, or the rules prior.

    A version is used for scoring once the :class:`ServingPolicy` allows it;
    before that the transparent rules prior scores. A version that fails
    verification is refused (logged and counted) and the scorer in use stays.

    Parameters
    ----------
    registry
        Where versions are published.
    feature_names
        The features the scorer computes; a model trained on others is refused.
    policy
        When a model may serve.
    poll_s
        How often the registry is asked for a new version.
    metrics
        Counts refusals and shows the version in use.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        feature_names: Sequence[str],
        *,
        policy: ServingPolicy,
        poll_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.feature_names = tuple(feature_names)
        self.policy = policy
        self.poll_s = poll_s
        self.metrics = metrics
        self.clock = clock
        self.active = ActiveScorer(RulesPrior(self.feature_names), "rules", 0)
        self._seen_version = 0
        self._next_poll = 0.0

    def current(self) -> ActiveScorer:
        """The scorer to use for the next batch (polls the registry every ``poll_s``)."""
        now = self.clock()
        if now >= self._next_poll:
            self._next_poll = now + self.poll_s
            self.refresh()
        return self.active

    def refresh(self) -> None:
        """Load the newest version now if it is new, verified and allowed to serve."""
        latest = self.registry.latest_version()
        if latest is None or latest == self._seen_version:
            return
        self._seen_version = latest
        try:
            loaded = self.registry.load(latest)
        except ModelVersionError as exc:
            self.metrics.model_refused.inc()
            log.error(
                "model version %s refused, keeping version %s: %s", latest, self.active.version, exc
            )
            return
        model = loaded.model
        if model.feature_names != self.feature_names:
            self.metrics.model_refused.inc()
            log.error("model version %s was trained on other features; not used", latest)
            return
        if self.policy.may_serve(model):
            self.active = ActiveScorer(model, "model", latest)
            self.metrics.model_version.set(latest)
            log.info(
                "scoring with model version %s (%s labels, %s frauds)",
                latest,
                model.labels_learnt,
                model.frauds_learnt,
            )
