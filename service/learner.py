"""The learner: turns delayed labels into model updates and signed model versions.

For a batch of labels, :meth:`Learner.learn_many`

1. fetches the feature snapshots stored at scoring time (one round trip);
   a missing or expired snapshot is returned as rejected, for ``labels.dlq``
   (or, while the transaction may still be scored, to wait for it: see
   :mod:`fraudstream.service.waiting_labels`);
2. claims each label once with its verdict (one round trip), so a redelivered
   label is counted as a duplicate, not learnt twice, and a label that says the
   opposite of the one learnt is returned as rejected (a conflict), not learnt;
3. feeds the label facts to the feature store (terminal fraud rates);
4. updates the progressive metrics with the scores the scorer gave *then*
   (prequential), and only after that learns the batch with
   :func:`~fraudstream.service.serving.learn_labelled` on the features from the
   snapshots (which first records the model's and the rules prior's scores of
   those rows for the serving policy) -- the model never sees a label before the
   transaction was scored, nor features from after it.

:meth:`Learner.maybe_publish` publishes a version every
``publish_every_labels`` labels, or after ``publish_every_s`` with at
least one new label. The Kafka loop around it (the lead's) should commit the
``labels`` offsets only after a publish: claims are tagged with the pending
version, so labels learnt by a learner that crashed before publishing are
learnt again by the next one rather than lost.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fraudstream.service.errors import (
    ConfigurationError,
    FraudstreamError,
    LabelConflictError,
    MissingSnapshotError,
    ModelVersionError,
)
from fraudstream.service.features.store import LabelFact
from fraudstream.service.model import FraudModel
from fraudstream.service.progressive import ProgressiveMetrics
from fraudstream.service.registry import ModelRegistry, ModelVersion
from fraudstream.service.rules import RulesPrior
from fraudstream.service.schemas import Label
from fraudstream.service.serving import learn_labelled
from fraudstream.service.snapshots import (
    LABEL_CLAIMED,
    LABEL_CONFLICT,
    LABEL_HELD,
    Snapshot,
    feature_set_id,
)
from fraudstream.service.stores import snapshot_store

log = logging.getLogger(__name__)


def _conflict_reason(label: Label) -> str:
    """Why a label with the other verdict than the one learnt is not learnt.

    >>> from fraudstream.service.schemas import Label
    >>> label = Label(transaction_id="t1", is_fraud=True, labeled_at="2026-01-02T00:00:00Z")
    >>> _conflict_reason(label).split(" and ")[0]
    'transaction t1 was labelled genuine; this label says fraud'
    """
    said, before = ("fraud", "genuine") if label.is_fraud else ("genuine", "fraud")
    return (
        f"transaction {label.transaction_id} was labelled {before}; this label says {said} "
        "and is not learnt (a model cannot unlearn the first label)"
    )


class LabelSink(Protocol):
    """The part of :class:`fraudstream.service.features.store.FeatureStore` the learner uses."""

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        """Feed received labels into the label-aware features."""
        ...


class LabelSnapshots(Protocol):
    """The part of :class:`fraudstream.service.snapshots.SnapshotStore` the learner uses.

    The single-node and the cluster snapshot stores both provide it.
    """

    def get_many(self, transaction_ids: Sequence[str]) -> list[Snapshot | None]:
        """The snapshots stored at scoring time (``None`` when missing)."""
        ...

    def claim_many(
        self,
        transaction_ids: Sequence[str],
        is_fraud: Sequence[bool],
        token: str = "1",
        stale: Sequence[str] = (),
    ) -> list[int]:
        """Claim the labels of ``transaction_ids`` for ``token``: one outcome per id."""
        ...


class VersionStore(Protocol):
    """The part of :class:`fraudstream.service.registry.ModelRegistry` the learner uses."""

    def versions(self) -> list[int]:
        """Kept versions, ascending."""
        ...

    def load(self, version: int) -> ModelVersion:
        """A verified version."""
        ...

    def reserve_version(self) -> int:
        """The number of the coming version."""
        ...

    def abandoned_versions(self) -> list[int]:
        """Reserved and never published versions."""
        ...

    def publish(
        self,
        model: FraudModel,
        metrics: Mapping[str, Any] | None = None,
        version: int | None = None,
        extra: Mapping[str, Any] | None = None,
        lease: str | None = None,
    ) -> int:
        """Store ``model`` as version ``version`` while ``lease`` holds the lease; returns it."""
        ...


@dataclass(frozen=True, slots=True)
class RejectedLabel:
    """A label that cannot be learnt; the caller dead-letters it with ``error`` and ``reason``."""

    label: Label
    error: type[FraudstreamError]
    reason: str
    #: No snapshot yet: the transaction may still be scored (the label can wait for it).
    waitable: bool = False


@dataclass(frozen=True, slots=True)
class LearnOutcome:
    """What one :meth:`Learner.learn_many` call did."""

    learnt: int = 0
    frauds: int = 0
    duplicates: int = 0
    rejected: tuple[RejectedLabel, ...] = ()


class Learner:
    """Learns from labels, one active instance per model.

    Parameters
    ----------
    model
        The model to update.
    snapshots
        Where the scorer stored each transaction's features.
    registry
        Where versions are published.
    feature_store
        Receives the label facts (terminal fraud rates).
    publish_every_labels, publish_every_s
        Publish after this many new labels, or this long with at least one.
    metrics_window, alert_threshold
        Progressive metrics parameters.
    version
        Version ``model`` was loaded from (0 for a fresh model).
    lease
        This learner's name in the learner lease it holds
        (:mod:`~fraudstream.service.learner_lease`): a version is published only
        while it holds it. ``None``: no lease (a learner alone by construction).
    clock
        Monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        model: FraudModel,
        snapshots: LabelSnapshots,
        registry: VersionStore,
        feature_store: LabelSink,
        *,
        publish_every_labels: int = 1000,
        publish_every_s: float = 60.0,
        metrics_window: int = 10_000,
        alert_threshold: float = 0.5,
        version: int = 0,
        lease: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.snapshots = snapshots
        self.registry = registry
        self.feature_store = feature_store
        self.publish_every_labels = publish_every_labels
        self.publish_every_s = publish_every_s
        self.metrics = ProgressiveMetrics(metrics_window, alert_threshold)
        self.version = version
        self.lease = lease
        self.clock = clock
        self.duplicates = 0
        self.rejected = 0
        self._feature_set = feature_set_id(model.feature_names)
        self._prior = RulesPrior(model.feature_names)
        # One learner runs per model (the holder of the lease): every reservation
        # not yet published belongs to a learner that died or stopped, so its
        # label claims may be retaken.
        self._stale = [str(v) for v in registry.abandoned_versions()]
        self._pending = registry.reserve_version()
        self._since_publish = 0
        self._last_publish_s = clock()
        # Labels learnt under the pending version (its claims hold them), and
        # whether a call failed since the last that was done: its claims must be
        # retaken by the retry under the same version, so none is published.
        self._learnt_since_publish: set[str] = set()
        self._retrying = False

    # -- construction ----------------------------------------------------------

    @classmethod
    def resume(
        cls,
        snapshots: LabelSnapshots,
        registry: VersionStore,
        feature_store: LabelSink,
        *,
        model_name: str,
        feature_names: Sequence[str],
        **params: Any,
    ) -> Learner:
        """Continue from the newest loadable version, or start a fresh ``model_name``.

        A version that fails verification is skipped (logged) for the previous one.
        A version of another model than ``model_name`` is continued, with a warning.
        """
        for version in reversed(registry.versions()):
            try:
                cp = registry.load(version)
            except ModelVersionError as exc:
                log.error("model version %d refused: %s", version, exc)
                continue
            if cp.model.feature_names != tuple(feature_names):
                raise ConfigurationError(
                    f"model version {version} was trained on other features than the "
                    "feature store provides; publish a fresh model or roll back"
                )
            log.info("learner resumes from version %d (%d labels)", version, cp.model.labels_learnt)
            if cp.model.name != model_name:
                log.warning(
                    "FRAUDSTREAM_MODEL is %r, but model version %d is a %r model: the learner "
                    "continues it (the setting chooses the model of an empty registry only)",
                    model_name,
                    version,
                    cp.model.name,
                )
            return cls(cp.model, snapshots, registry, feature_store, version=version, **params)
        fresh = FraudModel(model_name, feature_names)
        return cls(fresh, snapshots, registry, feature_store, **params)

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        client: Any,
        feature_store: LabelSink,
        feature_names: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
        lease: str | None = None,
    ) -> Learner:
        """Build snapshots, registry and learner from the settings (``lease``: its holder name)."""
        snapshots = snapshot_store(
            client,
            settings.redis_prefix,
            settings.snapshot_ttl_s,
            getattr(settings, "redis_cluster_wait_replicas", 0),
        )
        registry = ModelRegistry(
            client, settings.redis_prefix, settings.model_signing_key, settings.model_versions_kept
        )
        return cls.resume(
            snapshots,
            registry,
            feature_store,
            model_name=settings.model,
            feature_names=feature_names,
            publish_every_labels=settings.publish_every_labels,
            publish_every_s=settings.publish_every_s,
            metrics_window=settings.metrics_window,
            alert_threshold=settings.alert_threshold,
            clock=clock,
            lease=lease,
        )

    # -- learning --------------------------------------------------------------

    def learn_many(self, labels: Sequence[Label]) -> LearnOutcome:
        """Learn a batch of labels (see the module docstring for the steps)."""
        if not labels:
            return LearnOutcome()
        snaps = self.snapshots.get_many([lb.transaction_id for lb in labels])
        rejected: list[RejectedLabel] = []
        usable = []
        for label, snap in zip(labels, snaps, strict=True):
            if snap is None:
                rejected.append(
                    RejectedLabel(
                        label,
                        MissingSnapshotError,
                        f"no feature snapshot for transaction {label.transaction_id} "
                        "(never scored, or older than snapshot_ttl_s)",
                        waitable=True,
                    )
                )
            elif snap.feature_set != self._feature_set:
                rejected.append(
                    RejectedLabel(
                        label,
                        MissingSnapshotError,
                        f"snapshot of {label.transaction_id} has another feature set",
                    )
                )
            else:
                usable.append((label, snap))

        self._retrying = True  # until this call is done: no version is published meanwhile
        claims = self.snapshots.claim_many(
            [lb.transaction_id for lb, _ in usable],
            [lb.is_fraud for lb, _ in usable],
            token=str(self._pending),
            stale=self._stale,
        )
        # A label held by this learner's pending version and not learnt under it
        # was claimed by a call that then failed (Redis went away, or a master
        # refused its part while its slots were resharded: the claims on the
        # others stay): the retry learns it, not a duplicate. Its first occurrence.
        fresh = []
        taken: set[str] = set()
        conflicts = 0
        for (lb, snap), claim in zip(usable, claims, strict=True):
            tx_id = lb.transaction_id
            if claim == LABEL_CONFLICT:
                conflicts += 1
                rejected.append(RejectedLabel(lb, LabelConflictError, _conflict_reason(lb)))
                continue
            if tx_id in taken:
                continue
            if claim == LABEL_CLAIMED or (
                claim == LABEL_HELD and tx_id not in self._learnt_since_publish
            ):
                fresh.append((lb, snap))
                taken.add(tx_id)
        duplicates = len(usable) - len(fresh) - conflicts

        facts = [
            LabelFact(lb.transaction_id, s.card_id, s.terminal_id, s.event_time_ms, lb.is_fraud)
            for lb, s in fresh
        ]
        if facts:
            # Before learning, so a failure here leaves the model untouched; the
            # claims stay tagged with the unpublished version, so a redelivery
            # after a restart learns these labels again, and so does a retry by
            # this learner (held by its version, not learnt under it).
            self.feature_store.record_labels(facts)
        self._learnt_since_publish.update(lb.transaction_id for lb, _ in fresh)
        self._retrying = False

        frauds = 0
        if fresh:
            # Prequential: the scores given before the labels existed, then learn. A
            # snapshot rebuilt from Kafka after a state loss has no score (NaN).
            y = np.array([label.is_fraud for label, _ in fresh], dtype=bool)
            scored = [(snap.score, label.is_fraud) for label, snap in fresh]
            scored = [(sc, fraud) for sc, fraud in scored if math.isfinite(sc)]
            self.metrics.update_many([sc for sc, _ in scored], [fraud for _, fraud in scored])
            X = np.stack([snap.features for _, snap in fresh]).astype(np.float64)
            learn_labelled(self.model, self._prior, X, y)
            frauds = int(y.sum())

        self._since_publish += len(fresh)
        self.duplicates += duplicates
        # A label that may wait for its snapshot counts once it is dead-lettered
        # (gave_up), not at each look while it waits.
        self.rejected += sum(not r.waitable for r in rejected)
        return LearnOutcome(len(fresh), frauds, duplicates, tuple(rejected))

    def gave_up(self, count: int) -> None:
        """``count`` labels without a snapshot were dead-lettered (the versions' ``rejected``)."""
        self.rejected += count

    # -- publishing ---------------------------------------------------------------

    @property
    def labels_since_publish(self) -> int:
        """Labels learnt but not yet in a published version."""
        return self._since_publish

    def maybe_publish(self) -> int | None:
        """Publish a version if enough labels or time have passed; the new version or None."""
        if self._since_publish == 0:
            return None
        due_by_count = self._since_publish >= self.publish_every_labels
        due_by_time = self.clock() - self._last_publish_s >= self.publish_every_s
        return self.publish() if due_by_count or due_by_time else None

    def publish(self) -> int | None:
        """Publish now if anything was learnt since the last version (call on shutdown)."""
        if self._since_publish == 0:
            return None
        if self._retrying:
            log.info("learner: a batch of labels is being retried; the version waits for it")
            return None
        version = self.registry.publish(
            self.model,
            self.metrics.report(),
            version=self._pending,
            extra={"duplicates": self.duplicates, "rejected": self.rejected},
            lease=self.lease,
        )
        self.version = version
        self._pending = self.registry.reserve_version()
        self._learnt_since_publish.clear()
        self._since_publish = 0
        self._last_publish_s = self.clock()
        return version
