"""The fraudstream application: owns clients, loops, signals and shutdown.

``Application(settings).run()`` enters everything through one ``ExitStack``
(Redis, the health endpoint, the Kafka clients of both loops) and runs the
roles asked for:

* the **scorer loop** (main thread): poll a bounded batch → :class:`Pipeline`
  → hand the records to produce and the offsets to the checkpoint, which
  flushes, confirms and commits (:mod:`fraudstream.service.checkpoint`); a new
  model version is picked up between batches;
* the **learner loop** (a thread when both roles run in one process): poll
  labels → :class:`LabelPipeline` → hand dead letters and offsets to the
  checkpoint → publish a model version every N labels or T seconds → commit
  the labels' offsets only once a version holding them is published, so a
  crash relearns instead of losing.

Polling, rebalances and back-off are :class:`ConsumeLoop`'s
(:mod:`fraudstream.service.loop`). SIGINT/SIGTERM call :meth:`Application.stop`:
the batch in hand is finished and committed, or, when it failed, abandoned
without commit; producers are flushed and consumers closed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from kafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaError,
    NotCoordinatorError,
)
from redis.exceptions import RedisClusterException

from fraudstream.service.alerts import BudgetPolicy, DecisionPolicy, ThresholdPolicy
from fraudstream.service.checkpoint import Checkpoint
from fraudstream.service.deadletter import dead_letter_record_limit
from fraudstream.service.errors import (
    ConfigurationError,
    FraudstreamError,
    LeaseLostError,
    UnavailableError,
    is_dependency_error,
)
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import PreparedUpdate, RedisFeatureStore
from fraudstream.service.kafka import (
    DeliveryError,
    accepts_connections,
    committed_offsets,
    ensure_topics,
    make_consumer,
    make_producer,
    max_message_bytes,
)
from fraudstream.service.kafka.protocols import Consumer, Producer
from fraudstream.service.label_pipeline import LabelBatchOutcome, LabelPipeline
from fraudstream.service.learner import Learner
from fraudstream.service.learner_lease import LearnerLease, holder_name
from fraudstream.service.loop import ConsumeLoop, LoopHealth, Polled, backoff_s
from fraudstream.service.metrics import HealthServer, Metrics
from fraudstream.service.model_watcher import ModelWatcher
from fraudstream.service.pipeline import BatchOutcome, BegunBatch, Pipeline, SnapshotWriter
from fraudstream.service.redis_client import (
    check_cluster_mode,
    check_eviction,
    is_authentication_error,
    memory_problem,
    redis_client,
    redis_error,
    redis_problem,
)
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.serving import ServingPolicy
from fraudstream.service.settings import (
    DecisionMode,
    DeliveryGuarantee,
    Role,
    Settings,
    masked_url,
)
from fraudstream.service.snapshots import SnapshotSender, SnapshotStore
from fraudstream.service.state import StateLostError, ensure_state, lost_message, marker_key
from fraudstream.service.stores import feature_store, snapshot_store
from fraudstream.service.waiting_labels import LabelWaits, WaitingLabels

log = logging.getLogger(__name__)

#: Kafka's answers while a broker's group coordinator is starting (a new broker
#: creates its offsets topic at the first group lookup), and how many attempts
#: (0.5 + 1 + 2 + 4 s of back-off) they are logged as progress, not as a warning.
_COORDINATOR_STARTING = (
    CoordinatorNotAvailableError,
    CoordinatorLoadInProgressError,
    NotCoordinatorError,
)
_QUIET_COORDINATOR_ATTEMPTS = 4

#: Seconds between two warnings about transactions not keyed by their card id.
KEY_WARNING_EVERY_S = 60.0


T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    """Whether a batch that failed with ``exc`` is retried.

    A retried batch starts again from its first offset once the dependency is back (nothing of it
    was committed); otherwise the loop stops.
    """
    return isinstance(exc, DeliveryError) or is_dependency_error(exc)


def decision_policy(settings: Settings) -> DecisionPolicy:
    """The alert policy chosen in the settings."""
    if settings.decision is DecisionMode.BUDGET:
        return BudgetPolicy(
            settings.alert_budget_per_day,
            settings.expected_tx_per_day,
            fallback_threshold=settings.alert_threshold,
        )
    return ThresholdPolicy(settings.alert_threshold)


def _close_producer(producer: Producer) -> None:
    with contextlib.suppress(Exception):
        producer.flush(timeout=30)
    producer.close(timeout=30)


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
        self._loops: list[ConsumeLoop] = []
        #: The learner lease's holder while this process's learner stands by.
        self._standing_by = ""
        #: What the learner does before it stands by or runs its loop (not ready meanwhile).
        self._learner_phase = ""
        self._watcher: ModelWatcher | None = None
        self._phase = "starting"
        self._failures: list[BaseException] = []
        # Why the Redis state cannot be used at start (lost), and whether the
        # state marker was found or created (then its loss is watched).
        self._state_problem: str | None = None
        self._state_known = False
        # When the next warning about records not keyed by card may be logged.
        self._key_warning_due = 0.0
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
        """Stop on SIGTERM and SIGINT."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def ready(self) -> tuple[bool, str]:
        """Readiness, with the reason when not ready.

        Ready when Redis answers, a Kafka bootstrap server accepts connections, no loop has failed,
        and every loop is ready: the scorer has partitions assigned and its last batch committed,
        or nothing to do (:class:`LoopHealth`).
        """
        if self._redis is None:
            return False, self._phase
        if (problem := self._redis_problem()) is not None:
            return False, problem
        if not self._kafka_accepts_connections():
            return False, f"kafka unreachable at {self.settings.bootstrap_servers}"
        if self._failures:
            return False, f"failed: {self._failures[0]}"
        if self._phase != "running":
            return False, self._phase
        if self._learner_phase:
            return False, self._learner_phase
        for loop in self._loops:
            ok, reason = loop.health.ready()
            if not ok:
                return False, reason
        if self._standing_by:
            return True, f"ready; the learner stands by ({self._standing_by} holds the lease)"
        return True, "ready"

    def _kafka_accepts_connections(self) -> bool:
        """Whether a bootstrap server accepts TCP connections (cheap: no Kafka client)."""
        return any(accepts_connections(port, host) for host, port in self._bootstrap)

    def live(self) -> tuple[bool, str]:
        """Liveness: no loop is hung, nor stalled with records waiting (``/healthz``)."""
        for loop in self._loops:
            ok, reason = loop.health.live()
            if not ok:
                return False, reason
        return True, "ok" if self._phase == "running" else f"ok ({self._phase})"

    def _redis_problem(self, memory: bool = True) -> str | None:
        """Why Redis cannot be used right now, or ``None`` when it answers with our state.

        With ``memory``, also when it is full or may evict keys (:func:`memory_problem`).
        """
        if self._state_problem is not None:
            return self._state_problem
        try:
            if self._redis is None or not self._redis.ping():
                return "redis not connected"
            if self._state_known and not self._redis.exists(marker_key(self.settings.redis_prefix)):
                return lost_message(self.settings.redis_prefix)
            if memory:
                return memory_problem(self._redis, self.settings.redis_allow_eviction)
        except (redis.RedisError, RedisClusterException) as exc:
            return redis_problem(exc, self.settings)
        return None

    def _redis_ok(self) -> bool:
        return self._redis_problem() is None

    def ensure_topics(self) -> None:
        """Create missing topics (if allowed); check the dead-letter topics' record limit.

        A dead-letter topic must take a dead letter of ``dead_letter_max_bytes``:
        otherwise the first big bad record would be undeliverable and stall its
        partition.

        Raises
        ------
        ConfigurationError
            A topic is missing and may not be created, or a dead-letter topic's
            ``max.message.bytes`` is below what a dead letter may need.
        """
        s = self.settings
        dead_letter_topics = (s.topic_transactions_dlq, s.topic_labels_dlq)
        needed = dead_letter_record_limit(s.dead_letter_max_bytes)
        ensure_topics(
            s,
            {
                name: s.topic_partitions
                for name in (
                    s.topic_transactions,
                    s.topic_labels,
                    s.topic_alerts,
                    s.topic_scores,
                    *dead_letter_topics,
                )
            },
            replication=s.topic_replication,
            create=s.create_topics,
            # Never below Kafka's default (1 MiB and a bit).
            configs={
                name: {"max.message.bytes": str(max(needed, 1_048_588))}
                for name in dead_letter_topics
            },
        )
        for topic, limit in max_message_bytes(s, dead_letter_topics).items():
            if limit < needed:
                raise ConfigurationError(
                    f"dead-letter topic {topic!r} takes records up to {limit:,} bytes "
                    f"(max.message.bytes), but a dead letter may need {needed:,} "
                    f"(FRAUDSTREAM_DEAD_LETTER_MAX_BYTES={s.dead_letter_max_bytes:,}): raise the "
                    f"topic's max.message.bytes or lower FRAUDSTREAM_DEAD_LETTER_MAX_BYTES "
                    f"below {limit - (needed - s.dead_letter_max_bytes):,}"
                )

    def run(self) -> None:
        """Run until :meth:`stop` (or a signal); re-raises a loop's fatal error."""
        s = self.settings
        with contextlib.ExitStack() as stack:
            if s.metrics_port:
                # First: /healthz and /readyz answer while the dependencies are awaited.
                server = HealthServer(
                    self.metrics, self.ready, self.live, s.metrics_host, s.metrics_port
                )
                server.start()
                self.health_port = server.port
                stack.callback(server.stop)
            features = self._prepare(stack)
            if features is None:
                return  # stopped while waiting for a dependency
            role = Role(s.role)
            scorer_loop = None
            if role is not Role.LEARNER:
                scorer_loop = self._starting("joining kafka", lambda: self._scorer_loop(stack))
                if scorer_loop is None:
                    return  # stopped while waiting for kafka
            if s.gc_threshold:
                # A batch allocates thousands of short-lived objects (records, models, rows).
                _, older, oldest = gc.get_threshold()
                gc.set_threshold(s.gc_threshold, older, oldest)
            self._phase = "running"
            threads: list[threading.Thread] = []
            if role is not Role.SCORER:
                # It joins the labels' group once it holds the learner lease.
                self._learner_phase = "learner: taking the lease"
                learner = threading.Thread(
                    target=self._guard(self._learn, stack, features),
                    name="learner",
                    daemon=True,
                )
                learner.start()
                threads.append(learner)
            if scorer_loop is not None:
                self._guard(self._score, scorer_loop, features)()
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
                    if self._failures:
                        self.stopping.set()
            if self._failures:
                raise self._failures[0]

    def _prepare(self, stack: contextlib.ExitStack) -> RedisFeatureStore | None:
        """Redis found and checked, the feature state known, the topics there, the scripts loaded.

        ``None``: stopped while waiting for one of them.
        """
        s = self.settings
        if not self._connect_redis():
            return None
        assert self._redis is not None
        client = self._redis
        stack.callback(client.close)
        if not self._wait_for_redis():
            return None

        def check() -> bool:
            check_cluster_mode(client, s)
            check_eviction(client, s)
            return True

        if not self._starting("checking redis", check):
            return None
        if not self._wait_for_kafka():
            return None
        if not self._wait_for_state():
            return None
        self._phase = "creating topics"

        def topics() -> bool:
            self.ensure_topics()
            return True

        if not self._starting("creating topics", topics):
            return None
        self._phase = "joining the consumer groups"
        return self._starting(
            "loading the feature scripts",
            lambda: feature_store(
                client,
                FeatureConfig.from_settings(s),
                check_state=True,
                wait_replicas=s.redis_cluster_wait_replicas,
                # The scorer's id claims ride in the feature script's round trip
                # (single node; a cluster store claims in a call of its own).
                claim_ttl_s=s.snapshot_ttl_s,
                exact_replays=s.exact_replays,
            ),
        )

    def _guard(self, loop: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                loop(*args)
            except FraudstreamError as exc:  # says what is wrong: no traceback
                log.error("%s stopped: %s", loop.__name__, exc)
                self._failures.append(exc)
                self.stopping.set()
            except BaseException as exc:
                log.exception("%s stopped on an error", loop.__name__)
                self._failures.append(exc)
                self.stopping.set()

        return run

    def _starting(self, what: str, start: Callable[[], T]) -> T | None:
        """``start()``, retried after a back-off while Redis or Kafka is away.

        For the calls before a loop runs its batches (those are retried by the
        loop): a dependency that stops answering between the checks at start
        and a loop's first call (a restart, a failover, a stall past the
        client's timeout) delays the service, never stops it. ``None``:
        stopped meanwhile.
        """
        attempt = 0
        while True:
            try:
                return start()
            except Exception as exc:
                if not _transient(exc):
                    raise
                dependency = "redis" if isinstance(exc, redis.RedisError) else "kafka"
                self.metrics.dependency_error(dependency)
                delay_s = backoff_s(attempt)
                attempt += 1
                log.warning(
                    "%s: %s: %s; attempt %d, next in %.1f s",
                    what,
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay_s,
                )
            if self.stopping.wait(delay_s):
                return None

    def _wait_for_redis(self) -> bool:
        """Wait until Redis answers (``False``: stopped meanwhile); one line per attempt."""
        url = masked_url(self.settings.redis_url.get_secret_value())

        def problem() -> str | None:
            found = self._redis_problem(memory=False)
            if found is not None:
                self._refuse_credentials()
                found += (
                    "; is Redis running there? Set FRAUDSTREAM_REDIS_URL to its address "
                    "(`fraudstream dev up` starts a local one)"
                )
            return found

        return self._wait_until("redis", f"waiting for redis at {url}", problem)

    def _wait_for_kafka(self) -> bool:
        """Wait until a bootstrap server accepts connections (``False``: stopped meanwhile).

        As for Redis: a broker that starts after the service (a compose file, a
        cluster restart) delays it, one line per attempt, ``/readyz`` saying why.
        A broker that answers but refuses the credentials is a configuration
        error, found when the topics are checked.
        """
        servers = self.settings.bootstrap_servers

        def problem() -> str | None:
            if self._kafka_accepts_connections():
                return None
            return (
                f"kafka unreachable at {servers}: no bootstrap server accepts connections; "
                "is the broker running? Set FRAUDSTREAM_BOOTSTRAP_SERVERS to its address "
                "(`fraudstream dev up` starts a local one)"
            )

        return self._wait_until("kafka", f"waiting for kafka at {servers}", problem)

    def _wait_until(self, dependency: str, phase: str, problem: Callable[[], str | None]) -> bool:
        """Back off while ``problem()`` says what is wrong (``False``: stopped meanwhile)."""
        self._phase = phase
        attempt = 0
        while (found := problem()) is not None:
            self.metrics.dependency_error(dependency)
            delay_s = backoff_s(attempt)
            attempt += 1
            log.warning("%s. Attempt %d, next in %.1f s", found, attempt, delay_s)
            if self.stopping.wait(delay_s):
                return False
        return True

    def _wait_for_state(self) -> bool:
        """Find the state marker (or create it for a fresh deployment); wait while it is lost.

        While the state is lost the service is not ready and says why; it goes
        on once ``fraudstream state rebuild`` has written a new marker.
        ``False``: stopped meanwhile.
        """
        s = self.settings
        assert self._redis is not None
        self._phase = "checking the feature state"
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
                self.metrics.dependency_error("redis")
                log.error("%s", exc)
            except (redis.RedisError, KafkaError, UnavailableError) as exc:
                self._state_problem = f"cannot check the feature state: {exc}"
                if isinstance(exc, _COORDINATOR_STARTING) and attempt < _QUIET_COORDINATOR_ATTEMPTS:
                    # A new broker makes its offsets topic at the first group
                    # lookup: a few seconds of this is its start, not a fault.
                    log.info("waiting for the broker's group coordinator (%s)", type(exc).__name__)
                else:
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
                return True
            self.stopping.wait(backoff_s(attempt))
            attempt += 1
        return False

    def _connect_redis(self) -> bool:
        """Build the Redis client (``False``: stopped meanwhile).

        A single-node client connects on first use; a cluster client connects
        at once to learn the slot map, so it is retried here while no node answers.
        """
        attempt = 0
        while True:
            try:
                self._redis = redis_client(self.settings)
                return True
            except UnavailableError as exc:
                self._phase = f"waiting for redis: {exc}"
                self.metrics.dependency_error("redis")
                delay_s = backoff_s(attempt)
                attempt += 1
                log.warning("%s; attempt %d, next in %.1f s", exc, attempt, delay_s)
                if self.stopping.wait(delay_s):
                    return False

    def _refuse_credentials(self) -> None:
        """Raise when Redis refuses the credentials: retrying cannot help."""
        assert self._redis is not None
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            if is_authentication_error(exc):
                raise redis_error(exc, self.settings) from exc

    # -- clients --------------------------------------------------------------

    def _group_consumer(self, role: str, group: str) -> Consumer:
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

    def _enter_loop(
        self,
        stack: contextlib.ExitStack,
        role: str,
        group: str,
        topic: str,
        wait_ms: int,
        transactional_id: str | None = None,
    ) -> ConsumeLoop:
        """Build a loop's producer, consumer and checkpoint; closed when ``stack`` exits."""
        s = self.settings
        producer = make_producer(
            s,
            client_id=f"{s.client_id}-{role}",
            transactional_id=transactional_id,
            # A dead letter of dead_letter_max_bytes always fits a request.
            max_request_size=max(
                2 * 1024 * 1024, dead_letter_record_limit(s.dead_letter_max_bytes)
            ),
            **(
                {"transaction_timeout_ms": int(s.transaction_timeout_s * 1000)}
                if transactional_id is not None
                else {}
            ),
        )
        stack.callback(_close_producer, producer)
        if transactional_id is not None:
            producer.init_transactions()
        consumer = self._group_consumer(role, group)
        stack.callback(consumer.close, autocommit=False)
        checkpoint = Checkpoint(consumer, producer, exactly_once=transactional_id is not None)
        health = LoopHealth(
            role, needs_partitions=role == "scorer", stall_after_s=s.stall_timeout_s
        )
        loop = ConsumeLoop(
            role,
            consumer,
            checkpoint,
            health,
            max_records=s.max_batch_size,
            wait_ms=wait_ms,
            stopping=self.stopping,
            metrics=self.metrics,
        )
        loop.subscribe([topic])
        self._loops.append(loop)
        return loop

    def _scorer_loop(self, stack: contextlib.ExitStack) -> ConsumeLoop:
        s = self.settings
        exactly_once = s.guarantee is DeliveryGuarantee.EXACTLY_ONCE
        # A stable id lets a restarted scorer fence its predecessor and abort its
        # open transaction at once; a random one leaves that transaction holding
        # read_committed readers back until it times out.
        transactional_id = s.transactional_id or f"{s.client_id}-scorer-{uuid.uuid4().hex[:12]}"
        return self._enter_loop(
            stack,
            "scorer",
            s.consumer_group,
            s.topic_transactions,
            s.max_batch_wait_ms,
            transactional_id if exactly_once else None,
        )

    def _learner_loop(self, stack: contextlib.ExitStack) -> ConsumeLoop:
        s = self.settings
        return self._enter_loop(stack, "learner", s.learner_group, s.topic_labels, wait_ms=200)

    # -- scorer ---------------------------------------------------------------

    def _score(self, loop: ConsumeLoop, features: RedisFeatureStore) -> None:
        """The scorer loop: poll → pipeline → produce and track → commit."""
        s = self.settings
        assert self._redis is not None
        registry = ModelRegistry(
            self._redis, s.redis_prefix, s.model_signing_key, s.model_versions_kept
        )
        watcher = ModelWatcher(
            registry,
            features.names,
            policy=ServingPolicy.from_settings(s),
            poll_s=s.model_poll_s,
            metrics=self.metrics,
        )
        self._watcher = watcher
        snapshots = snapshot_store(
            self._redis, s.redis_prefix, s.snapshot_ttl_s, s.redis_cluster_wait_replicas
        )

        def pipeline(writer: SnapshotWriter) -> Pipeline:
            return Pipeline(
                features=features,
                active_scorer=watcher.current,
                snapshots=writer,
                policy=decision_policy(s),
                topic_alerts=s.topic_alerts,
                topic_scores=s.topic_scores if s.publish_scores else None,
                topic_dlq=s.topic_transactions_dlq,
                max_message_bytes=s.max_message_bytes,
                dead_letter_max_bytes=s.dead_letter_max_bytes,
                max_event_ahead_ms=s.max_event_ahead_s * 1000,
            )

        if not s.overlap_batches or s.guarantee is not DeliveryGuarantee.AT_LEAST_ONCE:
            self._score_one_at_a_time(loop, pipeline(snapshots), watcher)
        elif s.redis_cluster:
            self._score_overlapped(loop, pipeline(snapshots), watcher)
        else:
            self._score_pipelined(loop, pipeline, features, snapshots, watcher)
        self._final_commit(loop)

    def _score_one_at_a_time(
        self, loop: ConsumeLoop, pipeline: Pipeline, watcher: ModelWatcher
    ) -> None:
        """Poll, process, produce, commit; then the next batch."""

        def turn(polled: Polled) -> None:
            started = time.perf_counter()
            if not polled.records:
                self._idle_turn(loop, watcher)
                return
            outcome = pipeline.process(polled.records)
            self._finish_batch(loop, polled, outcome, time.perf_counter() - started)

        loop.run(turn, transient=_transient, healthy=self._redis_ok)

    def _score_overlapped(
        self, loop: ConsumeLoop, pipeline: Pipeline, watcher: ModelWatcher
    ) -> None:
        """Behind the stream, run batch ``k``'s Redis work while ``k + 1`` is polled.

        See :meth:`ConsumeLoop.run_ahead`. The scorer then waits less for Redis:
        its round trips run while the main thread decodes the next fetch. Only
        after a large batch: reading ahead after every batch doubled the p50
        latency at 2,000 tx/s offered.
        """

        def process(polled: Polled) -> BatchOutcome:
            return pipeline.process(polled.records)

        loop.run_ahead(
            process,
            functools.partial(self._finish_batch, loop),
            functools.partial(self._idle_turn, loop, watcher),
            transient=_transient,
            healthy=self._redis_ok,
        )

    def _score_pipelined(
        self,
        loop: ConsumeLoop,
        pipeline: Callable[[SnapshotWriter], Pipeline],
        features: RedisFeatureStore,
        snapshots: SnapshotStore,
        watcher: ModelWatcher,
    ) -> None:
        """One thread, two batches in flight: batch ``k``'s Redis work runs while ``k + 1`` is read.

        See :meth:`ConsumeLoop.run_pipelined`. Batch ``k + 1`` is polled,
        decoded, validated and its feature script sent while Redis runs batch
        ``k``'s; then ``k`` is scored and its snapshots sent, and once they are
        written its alerts are produced and its offsets committed. The feature
        scripts go on one connection, in batch order; the snapshots on another.
        """
        pool = features.client.connection_pool

        def connect() -> tuple[Any, Any]:
            link = pool.get_connection()
            try:
                return link, pool.get_connection()
            except BaseException:
                pool.release(link)
                raise

        connections = self._starting("scorer: connecting to redis", connect)
        if connections is None:
            return  # stopped while retrying
        link, snapshot_link = connections
        sender = SnapshotSender(snapshots, snapshot_link)
        scorer = pipeline(sender)
        loaded = False

        def begin(polled: Polled) -> tuple[BegunBatch, PreparedUpdate | None]:
            nonlocal loaded
            if not loaded:  # at start and after a failure (the server may have restarted)
                features.load_scripts()
                snapshots.load_scripts()
                loaded = True
            batch = scorer.begin(polled.records)
            try:
                update = features.prepare_update(batch.transactions)
            except Exception as exc:
                if is_dependency_error(exc):
                    raise
                return batch, None  # complete() runs the store's own call and isolates
            features.send_update(link, update)
            return batch, update

        def complete(begun: tuple[BegunBatch, PreparedUpdate | None]) -> BatchOutcome:
            batch, update = begun
            if update is None:
                return scorer.complete(
                    batch, lambda: features.update_and_compute(batch.transactions)
                )
            return scorer.complete(
                batch,
                lambda: features.compute_update(
                    update, features.read_update(link) if update.keys else None
                ),
            )

        def reset() -> None:
            nonlocal loaded
            loaded = False
            link.disconnect()
            sender.reset()

        try:
            loop.run_pipelined(
                begin,
                complete,
                sender.settle,
                functools.partial(self._finish_batch, loop),
                functools.partial(self._idle_turn, loop, watcher),
                reset=reset,
                transient=_transient,
                healthy=self._redis_ok,
            )
        finally:
            pool.release(link)
            pool.release(sender.connection)

    def _finish_batch(
        self, loop: ConsumeLoop, polled: Polled, outcome: BatchOutcome, seconds: float
    ) -> None:
        """A scored batch's records handed to the producer, its offsets tracked and committed."""
        checkpoint = loop.checkpoint
        checkpoint.produce(outcome.outgoing)
        checkpoint.track(polled.spans)
        # Asynchronous: the checkpoint confirms every delivery first, and a
        # later commit (or the final one) covers a lost request.
        checkpoint.commit(wait=False)
        self._count(outcome, len(polled.records), seconds)

    def _idle_turn(self, loop: ConsumeLoop, watcher: ModelWatcher) -> None:
        """Nothing polled: pick up new model versions, prove the membership if needed.

        The next batch after a quiet spell is then scored with the newest version.
        The offsets coalesced while a commit request was out are sent.
        """
        with contextlib.suppress(redis.RedisError):
            watcher.current()
        loop.confirm_membership()
        loop.checkpoint.commit(wait=False)

    def _count(self, outcome: BatchOutcome, consumed: int, seconds: float) -> None:
        m = self.metrics
        m.consumed.labels(self.settings.topic_transactions).inc(consumed)
        m.processed.inc(outcome.scored)
        m.duplicates.inc(outcome.duplicates)
        if outcome.not_keyed_by_card:
            m.not_keyed_by_card.inc(outcome.not_keyed_by_card)
            self._warn_not_keyed(outcome)
        if outcome.alerts:
            m.alerts.labels(outcome.scorer_kind).inc(outcome.alerts)
        m.count_dead_letters(
            self.settings.topic_transactions_dlq, (x.error_class for x in outcome.dead_letters)
        )
        m.batch_size.observe(consumed)
        m.batch_seconds.observe(seconds)
        # One observation per transaction, bucketed with numpy in one call per batch.
        m.observe_latencies_ms(outcome.latencies_ms)

    def _warn_not_keyed(self, outcome: BatchOutcome) -> None:
        """Warn that transactions are not keyed by card, once per ``KEY_WARNING_EVERY_S``."""
        now = time.monotonic()
        if now < self._key_warning_due:
            return
        self._key_warning_due = now + KEY_WARNING_EVERY_S
        log.warning(
            "%d transaction(s) of a batch not keyed by their card id (e.g. %s): scored and "
            "counted once, but a card's transactions may be spread over partitions, read out "
            "of order and by several scorers; produce them with key = card_id "
            "(fraudstream_transactions_not_keyed_by_card_total counts them)",
            outcome.not_keyed_by_card,
            outcome.not_keyed_example,
        )

    # -- learner --------------------------------------------------------------

    def _learn(self, stack: contextlib.ExitStack, features: RedisFeatureStore) -> None:
        """The learner: the lease, then its loop; gives the lease up when it ends."""
        s = self.settings
        assert self._redis is not None
        lease = LearnerLease(
            self._redis, s.redis_prefix, holder_name(s.client_id), s.learner_lease_s
        )
        try:
            if not self._take_lease(lease):
                return  # stopped on standby
            loop = self._starting("learner: joining kafka", lambda: self._learner_loop(stack))
            self._learner_phase = ""  # the loop's health says the rest
            if loop is not None:
                self._learn_labels(loop, features, lease)
        finally:
            self._learner_phase = ""
            self.metrics.learner_active.set(0)
            try:
                lease.give_up()
            except Exception as exc:  # it expires instead
                log.warning("learner: lease not given up (%s); it expires", exc)

    def _take_lease(self, lease: LearnerLease) -> bool:
        """Stand by until this learner holds the lease (``False``: stopped meanwhile)."""
        try:
            while not self.stopping.is_set():
                held = self._starting("learner: taking the lease", lease.try_take)
                if held is None:
                    return False
                if held == lease.holder:
                    if self._standing_by:
                        log.info("learner: took the lease over from %r", self._standing_by)
                    self.metrics.learner_active.set(1)
                    self._learner_phase = "learner: joining kafka"
                    return True
                self._learner_phase = ""  # standing by is a ready state
                if held != self._standing_by:
                    log.info(
                        "learner: standing by, the learner lease is held by %r; taking over "
                        "when it is given up or expires (FRAUDSTREAM_LEARNER_LEASE_S=%g)",
                        held,
                        self.settings.learner_lease_s,
                    )
                    self._standing_by = held
                self.stopping.wait(1.0)
            return False
        finally:
            self._standing_by = ""

    def _learn_labels(
        self, loop: ConsumeLoop, features: RedisFeatureStore, lease: LearnerLease
    ) -> None:
        """The learner loop: poll → label pipeline → produce and track → publish → commit."""
        s = self.settings
        assert self._redis is not None
        client = self._redis
        learner = self._starting(
            "learner: loading the model",
            lambda: Learner.from_settings(s, client, features, features.names, lease=lease.holder),
        )
        if learner is None:
            return  # stopped while retrying
        labels = LabelPipeline(
            learner,
            topic_dlq=s.topic_labels_dlq,
            max_message_bytes=s.max_message_bytes,
            dead_letter_max_bytes=s.dead_letter_max_bytes,
            wait_ms=int(s.label_wait_s * 1000),
        )
        checkpoint = loop.checkpoint
        waits = LabelWaits(WaitingLabels(self._redis, s.redis_prefix), labels)

        def turn(polled: Polled) -> None:
            try:
                lease.keep()  # another learner took it: stop before learning more
                if polled.records:
                    outcome = labels.process(polled.records)
                    waits.keep(outcome)  # before the offsets past them can be committed
                    checkpoint.produce(outcome.outgoing)
                    checkpoint.track(polled.spans)
                    self._count_labels(outcome, len(polled.records))
                again = waits.look_again()
                if again is not None:
                    checkpoint.produce(again.outgoing)
                    self._count_labels(again, 0)
                    self.metrics.labels_waiting.set(waits.waiting())
                # Offsets are committed only once a published version holds
                # what was learnt: a crash before that relearns, never loses.
                if learner.maybe_publish() is not None:
                    checkpoint.commit()
                    waits.durable()
                    self._after_publish(learner)
                elif learner.labels_since_publish == 0 and (
                    checkpoint.pending() or waits.settled()
                ):
                    # Nothing learnt waits for a version: these records were
                    # duplicates, dead letters (delivered before the commit) or
                    # labels parked to wait. Committed now, or a quiet feed would
                    # leave them uncommitted (lag that never drains) until the
                    # next label is learnt.
                    checkpoint.commit()
                    waits.durable()
            except Exception:
                waits.forget()
                raise

        loop.run(turn, transient=_transient, healthy=self._redis_ok)
        try:
            lease.keep()  # taken again if it expired meanwhile (a long back-off)
            published = learner.publish()
        except Exception as exc:
            if not (_transient(exc) or isinstance(exc, LeaseLostError)):
                raise
            log.warning(
                "learner: last version not published at stop (%s); relearnt by the next learner",
                exc,
            )
            return
        # Nothing learnt unpublished (the version just published, or none to publish):
        # what was done is durable once committed.
        if (published is not None or learner.labels_since_publish == 0) and self._final_commit(
            loop
        ):
            waits.durable()
            if published is not None:
                self._after_publish(learner)

    def _final_commit(self, loop: ConsumeLoop) -> bool:
        """Commit what is done and wait (at stop); a dependency away only costs a replay."""
        try:
            loop.checkpoint.commit()
        except Exception as exc:
            if not _transient(exc):
                raise
            log.warning(
                "%s: last offsets not committed at stop (%s: %s); they are processed again",
                loop.name,
                type(exc).__name__,
                exc,
            )
            return False
        return True

    def _count_labels(self, outcome: LabelBatchOutcome, consumed: int) -> None:
        s, m = self.settings, self.metrics
        m.consumed.labels(s.topic_labels).inc(consumed)
        m.labels_learnt.inc(outcome.learnt)
        if outcome.duplicates:
            m.labels_rejected.labels("duplicate").inc(outcome.duplicates)
        m.count_dead_letters(s.topic_labels_dlq, (x.error_class for x in outcome.dead_letters))
        if outcome.missing_snapshots:
            m.labels_rejected.labels("missing_snapshot").inc(outcome.missing_snapshots)
        if outcome.conflicts:
            m.labels_rejected.labels("conflict").inc(outcome.conflicts)

    def _after_publish(self, learner: Learner) -> None:
        self.metrics.model_published(learner.version, learner.metrics.report())
        log.info(
            "published model version %s (%s labels learnt)",
            learner.version,
            learner.model.labels_learnt,
        )
