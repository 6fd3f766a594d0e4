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

import redis
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from fraudstream.service.alerts import BudgetPolicy, DecisionPolicy, ThresholdPolicy
from fraudstream.service.checkpoint import Checkpoint
from fraudstream.service.errors import CheckpointError, MissingSnapshotError, UnavailableError
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import RedisFeatureStore
from fraudstream.service.kafka import (
    DeliveryError,
    DeliveryTracker,
    accepts_connections,
    committed_offsets,
    ensure_topics,
    make_consumer,
    make_producer,
    subscribe,
)
from fraudstream.service.learner import Learner
from fraudstream.service.metrics import HealthServer, Metrics
from fraudstream.service.pipeline import (
    ActiveScorer,
    BatchOutcome,
    ConsumedRecord,
    Outgoing,
    Pipeline,
    dead_letter_of,
    validate_records,
)
from fraudstream.service.redis_client import (
    is_authentication_error,
    redis_client,
    redis_error,
    redis_problem,
)
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.rules import RulesPrior
from fraudstream.service.schemas import LABEL_BATCH, Label
from fraudstream.service.settings import DecisionMode, DeliveryGuarantee, Role, Settings
from fraudstream.service.snapshots import SnapshotStore
from fraudstream.service.state import StateLostError, ensure_state, lost_message, marker_key

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


def decision_policy(settings: Settings) -> DecisionPolicy:
    """The alert policy chosen in the settings."""
    if settings.decision is DecisionMode.BUDGET:
        return BudgetPolicy(
            settings.alert_budget_per_day,
            settings.expected_tx_per_day,
            fallback_threshold=settings.alert_threshold,
        )
    return ThresholdPolicy(settings.alert_threshold)


