"""Which model serves: the scorer's view of the registry.

:class:`ModelWatcher` polls the registry between batches and keeps the active
scorer current. When a learnt model may replace the transparent rules prior
(or a newer version the one in use) is decided by one rule,
:class:`~fraudstream.service.serving.ServingPolicy` (measured quality on recent
labels); it is re-exported here for the watcher's callers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from fraudstream.service.errors import ModelVersionError
from fraudstream.service.metrics import Metrics
from fraudstream.service.pipeline import ActiveScorer
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.rules import RulesPrior
from fraudstream.service.serving import ServingPolicy

__all__ = ["ModelWatcher", "ServingPolicy"]

log = logging.getLogger(__name__)


class ModelWatcher:
    """Keeps the active scorer current: the newest verified model, or the rules prior.

    A version is used for scoring once the :class:`ServingPolicy` allows it
    (it has learnt enough labels and ranks its recent labels at least as well
    as the rules prior); before that the transparent rules prior scores, and a
    newer version that is not allowed is not swapped in. A version that fails
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
        why_not = self.policy.reason(model)
        if why_not is not None:
            log.info("model version %s not used yet: %s", latest, why_not)
            return
        self.active = ActiveScorer(model, "model", latest)
        self.metrics.model_version.set(latest)
        log.info(
            "scoring with model version %s (%s labels, %s frauds)",
            latest,
            model.labels_learnt,
            model.frauds_learnt,
        )
