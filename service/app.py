"""The fraudstream application: owns clients, loops, signals and shutdown.

``Application(settings).run()`` enters everything through one ``ExitStack``
(Redis, health endpoint, Kafka clients) and runs the roles asked for:

* the **scorer loop** (main thread): poll a bounded batch → :class:`Pipeline`
  → produce and flush → commit (:mod:`fraudstream.service.checkpoint`); a new model
  version is picked up between batches;
* the **learner loop** (a thread when both roles run in one process): poll
  labels → :class:`Learner` → publish a model version every N labels or T
  seconds → commit the labels' offsets only once a version holding them is
  published, so a crash relearns instead of losing.

SIGINT/SIGTERM call :meth:`Application.stop`: the batch in hand is finished
and committed, or, when it failed, abandoned without commit; producers are
flushed and consumers closed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from fraudstream.service.alerts import BudgetPolicy, DecisionPolicy, ThresholdPolicy
from fraudstream.service.checkpoint import Checkpoint, Span
from fraudstream.service.errors import MissingSnapshotError, UnavailableError
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import RedisFeatureStore
from fraudstream.service.kafka import (
    DeliveryError,
    accepts_connections,
    ensure_topics,
    make_consumer,
    make_producer,
    subscribe,
)
from fraudstream.service.learner import Learner
from fraudstream.service.metrics import HealthServer, Metrics
from fraudstream.service.model_watcher import ModelWatcher, ServingPolicy
from fraudstream.service.pipeline import (
    BatchOutcome,
    ConsumedRecord,
    Outgoing,
    Pipeline,
    dead_letter_of,
    validate_records,
)
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.schemas import LABEL_BATCH, Label
from fraudstream.service.settings import DecisionMode, DeliveryGuarantee, Role, Settings
from fraudstream.service.snapshots import SnapshotStore

log = logging.getLogger(__name__)

#: Errors after which a batch is retried from its first offset once the
#: dependency is back: nothing of it was committed.
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    KafkaError,
    DeliveryError,
    UnavailableError,
)


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client with timeouts, so a dead server is noticed instead of hanging."""
    return redis.Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def decision_policy(settings: Settings) -> DecisionPolicy:
    """The alert policy chosen in the settings."""
    if settings.decision is DecisionMode.BUDGET:
        return BudgetPolicy(
            settings.alert_budget_per_day,
            settings.expected_tx_per_day,
            fallback_threshold=settings.alert_threshold,
        )
    return ThresholdPolicy(settings.alert_threshold)


