"""Detection quality on handbook-style data, measured prequentially under delayed labels.

:func:`evaluate` replays a simulation (:mod:`fraudstream.producers.simulator`) through the
same parts the service uses, in event-time order and in fixed event-time
batches (default one simulated hour):

1. every label whose arrival time (:mod:`fraudstream.producers.labels`, default 7 days,
   30 % of frauds earlier) is *before the batch starts* is delivered, in
   arrival order: first to the feature store (``record_labels``, the
   label-aware terminal/card fraud counts), then ``learn_one(x, y)`` to every
   model, with ``x`` the features the transaction had when it was scored (the
   learner's snapshot);
2. the batch goes through ``update_and_compute`` (one call per batch, as the
   scorer does) and is scored by the rules prior alone, and by each catalogue
   model *as the service would* -- the rules prior until the model has learnt
   ``min_labels_for_model`` labels with at least one fraud
   (:class:`fraudstream.service.model_watcher.ServingPolicy`, the service's own rule),
   then the model -- and by each model on its own ("model only", whatever it has learnt).

A transaction's label therefore never reaches the model, nor the features,
before the transaction was scored, and no label is used before it arrives.
Features do not depend on the scores (labels arrive independently of alerts in
the simulator), so one pass of the stream serves every scorer side by side.

Metrics, over every scored transaction and over those after a warm-up: ROC AUC,
average precision, card precision@k (per UTC day, of the ``k`` cards with the
highest maximum score that day, the share with a fraud that day; averaged over
days) and, at the alert threshold, alerts per day, precision and recall.

Differences from the real service, on purpose: models are updated at batch
boundaries (the service publishes a version every ``publish_every_labels``
labels or ``publish_every_s`` seconds, which at real-time pace is fresher
than one simulated hour), and nothing goes through Kafka (the transport does
not change the scores).

Examples
--------
>>> report = evaluate(QualityConfig(days=3, customers=40, terminals=80, models=("logreg",),
...                                  min_labels_for_model=20), store="reference")
>>> sorted(report.metrics)
['logreg', 'logreg:model-only', 'rules']
>>> report.metrics["rules"]["full"]["n"] == report.n_transactions
True
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import (
    DAY_MS,
    SCENARIO_NAMES,
    Simulation,
    SimulationConfig,
    simulate,
)
from fraudstream.producers.stream import label_simulation
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import FeatureStore, LabelFact
from fraudstream.service.model import FraudModel
from fraudstream.service.model_watcher import ServingPolicy
from fraudstream.service.progressive import average_precision, roc_auc
from fraudstream.service.rules import RulesPrior
from fraudstream.service.schemas import Transaction
from fraudstream.service.settings import DAY_S

__all__ = [
    "HANDBOOK_BASELINE",
    "QualityConfig",
    "QualityReport",
    "average_precision",
    "card_precision_at_k",
    "evaluate",
    "roc_auc",
    "scorer_metrics",
]

#: The Fraud Detection Handbook's best batch models on its simulated data
#: (7-day delay, trained on a week, tested on the following week(s)).
HANDBOOK_BASELINE: dict[str, float] = {
    "roc_auc": 0.88,
    "average_precision": 0.69,
    "card_precision_at_100": 0.30,
}

StoreKind = Literal["redis", "reference"]


# -- metrics -------------------------------------------------------------------------------


def card_precision_at_k(
    day: np.ndarray, card: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = 100
) -> float:
    """Card precision@k: per day, the share of the ``k`` riskiest cards that had a fraud.

    A card's score on a day is the maximum score of its transactions that day,
    and it counts as fraudulent when any of them is a fraud. Cards are ranked by
    that score (ties: lower card number first) and the fraudulent ones among the
    first ``k`` are divided by ``k`` (also on a day with fewer than ``k`` cards,
    as the handbook does). The result is the mean over the days present; NaN
    without transactions.

    Parameters
    ----------
    day, card
        Integer day and card number of each transaction.
    scores, labels
        Score and fraud flag of each transaction.
    k
        Cards an investigator checks per day.

    Examples
    --------
    Day 0: cards 1 (max 0.9, fraud), 2 (0.8, genuine), 3 (0.1, fraud); day 1: card 1
    (0.3, genuine), card 2 (0.7, fraud).

    >>> day = np.array([0, 0, 0, 0, 1, 1])
    >>> card = np.array([1, 1, 2, 3, 1, 2])
    >>> scores = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.7])
    >>> labels = np.array([False, True, False, True, False, True])
    >>> card_precision_at_k(day, card, scores, labels, k=2)  # (1/2 + 1/2) / 2
    0.5
    >>> card_precision_at_k(day, card, scores, labels, k=1)  # (1 + 1) / 2
    1.0
    """
    day = np.asarray(day, dtype=np.int64)
    if day.shape[0] == 0:
        return float("nan")
    card = np.asarray(card, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    # One group per (day, card): its maximum score and whether it had a fraud.
    order = np.lexsort((card, day))
    d, c = day[order], card[order]
    first = np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1])]
    starts = np.flatnonzero(first)
    g_day, g_card = d[starts], c[starts]
    g_score = np.maximum.reduceat(scores[order], starts)
    g_fraud = np.logical_or.reduceat(labels[order], starts)
    # Rank the groups within each day: day ascending, score descending, card ascending.
    rank_order = np.lexsort((g_card, -g_score, g_day))
    r_day, r_fraud = g_day[rank_order], g_fraud[rank_order]
    day_start = np.r_[True, r_day[1:] != r_day[:-1]]
    start_pos = np.maximum.accumulate(np.where(day_start, np.arange(r_day.shape[0]), 0))
    top = (np.arange(r_day.shape[0]) - start_pos) < k
    days, day_index = np.unique(r_day, return_inverse=True)
    hits = np.bincount(
        day_index, weights=(top & r_fraud).astype(np.float64), minlength=days.shape[0]
    )
    return float(np.mean(hits / k))


def scorer_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    day: np.ndarray,
    card: np.ndarray,
    *,
    threshold: float = 0.5,
    k: int = 100,
) -> dict[str, float]:
    """Every quality metric of one scorer over one period.

    Examples
    --------
    >>> m = scorer_metrics(np.array([0.9, 0.2, 0.6, 0.1]), np.array([True, False, False, True]),
    ...                    np.array([0, 0, 1, 1]), np.array([1, 2, 1, 2]), k=1)
    >>> m["roc_auc"], m["alerts_per_day"], m["precision_at_threshold"], m["card_precision_at_k"]
    (0.5, 1.0, 0.5, 0.5)
    """
    labels = np.asarray(labels, dtype=bool)
    alerted = scores >= threshold
    n_alerts = int(alerted.sum())
    tp = int((alerted & labels).sum())
    n_days = int(np.unique(day).shape[0]) if day.shape[0] else 0
    frauds = int(labels.sum())
    return {
        "n": int(labels.shape[0]),
        "frauds": frauds,
        "days": n_days,
        "roc_auc": roc_auc(scores, labels),
        "average_precision": average_precision(scores, labels),
        "card_precision_at_k": card_precision_at_k(day, card, scores, labels, k),
        "alerts_per_day": n_alerts / n_days if n_days else float("nan"),
        "precision_at_threshold": tp / n_alerts if n_alerts else float("nan"),
        "recall_at_threshold": tp / frauds if frauds else float("nan"),
    }


# -- configuration and report -------------------------------------------------------------


@dataclass(frozen=True)
class QualityConfig:
    """What to simulate and how to score it.

    Parameters
    ----------
    days, customers, terminals
        Simulation size (default 60 days, 5,000 customers, 10,000 terminals: the
        handbook's population; ``terminals=None`` means twice the customers).
    seed
        Simulation seed (default 0); the label delays are seeded from it too.
    label_delay_days, early_fraud_prob
        Label delay model (default 7 days, 30 % of frauds found earlier).
    models
        Catalogue models compared side by side (default ``logreg``, ``logreg_under``).
    min_labels_for_model
        Labels (with at least one fraud) before a model replaces the rules prior
        (default 500, the service's default).
    alert_threshold
        Score at or above which a transaction is alerted (default 0.5, the service's).
    warmup_days
        Days excluded from the ``post_warmup`` period (default 14: a week before any
        routine label arrives, and a week of learning).
    batch_s
        Event-time length of a batch (default 3600 s).
    top_k
        ``k`` of card precision@k (default 100).
    extras
        Extra simulator scenarios (default none: the handbook's three).
    keep_trace
        Keep per-transaction arrays in :attr:`QualityReport.trace` (for tests).
    """

    days: int = 60
    customers: int = 5_000
    terminals: int | None = None
    seed: int = 0
    label_delay_days: float = 7.0
    early_fraud_prob: float = 0.3
    models: tuple[str, ...] = ("logreg", "logreg_under")
    min_labels_for_model: int = 500
    alert_threshold: float = 0.5
    warmup_days: int = 14
    batch_s: int = 3600
    top_k: int = 100
    extras: frozenset[str] = field(default_factory=frozenset)
    keep_trace: bool = False

    def simulation(self) -> SimulationConfig:
        """The simulator configuration of this run."""
        return SimulationConfig(
            seed=self.seed,
            n_customers=self.customers,
            n_terminals=self.terminals or 2 * self.customers,
            n_days=self.days,
            extras=self.extras,
        )

    def label_delay(self) -> LabelDelay:
        """The label delay model of this run."""
        return LabelDelay(
            delay_s=self.label_delay_days * DAY_S, early_fraud_prob=self.early_fraud_prob
        )


@dataclass
class QualityReport:
    """Result of :func:`evaluate`; :meth:`to_dict` is JSON-ready.

    ``metrics[scorer][period]`` holds :func:`scorer_metrics` for the scorers
    ``rules`` (the prior alone), ``<model>`` (the service: prior until the model
    is active) and ``<model>:model-only``, and the periods ``full`` and
    ``post_warmup``. ``weekly[scorer]`` has the same metrics per 7-day block.
    """

    config: dict[str, Any]
    store: str
    n_transactions: int
    n_frauds: int
    scenarios: dict[str, int]
    labels_delivered: int
    model_active_from_day: dict[str, float | None]
    metrics: dict[str, dict[str, dict[str, float]]]
    weekly: dict[str, list[dict[str, float]]]
    by_scenario: dict[str, dict[str, dict[str, float]]]
    timings_s: dict[str, float]
    trace: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The report without the trace, with NaN as None (valid JSON)."""
        out = asdict(self)
        out.pop("trace")
        safe: dict[str, Any] = _nan_to_none(out)
        return safe


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# -- feature stores ------------------------------------------------------------------------


@contextlib.contextmanager
def redis_feature_store(config: FeatureConfig) -> Iterator[FeatureStore]:
    """A :class:`RedisFeatureStore` on a fresh ``redis-server`` (free port, temp dir)."""
    import redis

    from fraudstream.devstack import redis_given_or_started
    from fraudstream.service.features.redis_store import RedisFeatureStore

    with redis_given_or_started() as url:
        client = redis.Redis.from_url(url)
        try:
            yield RedisFeatureStore(client, config)
        finally:
            client.close()


@contextlib.contextmanager
def _store_context(
    store: StoreKind | FeatureStore, config: FeatureConfig
) -> Iterator[tuple[FeatureStore, str]]:
    if store == "redis":
        with redis_feature_store(config) as redis_store:
            yield redis_store, "redis"
    elif store == "reference":
        yield ReferenceFeatureStore(config), "reference"
    elif isinstance(store, str):
        raise ValueError(f"unknown store {store!r}: choose redis or reference")
    else:
        yield store, type(store).__name__


# -- the prequential loop ------------------------------------------------------------------


def _transactions(sim: Simulation, rows: np.ndarray) -> list[Transaction]:
    return [Transaction.model_validate(d) for d in sim.rows(rows)]


def evaluate(
    config: QualityConfig | None = None,
    *,
    store: StoreKind | FeatureStore = "redis",
    feature_config: FeatureConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> QualityReport:
    """Run the prequential evaluation of ``config`` (see the module docstring).

    Parameters
    ----------
    config
        What to simulate and compare (default :class:`QualityConfig`).
    store
        ``"redis"`` (default: a :class:`RedisFeatureStore` on a fresh local
        ``redis-server``), ``"reference"`` (the in-memory store), or an empty
        store object to use as it is.
    feature_config
        Windows and lateness (default: the service's defaults).
    progress
        Called with ``(day done, days)`` after each simulated day.
    """
    config = config or QualityConfig()
    feature_config = feature_config or FeatureConfig(prefix="quality")
    t_start = time.perf_counter()
    sim = simulate(config.simulation())
    labels = label_simulation(sim, config.label_delay())
    timings = {"simulate": time.perf_counter() - t_start}

    with _store_context(store, feature_config) as (features, store_name):
        run = _Run(config, sim, labels.labeled_ms, features, progress)
        run.loop()
    timings.update(run.timings)
    timings["total"] = time.perf_counter() - t_start
    return run.report(store_name, timings)


class _Run:
    """State of one prequential pass."""

    def __init__(
        self,
        config: QualityConfig,
        sim: Simulation,
        labeled_ms: np.ndarray,
        features: FeatureStore,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.config = config
        self.sim = sim
        self.labeled_ms = labeled_ms
        self.features = features
        self.progress = progress
        names = features.names
        self.names = names
        n = len(sim)
        self.X = np.zeros((n, len(names)), dtype=np.float64)
        self.prior = RulesPrior(names)
        self.models = {name: FraudModel(name, names) for name in config.models}
        self.rules_scores = np.zeros(n)
        self.model_scores = {name: np.zeros(n) for name in config.models}
        self.active = {name: np.zeros(n, dtype=bool) for name in config.models}
        self.learnt_at_score = {name: np.zeros(n, dtype=np.int64) for name in config.models}
        self.delivered_at_score = np.zeros(n, dtype=np.int64)
        self.label_order = np.argsort(labeled_ms, kind="stable")
        self.delivered = 0
        self.cards = sim.card_names()
        self.terminals = sim.terminal_names()
        self.timings = {"features": 0.0, "scoring": 0.0, "labels": 0.0}

    def loop(self) -> None:
        sim, config = self.sim, self.config
        start_ms = sim.config.start_ms
        batch_ms = config.batch_s * 1000
        n_batches = -(-config.days * DAY_MS // batch_ms)
        edges = np.searchsorted(sim.time_ms, start_ms + batch_ms * np.arange(n_batches + 1))
        batches_per_day = max(1, DAY_MS // batch_ms)
        for b in range(n_batches):
            lo, hi = int(edges[b]), int(edges[b + 1])
            # Labels that arrived before this batch starts, before it is scored.
            self._deliver(start_ms + b * batch_ms)
            if hi > lo:
                self._score(lo, hi)
            if self.progress is not None and (b + 1) % batches_per_day == 0:
                self.progress((b + 1) // batches_per_day, config.days)

    def _deliver(self, before_ms: int) -> None:
        order = self.label_order
        stop = int(np.searchsorted(self.labeled_ms[order], before_ms, side="left"))
        if stop <= self.delivered:
            return
        t0 = time.perf_counter()
        rows = order[self.delivered : stop]
        sim = self.sim
        fraud = sim.is_fraud[rows].tolist()
        facts = [
            LabelFact(sim.transaction_id(r), self.cards[c], self.terminals[t], int(ms), y)
            for r, c, t, ms, y in zip(
                rows.tolist(),
                sim.customer[rows].tolist(),
                sim.terminal[rows].tolist(),
                sim.time_ms[rows].tolist(),
                fraud,
                strict=True,
            )
        ]
        # As the learner: the label facts reach the features first, then the models.
        self.features.record_labels(facts)
        names = self.names
        for row, y in zip(self.X[rows].tolist(), fraud, strict=True):
            x = dict(zip(names, row, strict=True))
            for model in self.models.values():
                model.learn_one(x, y)
        self.delivered = stop
        self.timings["labels"] += time.perf_counter() - t0

    def _score(self, lo: int, hi: int) -> None:
        t0 = time.perf_counter()
        batch = self.features.update_and_compute(_transactions(self.sim, np.arange(lo, hi)))
        X = batch.values
        self.X[lo:hi] = X
        t1 = time.perf_counter()
        self.rules_scores[lo:hi] = self.prior.score_many(X, reasons_at=2.0)[0]
        self.delivered_at_score[lo:hi] = self.delivered
        policy = ServingPolicy(self.config.min_labels_for_model)
        for name, model in self.models.items():
            self.model_scores[name][lo:hi] = model.proba_many(X)
            self.active[name][lo:hi] = policy.may_serve(model)
            self.learnt_at_score[name][lo:hi] = model.labels_learnt
        self.timings["features"] += t1 - t0
        self.timings["scoring"] += time.perf_counter() - t1

    # -- report --------------------------------------------------------------------------

    def scorers(self) -> dict[str, np.ndarray]:
        out = {"rules": self.rules_scores}
        for name in self.config.models:
            out[name] = np.where(self.active[name], self.model_scores[name], self.rules_scores)
            out[f"{name}:model-only"] = self.model_scores[name]
        return out

    def report(self, store_name: str, timings: dict[str, float]) -> QualityReport:
        sim, config = self.sim, self.config
        day = (sim.time_ms - sim.config.start_ms) // DAY_MS
        card, y = sim.customer, sim.is_fraud
        periods = {"full": np.ones(len(sim), dtype=bool), "post_warmup": day >= config.warmup_days}
        thr, k = config.alert_threshold, config.top_k
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        weekly: dict[str, list[dict[str, float]]] = {}
        by_scenario: dict[str, dict[str, dict[str, float]]] = {}
        genuine = sim.scenario == 0
        post = periods["post_warmup"]
        for name, s in self.scorers().items():
            metrics[name] = {
                p: scorer_metrics(s[m], y[m], day[m], card[m], threshold=thr, k=k)
                for p, m in periods.items()
            }
            weekly[name] = []
            for week in range(-(-config.days // 7)):
                m = (day // 7) == week
                row = scorer_metrics(s[m], y[m], day[m], card[m], threshold=thr, k=k)
                weekly[name].append({"week": week, **row})
            by_scenario[name] = {}
            for code, scen in SCENARIO_NAMES.items():
                m = post & ((sim.scenario == code) | genuine)
                hits = post & (sim.scenario == code)
                if code == 0 or not hits.any():
                    continue
                by_scenario[name][scen] = {
                    "frauds": int(hits.sum()),
                    # How well the scorer separates this scenario's frauds from genuine ones.
                    "roc_auc_vs_genuine": roc_auc(s[m], y[m]),
                    "recall_at_threshold": float((s[hits] >= config.alert_threshold).mean()),
                }
        active_from: dict[str, float | None] = {}
        for name, active in self.active.items():
            idx = np.flatnonzero(active)
            active_from[name] = (
                round(float(sim.time_ms[idx[0]] - sim.config.start_ms) / DAY_MS, 2)
                if idx.shape[0]
                else None
            )
        trace: dict[str, np.ndarray] = {}
        if config.keep_trace:
            trace = {
                "time_ms": sim.time_ms,
                "labeled_ms": self.labeled_ms,
                "is_fraud": y,
                "scenario": sim.scenario,
                "card": card,
                "delivered_at_score": self.delivered_at_score,
                "X": self.X,
                **{f"learnt_at_score:{k}": v for k, v in self.learnt_at_score.items()},
                **{f"active:{k}": v for k, v in self.active.items()},
                **{f"score:{k}": v for k, v in self.scorers().items()},
            }
        cfg = asdict(config)
        cfg["extras"] = sorted(config.extras)
        cfg["terminals"] = config.terminals or 2 * config.customers
        cfg.pop("keep_trace")
        return QualityReport(
            config=cfg,
            store=store_name,
            n_transactions=len(sim),
            n_frauds=int(y.sum()),
            scenarios=sim.scenario_counts(),
            labels_delivered=self.delivered,
            model_active_from_day=active_from,
            metrics=metrics,
            weekly=weekly,
            by_scenario=by_scenario,
            timings_s={k: round(v, 2) for k, v in timings.items()},
            trace=trace,
        )


def scorer_names(models: Sequence[str]) -> list[str]:
    """Scorer names of a report, in display order.

    >>> scorer_names(["logreg"])
    ['rules', 'logreg', 'logreg:model-only']
    """
    out = ["rules"]
    for name in models:
        out += [name, f"{name}:model-only"]
    return out
