"""``fraudstream evaluate --via kafka``: the deployed path, with accelerated event time.

:func:`replay_via_kafka` runs what production runs: real Kafka, real Redis, and
one :class:`~fraudstream.service.app.Application` (scorer + learner) per model,
plus one that only ever serves the rules prior. The stream's transactions and
their labels (at their arrival times) are produced to Kafka in event-time
order, paced at ``speed`` event seconds per wall second; every application
publishes every decision to its own ``scores`` topic, which is read back to
give each transaction its score. The result has the same shape as the
in-process :func:`~fraudstream.evaluation.prequential.replay`, so the report is
the same.

What differs from in-process, by nature: the learner publishes a model
version every ``publish_every_labels`` labels or ``publish_every_s``
seconds, and scorers poll the registry every ``model_poll_s``, so how fresh a
model is depends on wall time; and a label is counted in the terminal features
when the learner gets to it, not at an exact event time. Figures agree with
in-process ones up to that (tested on a small stream).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import orjson
from kafka import TopicPartition
from pydantic import SecretStr

from fraudstream.devstack import kafka_given_or_started, redis_given_or_started
from fraudstream.evaluation.prequential import ReplayConfig, ReplayResult
from fraudstream.evaluation.stream import LabelledStream
from fraudstream.producers.pacing import Pacer
from fraudstream.producers.simulator import format_times_ms
from fraudstream.producers.sink import KafkaSink
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.kafka import check_reachable, ensure_topics, make_consumer
from fraudstream.service.serving import ServingPolicy
from fraudstream.service.settings import Settings

log = logging.getLogger(__name__)

#: Where the Kafka jars are cached when a broker has to be started.
KAFKA_CACHE = Path(".cache")

#: Settings of the applications under evaluation: versions published and picked
#: up within a second of wall time, since event time runs fast.
FAST_LEARNING = {
    "publish_every_labels": 500,
    "publish_every_s": 1.0,
    "model_poll_s": 0.5,
    "publish_scores": True,
    "metrics_port": 0,
}


class EvaluationTimeout(FraudstreamError):
    """The applications did not score every transaction in time."""


def replay_via_kafka(
    stream: LabelledStream,
    config: ReplayConfig,
    settings: Settings,
    *,
    bootstrap_servers: str | None = None,
    redis_url: str | None = None,
    speed: float = 43_200.0,
    progress: Callable[[int, int], None] | None = None,
    timeout_s: float | None = None,
) -> ReplayResult:
    """Replay ``stream`` through Kafka and the service's applications (see the module docstring).

    Parameters
    ----------
    stream, config
        The labelled stream; label delays and models (``batch_s`` is not used).
    settings
        Base settings of the applications (windows, thresholds, ...); topics,
        groups, Redis prefix and model are set per run and per application.
    bootstrap_servers, redis_url
        Servers to use (default: started for the run, stopped after).
    speed
        Event seconds per wall second (default 43,200: a day in two seconds).
    progress
        Called with ``(transactions scored by every application, transactions)``.
    timeout_s
        Longest wait for every score after the last event was sent (default:
        a minute plus the stream's duration at ``speed``).
    """
    started = time.perf_counter()
    labeled_ms = stream.label_times(config.label_delay())
    run = uuid.uuid4().hex[:10]
    scorers = ["rules", *config.models]
    with (
        kafka_given_or_started(bootstrap_servers, cache_dir=KAFKA_CACHE.resolve()) as bootstrap,
        redis_given_or_started(redis_url) as url,
    ):
        base = settings.model_copy(
            update={
                **FAST_LEARNING,
                "bootstrap_servers": bootstrap,
                "redis_url": SecretStr(url),
                "topic_transactions": f"eval-{run}-transactions",
                "topic_labels": f"eval-{run}-labels",
            }
        )
        # A given broker that is down: one line at once, not a 30 s retry.
        check_reachable(base, given_by="--bootstrap-servers" if bootstrap_servers else None)
        per_app = {name: _app_settings(base, run, name, config.policy) for name in scorers}
        ensure_topics(
            base,
            {
                base.topic_transactions: base.topic_partitions,
                base.topic_labels: base.topic_partitions,
                **{s.topic_scores: base.topic_partitions for s in per_app.values()},
            },
            replication=base.topic_replication,
        )
        with _applications(per_app.values()):
            _produce(stream, labeled_ms, base, speed)
            span_s = (int(stream.time_ms[-1]) - int(stream.time_ms[0])) / 1000 / speed
            scores = _collect(
                stream, per_app, timeout_s if timeout_s is not None else 60.0 + span_s, progress
            )
    result_scores = {name: scores[name][0] for name in scorers}
    served = {
        name: (
            int(stream.time_ms[np.flatnonzero(scores[name][1])[0]])
            if scores[name][1].any()
            else None
        )
        for name in config.models
    }
    n = len(stream)
    return ReplayResult(
        scores=result_scores,
        model_scores={name: scores[name][0] for name in config.models},
        labeled_ms=labeled_ms,
        serving_from_ms=served,
        learnt_at_score={name: np.zeros(n, dtype=np.int64) for name in config.models},
        delivered_at_score=np.zeros(n, dtype=np.int64),
        feature_names=(),
        store="redis",
        timings_s={"total": round(time.perf_counter() - started, 2)},
        learn_s={},
        score_s={},
        labels_learnt={},
    )


def _app_settings(base: Settings, run: str, name: str, policy: ServingPolicy) -> Settings:
    """One application's settings: its own groups, output topics and Redis prefix."""
    tag = f"eval-{run}-{name}"
    update: dict[str, object] = {
        "consumer_group": f"{tag}-scorer",
        "learner_group": f"{tag}-learner",
        "topic_alerts": f"{tag}-alerts",
        "topic_scores": f"{tag}-scores",
        "topic_transactions_dlq": f"{tag}-transactions.dlq",
        "topic_labels_dlq": f"{tag}-labels.dlq",
        "redis_prefix": f"e{run}{name}",
        "client_id": tag,
    }
    if name == "rules":
        # Never lets a model serve: the rules prior alone.
        update["min_labels_for_model"] = 10**12
    else:
        update["model"] = name
        update["min_labels_for_model"] = policy.min_labels
        update["min_frauds_for_model"] = policy.min_frauds
        update["model_margin_over_prior"] = policy.margin
    return base.model_copy(update=update)


@contextlib.contextmanager
def _applications(settings: Iterable[Settings]) -> Iterator[None]:
    """Run one Application per settings in threads; stop them all on exit."""
    from fraudstream.service.app import Application

    apps = [Application(s) for s in settings]
    threads = [
        threading.Thread(target=a.run, name=f"eval-{i}", daemon=True) for i, a in enumerate(apps)
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 120
        while not all(a.ready()[0] for a in apps):
            if time.monotonic() > deadline:
                raise EvaluationTimeout(
                    "applications not ready: " + "; ".join(a.ready()[1] for a in apps)
                )
            time.sleep(0.2)
        yield
    finally:
        for app in apps:
            app.stop()
        for thread in threads:
            thread.join(timeout=60)


def _produce(
    stream: LabelledStream, labeled_ms: np.ndarray, settings: Settings, speed: float
) -> None:
    """Transactions and the labels due before the last one, merged in event-time order."""
    n = len(stream)
    last = int(stream.time_ms[-1])
    label_rows = np.flatnonzero(labeled_ms <= last)
    times = np.concatenate([stream.time_ms, labeled_ms[label_rows]])
    kind = np.concatenate([np.zeros(n, dtype=bool), np.ones(label_rows.shape[0], dtype=bool)])
    rows = np.concatenate([np.arange(n), label_rows])
    order = np.argsort(times, kind="stable")  # ties: the transaction first
    pacer = Pacer(speed)
    chunk = 20_000
    with KafkaSink(settings, client_suffix="evaluate", linger_ms=5) as sink:
        sink.warm_up([settings.topic_transactions, settings.topic_labels])
        for lo in range(0, order.shape[0], chunk):
            part = order[lo : lo + chunk]
            tx_rows = rows[part][~kind[part]]
            txs = iter(
                stream.transactions(int(tx_rows.min()), int(tx_rows.max()) + 1)
                if tx_rows.shape[0]
                else []
            )
            tx_by_row: dict[int, bytes] = {}
            if tx_rows.shape[0]:
                base_row = int(tx_rows.min())
                for i, tx in enumerate(txs):
                    tx_by_row[base_row + i] = orjson.dumps(
                        tx.model_dump(mode="json", exclude_none=True)
                    )
            lab_rows = rows[part][kind[part]]
            stamps = dict(
                zip(lab_rows.tolist(), format_times_ms(labeled_ms[lab_rows]), strict=True)
            )
            ids = dict(zip(lab_rows.tolist(), stream.transaction_ids(lab_rows), strict=True))
            for j in part.tolist():
                pacer.wait(int(times[j]))
                row = int(rows[j])
                key = stream.card_names[stream.card[row]].encode()
                if kind[j]:
                    label = {
                        "transaction_id": ids[row],
                        "is_fraud": bool(stream.is_fraud[row]),
                        "labeled_at": stamps[row],
                        "source": "evaluation",
                    }
                    sink.send(settings.topic_labels, orjson.dumps(label), key=key)
                else:
                    sink.send(settings.topic_transactions, tx_by_row[row], key=key)
        sink.flush()


def _collect(
    stream: LabelledStream,
    apps: dict[str, Settings],
    timeout_s: float,
    progress: Callable[[int, int], None] | None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every transaction's score (and whether a model gave it) from each scores topic."""
    n = len(stream)
    index = {tx_id: i for i, tx_id in enumerate(stream.transaction_ids(np.arange(n)))}
    out = {name: (np.full(n, np.nan), np.zeros(n, dtype=bool)) for name in apps}
    seen = {name: np.zeros(n, dtype=bool) for name in apps}
    consumers = {}
    for name, s in apps.items():
        consumer = make_consumer(s, client_id=f"{s.client_id}-collect", group_id=None)
        parts = consumer.partitions_for_topic(s.topic_scores) or set()
        consumer.assign([TopicPartition(s.topic_scores, p) for p in parts])
        consumer.seek_to_beginning()
        consumers[name] = consumer
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for name, consumer in consumers.items():
                for records in consumer.poll(timeout_ms=200, max_records=50_000).values():
                    for record in records:
                        if record.value is None:
                            continue
                        decision = orjson.loads(record.value)
                        i = index.get(decision["transaction_id"])
                        if i is not None:
                            out[name][0][i] = decision["score"]
                            out[name][1][i] = decision["scorer"] == "model"
                            seen[name][i] = True
            done = min(int(s.sum()) for s in seen.values())
            if progress is not None:
                progress(done, n)
            if done == n:
                return out
            if time.monotonic() > deadline:
                raise EvaluationTimeout(
                    f"only {done:,} of {n:,} transactions scored by every application in time"
                )
    finally:
        for consumer in consumers.values():
            consumer.close()
