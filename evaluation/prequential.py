"""The one evaluation engine: replay a labelled stream through the service's code.

:func:`replay` streams a :class:`~fraudstream.evaluation.stream.LabelledStream`
in event-time order, in fixed event-time batches (default one hour), through
the same parts the service runs:

1. the labels that arrived *before the batch starts* (arrival times from a
   :class:`~fraudstream.producers.labels.LabelDelay`) are delivered in arrival
   order, as the learner does: first to the feature store
   (``record_labels``), then, for every model,
   :func:`~fraudstream.service.serving.learn_labelled` with the features the
   transaction had when it was scored (the learner's snapshot): the model's
   and the prior's scores of those rows are recorded for the serving policy,
   then the model learns them;
2. the batch is featurised by the feature store (``update_and_compute``, the
   Redis store or the in-memory reference behind the same
   :class:`~fraudstream.service.features.store.FeatureStore` interface) and scored
   by the rules prior and by each model; each model *as served*: the prior
   until :class:`~fraudstream.service.serving.ServingPolicy` lets the model
   serve (measured quality on recent labels), then the model.

No label reaches a model, nor the features, before its transaction was scored
and before it arrived. Features do not depend on scores, so one pass serves
every model side by side. :func:`replay` returns every transaction's scores;
:mod:`fraudstream.evaluation.report` turns them into the handbook's metrics.

Differences from the deployed service, on purpose: models are refreshed at
batch boundaries (the learner publishes every ``publish_every_labels``
labels or ``publish_every_s`` seconds), and nothing goes through Kafka
(``fraudstream evaluate --via kafka`` runs that path,
:mod:`fraudstream.evaluation.via_kafka`). Once a model serves it keeps
serving: the service's watcher would keep the last version allowed to serve.

Examples
--------
>>> from fraudstream.producers.simulator import SimulationConfig, simulate
>>> from fraudstream.evaluation.stream import LabelledStream
>>> stream = LabelledStream.from_simulation(
...     simulate(SimulationConfig(n_customers=40, n_terminals=80, n_days=4)))
>>> result = replay(stream, ReplayConfig(models=("logreg",), label_delay_days=1.0),
...                 store="reference")
>>> sorted(result.scores), result.scores["rules"].shape == (len(stream),)
(['logreg', 'rules'], True)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fraudstream.evaluation.stream import LabelledStream
from fraudstream.producers.labels import LabelDelay
from fraudstream.service.features.definitions import DAY_MS, FeatureConfig
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import FeatureStore, LabelFact
from fraudstream.service.model import FraudModel
from fraudstream.service.rules import RulesPrior
from fraudstream.service.serving import ServingPolicy, learn_labelled
from fraudstream.service.settings import DAY_S

__all__ = ["ReplayConfig", "ReplayResult", "StoreKind", "replay"]

StoreKind = Literal["redis", "reference"]


@dataclass(frozen=True)
class ReplayConfig:
    """How labels arrive and what is compared.

    Parameters
    ----------
    models
        Catalogue models compared side by side (the rules prior always is).
    label_delay_days
        Delay of every label not found early (default 7, the handbook's).
    early_fraud_share
        Share of frauds whose label arrives earlier, uniformly between one hour
        and the delay (default 0: the handbook's protocol has none).
    batch_s
        Event-time length of a batch (default 3600 s).
    policy
        When a model may replace the rules prior (default :class:`ServingPolicy`).
    """

    models: tuple[str, ...] = ("forest",)
    label_delay_days: float = 7.0
    early_fraud_share: float = 0.0
    batch_s: int = 3600
    policy: ServingPolicy = field(default_factory=ServingPolicy)

    def label_delay(self) -> LabelDelay:
        """The label delay model."""
        return LabelDelay(
            delay_s=self.label_delay_days * DAY_S,
            early_fraud_prob=self.early_fraud_share,
            early_min_s=min(3600.0, self.label_delay_days * DAY_S),
        )


@dataclass
class ReplayResult:
    """Every transaction's scores, and what happened while replaying.

    Attributes
    ----------
    scores
        ``"rules"`` and each model *as served* -> score of every transaction.
    model_scores
        Each model's own score, served or not.
    labeled_ms
        When each label arrived.
    serving_from_ms
        Event time of the first batch each model served (``None``: never).
    learnt_at_score
        Labels each model had learnt when each transaction was scored.
    delivered_at_score
        Labels delivered when each transaction was scored.
    features
        Feature names, and (when asked) every transaction's features.
    timings_s, learn_s, score_s
        Wall time of the phases; per model, time spent learning and scoring.
    """

    scores: dict[str, np.ndarray]
    model_scores: dict[str, np.ndarray]
    labeled_ms: np.ndarray
    serving_from_ms: dict[str, int | None]
    learnt_at_score: dict[str, np.ndarray]
    delivered_at_score: np.ndarray
    feature_names: tuple[str, ...]
    store: str
    timings_s: dict[str, float]
    learn_s: dict[str, float]
    score_s: dict[str, float]
    labels_learnt: dict[str, int]
    X: np.ndarray | None = None


@contextlib.contextmanager
def feature_store(
    kind: StoreKind | FeatureStore, config: FeatureConfig, redis_url: str | None = None
) -> Iterator[tuple[FeatureStore, str]]:
    """Open a fresh feature store.

    Redis (the given server, else one started for the run) or the in-memory
    reference; or the store object given, as it is.
    """
    if kind == "reference":
        yield ReferenceFeatureStore(config), "reference"
    elif kind == "redis":
        import redis

        from fraudstream.devstack import redis_given_or_started
        from fraudstream.service.features.redis_store import RedisFeatureStore

        with redis_given_or_started(redis_url) as url:
            client = redis.Redis.from_url(url)
            try:
                yield RedisFeatureStore(client, config), "redis"
            finally:
                with contextlib.suppress(Exception):
                    keys = list(client.scan_iter(f"{config.prefix}:*", count=10_000))
                    for lo in range(0, len(keys), 10_000):
                        client.delete(*keys[lo : lo + 10_000])
                client.close()
    elif isinstance(kind, str):
        raise ValueError(f"unknown store {kind!r}: choose redis or reference")
    else:
        yield kind, type(kind).__name__


def replay(
    stream: LabelledStream,
    config: ReplayConfig | None = None,
    *,
    store: StoreKind | FeatureStore = "redis",
    feature_config: FeatureConfig | None = None,
    redis_url: str | None = None,
    keep_features: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay ``stream`` prequentially (see the module docstring).

    Parameters
    ----------
    stream
        The labelled stream.
    config
        Label delays, models, batch length, serving policy.
    store
        ``"redis"`` (default: a fresh key prefix on ``redis_url``, or on a
        ``redis-server`` started for the run), ``"reference"``, or an empty store.
    feature_config
        Windows and lateness (default: the service's defaults).
    keep_features
        Keep every transaction's features in :attr:`ReplayResult.X`.
    progress
        Called with ``(transactions done, transactions)`` after each batch.
    """
    config = config or ReplayConfig()
    feature_config = feature_config or FeatureConfig(prefix=f"eval{time.time_ns():x}")
    started = time.perf_counter()
    labeled_ms = stream.label_times(config.label_delay())
    with feature_store(store, feature_config, redis_url) as (features, store_name):
        run = _Run(stream, config, labeled_ms, features, keep_features, progress)
        run.loop()
    run.timings["total"] = time.perf_counter() - started
    return run.result(store_name)


class _Run:
    """State of one prequential pass."""

    def __init__(
        self,
        stream: LabelledStream,
        config: ReplayConfig,
        labeled_ms: np.ndarray,
        features: FeatureStore,
        keep_features: bool,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.stream, self.config, self.features = stream, config, features
        self.labeled_ms = labeled_ms
        self.progress = progress
        names = features.names
        n = len(stream)
        # The learner's snapshots: float32, as the service stores them.
        self.X = np.zeros((n, len(names)), dtype=np.float32)
        self.keep_features = keep_features
        self.prior = RulesPrior(names)
        self.models = {name: FraudModel(name, names) for name in config.models}
        self.rules = np.zeros(n)
        self.model_scores = {name: np.zeros(n) for name in config.models}
        self.serving = {name: np.zeros(n, dtype=bool) for name in config.models}
        self.serving_from: dict[str, int | None] = dict.fromkeys(config.models)
        self.learnt_at_score = {name: np.zeros(n, dtype=np.int64) for name in config.models}
        self.delivered_at_score = np.zeros(n, dtype=np.int64)
        self.arrival_order = np.argsort(labeled_ms, kind="stable")
        self.delivered = 0
        self.timings = {"features": 0.0, "labels": 0.0}
        self.learn_s = dict.fromkeys(config.models, 0.0)
        self.score_s = dict.fromkeys(config.models, 0.0)

    def loop(self) -> None:
        stream = self.stream
        n = len(stream)
        if n == 0:
            return
        batch_ms = self.config.batch_s * 1000
        first = int(stream.time_ms[0]) // batch_ms * batch_ms
        n_batches = (int(stream.time_ms[-1]) - first) // batch_ms + 1
        edges = np.searchsorted(stream.time_ms, first + batch_ms * np.arange(n_batches + 1))
        for b in range(n_batches):
            lo, hi = int(edges[b]), int(edges[b + 1])
            # Labels that arrived before this batch starts, before it is scored.
            self._deliver(first + b * batch_ms)
            if hi > lo:
                self._score(lo, hi, first + b * batch_ms)
                if self.progress is not None:
                    self.progress(hi, n)

    def _deliver(self, before_ms: int) -> None:
        order = self.arrival_order
        stop = int(np.searchsorted(self.labeled_ms[order], before_ms, side="left"))
        if stop <= self.delivered:
            return
        t0 = time.perf_counter()
        rows = order[self.delivered : stop]
        s = self.stream
        fraud = s.is_fraud[rows]
        facts = [
            LabelFact(tx_id, s.card_names[c], s.terminal_names[t], int(ms), bool(y))
            for tx_id, c, t, ms, y in zip(
                s.transaction_ids(rows),
                s.card[rows].tolist(),
                s.terminal[rows].tolist(),
                s.time_ms[rows].tolist(),
                fraud.tolist(),
                strict=True,
            )
        ]
        # As the learner: the label facts reach the features first, then the models.
        self.features.record_labels(facts)
        self.timings["labels"] += time.perf_counter() - t0
        X = self.X[rows].astype(np.float64)
        for name, model in self.models.items():
            t1 = time.perf_counter()
            learn_labelled(model, self.prior, X, fraud)
            self.learn_s[name] += time.perf_counter() - t1
        self.delivered = stop

    def _score(self, lo: int, hi: int, batch_start_ms: int) -> None:
        t0 = time.perf_counter()
        batch = self.features.update_and_compute(self.stream.transactions(lo, hi))
        self.timings["features"] += time.perf_counter() - t0
        X = batch.values  # scored as computed; learnt later from the float32 snapshot
        self.X[lo:hi] = X
        self.rules[lo:hi] = self.prior.score_many(X, reasons_at=2.0)[0]
        self.delivered_at_score[lo:hi] = self.delivered
        for name, model in self.models.items():
            t1 = time.perf_counter()
            self.model_scores[name][lo:hi] = model.proba_many(X)
            self.score_s[name] += time.perf_counter() - t1
            if self.serving_from[name] is None and self.config.policy.may_serve(model):
                self.serving_from[name] = batch_start_ms
            self.serving[name][lo:hi] = self.serving_from[name] is not None
            self.learnt_at_score[name][lo:hi] = model.labels_learnt

    def result(self, store_name: str) -> ReplayResult:
        scores = {"rules": self.rules}
        for name in self.config.models:
            scores[name] = np.where(self.serving[name], self.model_scores[name], self.rules)
        return ReplayResult(
            scores=scores,
            model_scores=self.model_scores,
            labeled_ms=self.labeled_ms,
            serving_from_ms=self.serving_from,
            learnt_at_score=self.learnt_at_score,
            delivered_at_score=self.delivered_at_score,
            feature_names=tuple(self.features.names),
            store=store_name,
            timings_s={k: round(v, 2) for k, v in self.timings.items()},
            learn_s={k: round(v, 2) for k, v in self.learn_s.items()},
            score_s={k: round(v, 3) for k, v in self.score_s.items()},
            labels_learnt={k: m.labels_learnt for k, m in self.models.items()},
            X=self.X if self.keep_features else None,
        )


def day_of(time_ms: np.ndarray) -> np.ndarray:
    """UTC day number of epoch-millisecond times.

    >>> day_of(np.array([86_400_000 * 3 + 5])).tolist()
    [3]
    """
    return np.asarray(time_ms, dtype=np.int64) // DAY_MS