class _Rebalance(ConsumerRebalanceListener):
    """Forgets offsets of partitions this member loses."""

    def __init__(self, checkpoint: Callable[[], Checkpoint | None]) -> None:
        self._checkpoint = checkpoint

    def on_partitions_revoked(self, revoked: Any) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is not None:
            checkpoint.forget(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


@dataclass
class _Loop:
    """What the scorer and learner loops share: polling, sending, retrying."""

    name: str
    consumer: KafkaConsumer
    producer: KafkaProducer
    checkpoint: Checkpoint
    metrics: Metrics
    stopping: threading.Event
    max_records: int
    wait_ms: int
    spans: dict[TopicPartition, Span] = field(default_factory=dict)

    def poll(self) -> list[Any]:
        batches = self.consumer.poll(timeout_ms=self.wait_ms, max_records=self.max_records)
        records = [r for batch in batches.values() for r in batch]
        # Records of a partition come in offset order.
        self.spans = {
            tp: Span(batch[0].offset, batch[-1].offset) for tp, batch in batches.items() if batch
        }
        self.metrics.last_loop_s.set(time.time())
        return records

    def rewind(self, records: Sequence[ConsumedRecord], resume: dict[TopicPartition, int]) -> None:
        """Seek back to where the failed work began so it is processed again."""
        first = dict(resume)
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def back_off(self, attempt: int, healthy: Callable[[], bool]) -> None:
        """Wait (exponentially, up to 30 s) with partitions paused, staying in the group."""
        delay = min(30.0, 0.5 * 2**attempt)
        paused = list(self.consumer.assignment())
        self.consumer.pause(*paused)
        try:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping.is_set():
                self.consumer.poll(timeout_ms=200)  # keeps the membership alive
                if healthy():
                    break
        finally:
            self.consumer.resume(*paused)


class Application:
    """fraudstream's scorer and learner, with their clients and lifecycle.

    Parameters
    ----------
    settings
        The one configuration object.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self._redis: redis.Redis | None = None
        self._watcher: ModelWatcher | None = None
        self._scorer_checkpoint: Checkpoint | None = None
        self._failures: list[BaseException] = []
        self.health_port: int | None = None
        self._bootstrap = [
            (host, int(port))
            for host, _, port in (
                a.strip().rpartition(":") for a in settings.bootstrap_servers.split(",")
            )
        ]

    # -- lifecycle ------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loops to finish the batch in hand and shut down."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def ready(self) -> tuple[bool, str]:
        """Readiness: Redis answers, a Kafka bootstrap server accepts connections,
        no loop has failed, and (scorer role) a scorer is loaded."""
        if self._redis is None:
            return False, "starting"
        if (problem := self._redis_problem()) is not None:
            return False, problem
        if not any(accepts_connections(port, host) for host, port in self._bootstrap):
            return False, f"kafka unreachable at {self.settings.bootstrap_servers}"
        if self._failures:
            return False, f"failed: {self._failures[0]}"
        if self.settings.role is not Role.LEARNER and self._watcher is None:
            return False, "scorer not started"
        return True, "ready"

    def _redis_problem(self) -> str | None:
        """Why Redis cannot be used right now, or ``None`` when it answers."""
        try:
            if self._redis is not None and self._redis.ping():
                return None
        except redis.RedisError as exc:
            return f"redis unreachable: {exc}"
        return "redis not connected"

    def _redis_ok(self) -> bool:
        return self._redis_problem() is None

    def ensure_topics(self) -> None:
        s = self.settings
        ensure_topics(
            s.bootstrap_servers,
            {
                name: s.topic_partitions
                for name in (
                    s.topic_transactions,
                    s.topic_labels,
                    s.topic_alerts,
                    s.topic_scores,
                    s.topic_transactions_dlq,
                    s.topic_labels_dlq,
                )
            },
            replication=s.topic_replication,
            create=s.create_topics,
        )

    def run(self) -> None:
        """Run until :meth:`stop` (or a signal); re-raises a loop's fatal error."""
        s = self.settings
        with contextlib.ExitStack() as stack:
            self._redis = redis_client(s)
            stack.callback(self._redis.close)
            self._wait_for_redis()
            self.ensure_topics()
            if s.metrics_port:
                server = HealthServer(self.metrics, self.ready, s.metrics_host, s.metrics_port)
                server.start()
                self.health_port = server.port
                stack.callback(server.stop)
            features = RedisFeatureStore(self._redis, FeatureConfig.from_settings(s))
            threads: list[threading.Thread] = []
            if s.role in (Role.ALL, Role.LEARNER):
                learner = threading.Thread(
                    target=self._guard(self._learner_loop, features), name="learner", daemon=True
                )
                learner.start()
                threads.append(learner)
            if s.role in (Role.ALL, Role.SCORER):
                self._guard(self._scorer_loop, features)()
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
                    if self._failures:
                        self.stopping.set()
            if self._failures:
                raise self._failures[0]

    def _guard(self, loop: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                loop(*args)
            except BaseException as exc:
                log.exception("%s stopped on an error", loop.__name__)
                self._failures.append(exc)
                self.stopping.set()

        return run

    def _wait_for_redis(self) -> None:
        attempt = 0
        while not self._redis_ok():
            if self.stopping.is_set():
                return
            self.metrics.errors.labels("redis").inc()
            log.warning("redis not reachable yet; retrying")
            time.sleep(min(10.0, 0.5 * 2**attempt))
            attempt += 1

    # -- scorer ---------------------------------------------------------------

    def _group_consumer(self, role: str, group: str) -> KafkaConsumer:
        """A consumer of ``group`` with the batch and liveness bounds of the settings."""
        s = self.settings
        return make_consumer(
            s.bootstrap_servers,
            client_id=f"{s.client_id}-{role}",
            group_id=group,
            max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(1000, s.session_timeout_ms // 4),
            max_poll_records=s.max_batch_size,
        )

    def _loop(
        self,
        role: str,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        checkpoint: Checkpoint,
        wait_ms: int,
    ) -> _Loop:
        """A poll/send/retry loop with the batch bound of the settings."""
        return _Loop(
            role,
            consumer,
            producer,
            checkpoint,
            self.metrics,
            self.stopping,
            self.settings.max_batch_size,
            wait_ms,
        )

    @contextlib.contextmanager
    def _scorer_clients(self) -> Iterator[tuple[KafkaConsumer, KafkaProducer, Checkpoint]]:
        s = self.settings
        exactly_once = s.guarantee is DeliveryGuarantee.EXACTLY_ONCE
        producer = make_producer(
            s.bootstrap_servers,
            client_id=f"{s.client_id}-scorer",
            transactional_id=f"{s.client_id}-scorer-{uuid.uuid4().hex[:12]}"
            if exactly_once
            else None,
        )
        if exactly_once:
            producer.init_transactions()
        consumer = self._group_consumer("scorer", s.consumer_group)
        checkpoint = Checkpoint(consumer, producer, exactly_once=exactly_once)
        self._scorer_checkpoint = checkpoint
        subscribe(consumer, [s.topic_transactions], listener=_Rebalance(lambda: checkpoint))
        try:
            yield consumer, producer, checkpoint
            checkpoint.commit()  # waits: nothing async left in flight at exit
        finally:
            with contextlib.suppress(Exception):
                producer.flush(timeout=30)
            producer.close(timeout=30)
            consumer.close(autocommit=False)

    def _scorer_loop(self, features: RedisFeatureStore) -> None:
        s = self.settings
        assert self._redis is not None
        registry = ModelRegistry(
            self._redis, s.redis_prefix, s.model_signing_key, s.model_versions_kept
        )
        self._watcher = ModelWatcher(
            registry,
            features.names,
            policy=ServingPolicy(s.min_labels_for_model),
            poll_s=s.model_poll_s,
            metrics=self.metrics,
        )
        pipeline = Pipeline(
            features=features,
            active_scorer=self._watcher.current,
            snapshots=SnapshotStore(self._redis, s.redis_prefix, s.snapshot_ttl_s),
            policy=decision_policy(s),
            topic_alerts=s.topic_alerts,
            topic_scores=s.topic_scores if s.publish_scores else None,
            topic_dlq=s.topic_transactions_dlq,
            max_message_bytes=s.max_message_bytes,
        )
        with self._scorer_clients() as (consumer, producer, checkpoint):
            loop = self._loop("scorer", consumer, producer, checkpoint, s.max_batch_wait_ms)
            attempt = 0
            next_lag = 0.0
            while not self.stopping.is_set():
                records = loop.poll()
                if time.monotonic() >= next_lag:
                    self._report_lag(consumer)
                    next_lag = time.monotonic() + 5.0
                if not records:
                    # Idle: still pick up new model versions, so the next batch
                    # after a quiet spell is scored with the newest one.
                    with contextlib.suppress(redis.RedisError):
                        self._watcher.current()
                    try:
                        checkpoint.commit(wait=False)  # offsets coalesced while one was out
                    except _TRANSIENT as exc:
                        self._on_transient(loop, records, exc, attempt)
                        attempt += 1
                    continue
                started = time.perf_counter()
                try:
                    outcome = pipeline.process(records)
                    checkpoint.produce(outcome.outgoing)
                    checkpoint.track(loop.spans)
                    # Asynchronous: the checkpoint confirms every delivery first,
                    # and a later commit (or the final one) covers a lost request.
                    checkpoint.commit(wait=False)
                    attempt = 0
                except _TRANSIENT as exc:
                    self._on_transient(loop, records, exc, attempt)
                    attempt += 1
                    continue
                self._count(outcome, len(records), time.perf_counter() - started)

    def _on_transient(
        self, loop: _Loop, records: Sequence[Any], exc: BaseException, attempt: int
    ) -> None:
        dependency = "redis" if isinstance(exc, redis.RedisError) else "kafka"
        self.metrics.errors.labels(dependency).inc()
        log.warning(
            "%s batch of %d not committed (%s: %s); retrying after back-off",
            loop.name,
            len(records),
            type(exc).__name__,
            exc,
        )
        resume: dict[TopicPartition, int] = {}
        with contextlib.suppress(Exception):
            resume = loop.checkpoint.abort()
        loop.rewind(records, resume)
        loop.back_off(attempt, self._redis_ok)

    def _count(self, outcome: BatchOutcome, consumed: int, seconds: float) -> None:
        m = self.metrics
        m.consumed.labels(self.settings.topic_transactions).inc(consumed)
        m.processed.inc(outcome.scored)
        m.duplicates.inc(outcome.duplicates)
        if outcome.alerts:
            m.alerts.labels(outcome.scorer_kind).inc(outcome.alerts)
        for letter in outcome.dead_letters:
            m.dead_lettered.labels(self.settings.topic_transactions_dlq, letter.error_class).inc()
        m.batch_size.observe(consumed)
        m.batch_seconds.observe(seconds)
        if len(outcome.latencies_ms):
            # One observation per percentile-ish sample keeps metrics cheap at 50k tx/s.
            for value in np.percentile(outcome.latencies_ms, (10, 50, 90, 99)).tolist():
                m.end_to_end_ms.observe(value)

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            with contextlib.suppress(Exception):
                position = consumer.position(tp, timeout_ms=1000)
                if position is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(highwater - position)

    # -- learner --------------------------------------------------------------

    def _learner_loop(self, features: RedisFeatureStore) -> None:
        s = self.settings
        assert self._redis is not None
        learner = Learner.from_settings(s, self._redis, features, features.names)
        producer = make_producer(s.bootstrap_servers, client_id=f"{s.client_id}-learner")
        consumer = self._group_consumer("learner", s.learner_group)
        checkpoint = Checkpoint(consumer, producer)
        subscribe(consumer, [s.topic_labels], listener=_Rebalance(lambda: checkpoint))
        loop = self._loop("learner", consumer, producer, checkpoint, wait_ms=200)
        try:
            attempt = 0
            while not self.stopping.is_set():
                records = loop.poll()
                try:
                    if records:
                        self._learn_batch(loop, learner, records)
                    # Offsets are committed only once a published version holds
                    # what was learnt: a crash before that relearns, never loses.
                    if learner.maybe_checkpoint() is not None:
                        self._after_publish(learner, checkpoint)
                    attempt = 0
                except _TRANSIENT as exc:
                    self._on_transient(loop, records, exc, attempt)
                    attempt += 1
            if learner.checkpoint() is not None:
                self._after_publish(learner, checkpoint)
        finally:
            with contextlib.suppress(Exception):
                producer.flush(timeout=30)
            producer.close(timeout=30)
            consumer.close(autocommit=False)

    def _learn_batch(self, loop: _Loop, learner: Learner, records: Sequence[Any]) -> None:
        s = self.settings
        labels, indices, failures = validate_records(
            records, s.max_message_bytes, Label, LABEL_BATCH
        )
        now_ms = int(time.time() * 1000)
        letters = [dead_letter_of(records[i], error, now_ms) for i, error in failures]
        outcome = learner.learn_many(labels)
        record_of = {id(label): records[i] for label, i in zip(labels, indices, strict=True)}
        for rejected in outcome.rejected:
            letters.append(
                dead_letter_of(
                    record_of[id(rejected.label)], MissingSnapshotError(rejected.reason), now_ms
                )
            )
        loop.checkpoint.produce(
            [Outgoing(s.topic_labels_dlq, x.key, x.value, x.headers) for x in letters]
        )
        loop.checkpoint.track(loop.spans)
        m = self.metrics
        m.consumed.labels(s.topic_labels).inc(len(records))
        m.labels_learnt.inc(outcome.learnt)
        if outcome.duplicates:
            m.labels_rejected.labels("duplicate").inc(outcome.duplicates)
        for letter in letters:
            m.dead_lettered.labels(s.topic_labels_dlq, letter.error_class).inc()
        if outcome.rejected:
            m.labels_rejected.labels("missing_snapshot").inc(len(outcome.rejected))

    def _after_publish(self, learner: Learner, checkpoint: Checkpoint) -> None:
        checkpoint.commit()
        report = learner.metrics.report()
        for name, value in report.items():
            if isinstance(value, int | float) and np.isfinite(value):
                self.metrics.progressive.labels(name).set(float(value))
        log.info(
            "published model version %s (%s labels learnt)",
            learner.version,
            learner.model.labels_learnt,
        )