class ModelWatcher:
    """Keeps the active scorer current: the newest verified model, or the rules prior.

    A version is used for scoring once it has learnt ``min_labels`` labels with
    at least one fraud; before that the transparent rules prior scores. A
    checkpoint that fails verification is refused (logged and counted) and the
    scorer in use stays.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        feature_names: Sequence[str],
        *,
        min_labels: int,
        poll_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.feature_names = tuple(feature_names)
        self.min_labels = min_labels
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
        latest = self.registry.latest_version()
        if latest is None or latest == self._seen_version:
            return
        self._seen_version = latest
        try:
            checkpoint = self.registry.load(latest)
        except CheckpointError as exc:
            self.metrics.model_refused.inc()
            log.error(
                "model version %s refused, keeping version %s: %s", latest, self.active.version, exc
            )
            return
        model = checkpoint.model
        if model.feature_names != self.feature_names:
            self.metrics.model_refused.inc()
            log.error("model version %s was trained on other features; not used", latest)
            return
        if model.labels_learnt >= self.min_labels and model.frauds_learnt > 0:
            self.active = ActiveScorer(model, "model", latest)
            self.metrics.model_version.set(latest)
            log.info(
                "scoring with model version %s (%s labels, %s frauds)",
                latest,
                model.labels_learnt,
                model.frauds_learnt,
            )


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
    last_offsets: list[tuple[str, int, int]] = field(default_factory=list)

    def poll(self) -> list[Any]:
        batches = self.consumer.poll(timeout_ms=self.wait_ms, max_records=self.max_records)
        records = [r for batch in batches.values() for r in batch]
        # Records of a partition come in offset order: its last one is the one to commit.
        self.last_offsets = [
            (tp.topic, tp.partition, batch[-1].offset) for tp, batch in batches.items() if batch
        ]
        self.metrics.last_loop_s.set(time.time())
        return records

    def send(self, outgoing: Sequence[Outgoing]) -> None:
        """Produce and wait for every delivery (raises on any failure)."""
        tracker = DeliveryTracker(self.producer)
        for record in outgoing:
            tracker.send(record.topic, record.value, key=record.key, headers=record.headers)
        tracker.flush(timeout_s=60)

    def rewind(self, records: Sequence[ConsumedRecord]) -> None:
        """Seek back to the first record of a failed batch so it is processed again."""
        first: dict[TopicPartition, int] = {}
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
        # Why the Redis state cannot be used at start (lost), and whether the
        # state marker was found or created (then its loss is watched).
        self._state_problem: str | None = None
        self._state_known = False
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
        """Why Redis cannot be used right now, or ``None`` when it answers with our state."""
        if self._state_problem is not None:
            return self._state_problem
        try:
            if self._redis is None or not self._redis.ping():
                return "redis not connected"
            if self._state_known and not self._redis.exists(marker_key(self.settings.redis_prefix)):
                return lost_message(self.settings.redis_prefix)
        except redis.RedisError as exc:
            return redis_problem(exc, self.settings)
        return None

    def _redis_ok(self) -> bool:
        return self._redis_problem() is None

    def ensure_topics(self) -> None:
        s = self.settings
        ensure_topics(
            s,
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
            self._wait_for_state()
            if self.stopping.is_set():
                return
            features = RedisFeatureStore(
                self._redis, FeatureConfig.from_settings(s), check_state=True
            )
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

    def _wait_for_state(self) -> None:
        """Find the state marker (or create it for a fresh deployment); wait while it is lost.

        While the state is lost the service is not ready and says why; it goes
        on once ``fraudstream state rebuild`` has written a new marker.
        """
        s = self.settings
        assert self._redis is not None
        attempt = 0
        while not self.stopping.is_set():
            try:
                marker = ensure_state(
                    self._redis,
                    s.redis_prefix,
                    lambda: bool(committed_offsets(s, s.consumer_group, s.topic_transactions)),
                )
            except StateLostError as exc:
                self._state_problem = str(exc)
                self.metrics.errors.labels("redis").inc()
                log.error("%s", exc)
            except (redis.RedisError, KafkaError) as exc:
                self._state_problem = f"cannot check the feature state: {exc}"
                log.warning("%s; retrying", self._state_problem)
            else:
                self._state_problem = None
                self._state_known = True
                log.info(
                    "feature state of prefix %r: generation %s (%s)",
                    s.redis_prefix,
                    marker.generation,
                    marker.origin,
                )
                return
            self.stopping.wait(min(30.0, 0.5 * 2**attempt))
            attempt += 1

    def _wait_for_redis(self) -> None:
        """Wait for Redis; a refused password is a configuration error, not a wait."""
        attempt = 0
        while (problem := self._redis_problem()) is not None:
            if self.stopping.is_set():
                return
            self._refuse_credentials()
            self.metrics.errors.labels("redis").inc()
            log.warning("%s; retrying", problem)
            time.sleep(min(10.0, 0.5 * 2**attempt))
            attempt += 1

    def _refuse_credentials(self) -> None:
        """Raise when Redis refuses the credentials: retrying cannot help."""
        assert self._redis is not None
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            if is_authentication_error(exc):
                raise redis_error(exc, self.settings) from exc

    # -- scorer ---------------------------------------------------------------

    def _group_consumer(self, role: str, group: str) -> KafkaConsumer:
        """A consumer of ``group`` with the batch and liveness bounds of the settings."""
        s = self.settings
        return make_consumer(
            s,
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
            s,
            client_id=f"{s.client_id}-scorer",
            transactional_id=f"{s.client_id}-scorer-{uuid.uuid4().hex[:12]}"
            if exactly_once
            else None,
        )
        if exactly_once:
            producer.init_transactions()
        consumer = self._group_consumer("scorer", s.consumer_group)
        checkpoint = Checkpoint(consumer, producer if exactly_once else None)
        self._scorer_checkpoint = checkpoint
        subscribe(consumer, [s.topic_transactions], listener=_Rebalance(lambda: checkpoint))
        try:
            yield consumer, producer, checkpoint
            if not exactly_once:
                checkpoint.commit_all()  # waits: nothing async left in flight at exit
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
            min_labels=s.min_labels_for_model,
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
            dead_letter_max_bytes=s.dead_letter_max_bytes,
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
                    continue
                started = time.perf_counter()
                try:
                    checkpoint.begin()
                    outcome = pipeline.process(records)
                    loop.send(outcome.outgoing)
                    checkpoint.track_many(loop.last_offsets)
                    # Asynchronous: everything the batch caused is already durable,
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
        self.metrics.dependency_error(dependency)
        log.warning(
            "%s batch of %d not committed (%s: %s); retrying after back-off",
            loop.name,
            len(records),
            type(exc).__name__,
            exc,
        )
        with contextlib.suppress(Exception):
            loop.checkpoint.abort()
        loop.rewind(records)
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
        # One observation per transaction, bucketed with numpy in one call per batch.
        m.observe_latencies_ms(outcome.latencies_ms)

    def _report_lag(self, consumer: KafkaConsumer, role: str = "scorer") -> None:
        assigned = list(consumer.assignment())
        ends = {tp: consumer.highwater(tp) for tp in assigned}
        unknown = [tp for tp, end in ends.items() if end is None]
        if unknown:  # no fetch response has told the end yet (e.g. nothing new to fetch)
            with contextlib.suppress(Exception):
                ends.update(consumer.end_offsets(unknown, timeout_ms=1000))
        lags: dict[tuple[str, int], int] = {}
        for tp, end in ends.items():
            with contextlib.suppress(Exception):
                position = consumer.position(tp, timeout_ms=1000)
                if position is not None and end is not None:
                    lags[(tp.topic, tp.partition)] = max(0, end - position)
        self.metrics.report_lag(role, lags)

    # -- learner --------------------------------------------------------------

    def _learner_loop(self, features: RedisFeatureStore) -> None:
        s = self.settings
        assert self._redis is not None
        learner = Learner.from_settings(s, self._redis, features, features.names)
        producer = make_producer(s, client_id=f"{s.client_id}-learner")
        consumer = self._group_consumer("learner", s.learner_group)
        checkpoint = Checkpoint(consumer)
        subscribe(consumer, [s.topic_labels], listener=_Rebalance(lambda: checkpoint))
        loop = self._loop("learner", consumer, producer, checkpoint, wait_ms=200)
        try:
            attempt = 0
            next_lag = 0.0
            while not self.stopping.is_set():
                records = loop.poll()
                if time.monotonic() >= next_lag:
                    self._report_lag(consumer, "learner")
                    next_lag = time.monotonic() + 5.0
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
        letters = [
            dead_letter_of(records[i], error, now_ms, s.dead_letter_max_bytes)
            for i, error in failures
        ]
        outcome = learner.learn_many(labels)
        record_of = {id(label): records[i] for label, i in zip(labels, indices, strict=True)}
        for rejected in outcome.rejected:
            letters.append(
                dead_letter_of(
                    record_of[id(rejected.label)],
                    MissingSnapshotError(rejected.reason),
                    now_ms,
                    s.dead_letter_max_bytes,
                )
            )
        loop.send([Outgoing(s.topic_labels_dlq, x.key, x.value, x.headers) for x in letters])
        loop.checkpoint.track_many(loop.last_offsets)
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
        self.metrics.model_published(learner.version, learner.metrics.report())
        log.info(
            "published model version %s (%s labels learnt)",
            learner.version,
            learner.model.labels_learnt,
        )
