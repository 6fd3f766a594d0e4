"""The one configuration object of fraudstream.

Every option is read from the environment (prefix ``FRAUDSTREAM_``) or a ``.env``
file, validated once by :class:`Settings`, and passed down explicitly. No other
module reads the environment.

Examples
--------
>>> s = Settings(bootstrap_servers="127.0.0.1:9092")
>>> s.topic_transactions, s.alert_threshold
('transactions', 0.5)
>>> s.window_lengths_s
(3600, 86400, 604800, 2592000)
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Seconds per day, used for the label-delay and TTL defaults.
DAY_S = 86_400

#: Prefix of every environment variable (and ``.env`` entry) fraudstream reads.
ENV_PREFIX = "FRAUDSTREAM_"


def unknown_variables(names: Mapping[str, str], known: set[str]) -> dict[str, tuple[str, str]]:
    """``{variable: (value, problem)}`` of each ``FRAUDSTREAM_*`` name that is not a setting.

    The problem names the closest setting, so a misspelt variable is a clear
    error instead of a silently ignored one.

    >>> unknown_variables({"FRAUDSTREAM_MAX_BATCH": "5", "HOME": "/", "FRAUDSTREAM_ROLE": "all"},
    ...                   {"max_batch_size", "role"})
    {'FRAUDSTREAM_MAX_BATCH': ('5', 'not a setting (did you mean FRAUDSTREAM_MAX_BATCH_SIZE?)')}
    """
    problems: dict[str, tuple[str, str]] = {}
    variables = {f"{ENV_PREFIX}{name.upper()}" for name in known}
    for name in sorted(names):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in variables:
            continue
        close = difflib.get_close_matches(upper, sorted(variables), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems[name] = (names[name], f"not a setting{hint}")
    return problems


class Role(StrEnum):
    """Which loops a ``fraudstream serve`` process runs."""

    ALL = "all"
    SCORER = "scorer"
    LEARNER = "learner"


class DeliveryGuarantee(StrEnum):
    """Processing guarantee of the scorer."""

    AT_LEAST_ONCE = "at_least_once"
    EXACTLY_ONCE = "exactly_once"


class DecisionMode(StrEnum):
    """How the scorer decides to alert."""

    THRESHOLD = "threshold"
    BUDGET = "budget"


class SecurityProtocol(StrEnum):
    """How clients talk to the Kafka brokers (Kafka's ``security.protocol``)."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        """Whether the protocol encrypts with TLS."""
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        """Whether the protocol logs in with SASL."""
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    """SASL mechanisms fraudstream's Kafka clients can authenticate with."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


def env_name(setting: str) -> str:
    """The environment variable of a setting.

    >>> env_name("kafka_sasl_password")
    'FRAUDSTREAM_KAFKA_SASL_PASSWORD'
    """
    return f"{ENV_PREFIX}{setting.upper()}"


def masked_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to log.

    >>> masked_url("rediss://:s3cret@redis.example:6380/0")
    'rediss://:***@redis.example:6380/0'
    >>> masked_url("redis://app:pw@h:6379/1"), masked_url("redis://h:6379/0")
    ('redis://app:***@h:6379/1', 'redis://h:6379/0')
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


#: Schemes of the Redis URLs redis-py understands.
REDIS_SCHEMES = ("redis", "rediss", "unix")


class SettingsConflict(ValueError):
    """Settings that are valid one by one but not together.

    ``setting`` names the one to fix (the ``fraudstream`` command shows its
    variable and value).
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def _invalid(message: str) -> PydanticCustomError:
    """The validation error of one setting, shown as ``message`` alone."""
    return PydanticCustomError("invalid_setting", "{message}", {"message": message})


def _conflict(setting: str, message: str) -> PydanticCustomError:
    """The validation error of settings wrong together; ``setting`` is the one to fix."""
    return PydanticCustomError(
        "settings_conflict", "{message}", {"message": message, "setting": setting}
    )


#: The settings that name Kafka topics.
TOPIC_SETTINGS = (
    "topic_transactions",
    "topic_labels",
    "topic_alerts",
    "topic_scores",
    "topic_transactions_dlq",
    "topic_labels_dlq",
)

#: What Kafka accepts as a topic name (besides "." and "..").
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def topic_name_problem(name: str) -> str | None:
    """Why Kafka would refuse ``name`` as a topic name, or ``None`` when it is legal.

    >>> topic_name_problem("transactions.dlq") is None
    True
    >>> topic_name_problem("bad!topic")
    "'bad!topic' is not a Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'"
    """
    if name in (".", ".."):
        return f"{name!r} is not a Kafka topic name: '.' and '..' are reserved"
    if not _TOPIC_NAME.fullmatch(name):
        return f"{name!r} is not a Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'"
    return None


def _port_problem(port: str) -> str | None:
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not a whole number from 1 to 65535"
    return None


def bootstrap_servers_problem(value: str) -> str | None:
    """Why ``value`` is no list of Kafka bootstrap servers, or ``None`` when it is one.

    Each comma-separated entry is ``host``, ``host:port``, ``[ipv6]`` or
    ``[ipv6]:port`` (as the Kafka client reads them; no port: 9092).

    >>> bootstrap_servers_problem("kafka-1:9092, kafka-2:9092,[::1]:9093") is None
    True
    >>> bootstrap_servers_problem("127.0.0.1:9092,bogus::x")
    "'bogus::x': port 'x' is not a whole number from 1 to 65535 (write host:port, comma separated)"
    """
    hint = "(write host:port, comma separated)"
    if not value.strip():
        return f"no server given {hint}"
    for raw in value.strip().split(","):
        entry = re.sub(r"^.*://", "", raw.strip())
        problem: str | None = None
        if not entry:
            return f"an empty entry in {value!r} {hint}"
        if any(c.isspace() for c in entry):
            problem = "a space inside an address"
        elif entry.startswith("["):
            host, bracket, rest = entry[1:].partition("]")
            if not bracket or not host:
                problem = "an IPv6 address is written [address] or [address]:port"
            elif rest:
                problem = (
                    _port_problem(rest[1:])
                    if rest.startswith(":")
                    else "an IPv6 address is written [address] or [address]:port"
                )
        elif ":" in entry:
            try:
                ipaddress.IPv6Address(entry)
            except ValueError:
                host, _, port = entry.rpartition(":")
                problem = "no host before the port" if not host else _port_problem(port)
        if problem:
            return f"{raw.strip()!r}: {problem} {hint}"
    return None


def redis_url_problem(url: str) -> str | None:
    """Why redis-py would fail on (or misread) ``url``, or ``None`` when it is usable.

    >>> redis_url_problem("redis://:pw@h:6379/2") is None
    True
    >>> redis_url_problem("redis://h:6379/abc")
    "the database 'abc' is not a whole number (redis://host:port/db, e.g. /0)"
    """
    from redis.connection import parse_url

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return (
            f"the port {parts.netloc.rpartition('@')[2].rpartition(':')[2]!r} is not a whole "
            "number from 1 to 65535 (redis://host:port/db)"
        )
    if port == 0:
        return "the port 0 is not one Redis listens on (redis://host:port/db)"
    if parts.scheme in ("redis", "rediss"):
        db = unquote(parts.path).strip("/")
        if db and not (db.isascii() and db.isdigit()):
            return f"the database {db!r} is not a whole number (redis://host:port/db, e.g. /0)"
    elif not parts.path:
        return "a unix:// URL needs the path of the socket (unix:///path/to/redis.sock?db=0)"
    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py's own reading of it
    except ValueError as exc:
        return str(exc)
    return None


class LogFormat(StrEnum):
    """How log lines are written."""

    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """All options of fraudstream, documented one by one.

    Field descriptions double as the README's configuration table
    (``fraudstream config`` prints them with current values, secrets masked).
    """

    model_config = SettingsConfigDict(
        env_prefix="FRAUDSTREAM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Kafka -------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    client_id: str = Field("fraudstream", description="Kafka client id prefix.")
    consumer_group: str = Field(
        "fraudstream-scorer", description="Consumer group of the scorers (scale out by partitions)."
    )
    learner_group: str = Field(
        "fraudstream-learner", description="Consumer group of the learner (one active instance)."
    )
    topic_transactions: str = Field("transactions", description="Input topic of transactions.")
    topic_labels: str = Field("labels", description="Input topic of delayed labels.")
    topic_alerts: str = Field("fraud-alerts", description="Output topic of alerts.")
    topic_scores: str = Field("scores", description="Output topic of every decision.")
    topic_transactions_dlq: str = Field(
        "transactions.dlq", description="Dead-letter topic for bad transactions."
    )
    topic_labels_dlq: str = Field("labels.dlq", description="Dead-letter topic for bad labels.")
    publish_scores: bool = Field(
        False, description="Also publish every decision (not only alerts) to the scores topic."
    )
    topic_partitions: Annotated[int, Field(ge=1)] = Field(
        6, description="Partitions used when fraudstream creates a missing topic."
    )
    topic_replication: Annotated[int, Field(ge=1)] = Field(
        1, description="Replication factor used when fraudstream creates a missing topic."
    )
    create_topics: bool = Field(
        True, description="Create missing topics at start-up (otherwise fail with a clear error)."
    )
    guarantee: DeliveryGuarantee = Field(
        DeliveryGuarantee.AT_LEAST_ONCE,
        description="at_least_once (idempotent side effects) or exactly_once (Kafka transactions).",
    )
    transactional_id: str = Field(
        "",
        description="exactly_once: this scorer's Kafka transactional id, stable across restarts "
        "and different for each scorer (e.g. the pod name), so a restarted scorer aborts its "
        "predecessor's open transaction at once; serve --scorers N gives its scorers this id "
        "with -1 .. -N appended. Empty: a random id per process; a killed "
        "scorer's open transaction then holds read_committed readers back until it times out "
        "(FRAUDSTREAM_TRANSACTION_TIMEOUT_S).",
    )
    transaction_timeout_s: Annotated[float, Field(ge=1, le=900)] = Field(
        60.0,
        description="exactly_once: longest life of a scorer's Kafka transaction before the "
        "broker aborts it. A scorer that stops without ending its transaction (killed, its "
        "machine lost) holds the offsets of its partitions until then: whoever takes them "
        "over waits, polling nothing, unless that scorer is restarted with its transactional "
        "id. Lower: a shorter wait; but a commit that outlives it (the broker away for longer "
        "in the middle of one) stops the scorer, whose restart replays the batch.",
    )
    exact_replays: bool = Field(
        True,
        description="Single Redis node: keep the card history and terminal buckets each "
        "transaction found until its snapshot is written, so that a transaction replayed "
        "after a crash before its snapshot is scored from them, exactly as it was first, "
        "not from a state that has counted later transactions too. Costs Redis CPU and "
        "memory for a few KB per transaction in flight (bench/README.md); off: such a "
        "replay is scored from the state as it is now.",
    )
    overlap_batches: bool = Field(
        True,
        description="at_least_once: overlap batches. On one Redis node, two batches in flight "
        "in one thread: batch k's feature script and snapshot writes run in Redis while k + 1 "
        "is polled, validated and its script sent. On a Redis Cluster, when behind (a batch "
        "of at least half max_batch_size), batch k is processed in a worker thread while k + 1 "
        "is polled. Either way a batch's offsets are committed only after its effects are "
        "durable, in order. Off, or in exactly_once mode: one batch at a time.",
    )
    gc_threshold: Annotated[int, Field(ge=0)] = Field(
        50_000,
        description="Allocations between two young-generation garbage collections of the "
        "service's process (Python's gc threshold 0). Python's default, 700, runs a "
        "collection every few transactions of a batch: ~25 % of the scorer's CPU. 0: Python's "
        "default.",
    )
    kafka_batch_decoding: bool = Field(
        True,
        description="Decode each fetched record batch in one loop (fraudstream.service.kafka."
        "records) instead of kafka-python's per-record objects: the same records, ~3 µs less "
        "CPU per record, for every consumer built from these settings. Off: kafka-python's own "
        "decoder. Used only with a kafka-python version it was checked against.",
    )
    kafka_read_committed: bool = Field(
        True,
        description="Read only the records of committed Kafka transactions, for every consumer "
        "built from these settings: records an upstream transactional producer aborted are "
        "never scored, counted, learnt, rebuilt or recorded. Off: every record appended, "
        "kafka-python's default (an aborted transaction is then scored as if it had happened).",
    )
    max_batch_size: Annotated[int, Field(ge=1, le=100_000)] = Field(
        2000, description="Most records processed per batch (bounds time per batch)."
    )
    max_batch_wait_ms: Annotated[int, Field(ge=0)] = Field(
        50, description="Longest wait for a batch to fill before processing what is there."
    )
    max_poll_interval_ms: Annotated[int, Field(ge=10_000)] = Field(
        300_000, description="Kafka max.poll.interval.ms; batches are bounded well below it."
    )
    session_timeout_ms: Annotated[int, Field(ge=3_000)] = Field(
        10_000, description="Kafka group session timeout."
    )
    max_message_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024, description="Transactions larger than this are dead-lettered as oversize."
    )
    dead_letter_max_bytes: Annotated[int, Field(ge=16 * 1024)] = Field(
        1_000_000,
        description="Largest dead letter (key, value, headers): bigger records are cut to fit, "
        "with headers giving the original size and SHA-256. Dead-letter topics the service "
        "creates take it; an existing one too small for it is refused at start.",
    )

    # --- Kafka security ------------------------------------------------------
    kafka_security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT,
        description="How Kafka clients connect: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or "
        "SASL_SSL (SASL over TLS, the usual choice for a managed cluster).",
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None,
        description="SASL mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512); required with "
        "SASL_PLAINTEXT and SASL_SSL.",
    )
    kafka_sasl_username: str | None = Field(
        None, description="SASL username; required with SASL_PLAINTEXT and SASL_SSL."
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (masked); required with SASL_PLAINTEXT and SASL_SSL."
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM file of the CA certificates that sign the brokers' certificates "
        "(SSL, SASL_SSL); unset: the system's trusted CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        None,
        description="PEM client certificate for mutual TLS (SSL, SASL_SSL); may hold the key too.",
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of the client certificate (when not in the certfile)."
    )
    kafka_ssl_keyfile_password: SecretStr | None = Field(
        None, description="Password of an encrypted client key (masked)."
    )
    kafka_ssl_check_hostname: bool = Field(
        True,
        description="Check that a broker's certificate names the host connected to; turn off "
        "only for brokers reached by an address their certificate does not list.",
    )

    # --- Redis -------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL: redis://[[user]:password@]host:port/db, or rediss:// for TLS "
        "(its password is masked wherever it is shown).",
    )
    redis_ssl_ca_certs: Path | None = Field(
        None,
        description="PEM file of the CA certificates that sign the Redis server's certificate "
        "(rediss:// URLs); unset: the system's trusted CAs.",
    )
    redis_ssl_certfile: Path | None = Field(
        None,
        description="PEM client certificate for a Redis that checks clients' certificates "
        "(tls-auth-clients; rediss://); may hold the key too.",
    )
    redis_ssl_keyfile: Path | None = Field(
        None,
        description="PEM private key of the Redis client certificate (when not in the certfile).",
    )
    redis_ssl_keyfile_password: SecretStr | None = Field(
        None, description="Password of an encrypted Redis client key (masked)."
    )
    redis_ssl_check_hostname: bool = Field(
        True,
        description="Check that the Redis server's certificate names the host connected to "
        "(rediss://); the certificate itself is always verified.",
    )
    redis_cluster: bool = Field(
        False,
        description="The Redis URL names a node of a Redis Cluster (7.0 or later): the client "
        "finds the other nodes and every script runs once per master (see the README).",
    )
    redis_cluster_wait_replicas: Annotated[int, Field(ge=0)] = Field(
        1,
        description="On a Redis Cluster, replicas of each master that must hold a batch's "
        "writes before its offsets are committed (WAIT): a failed master then loses none of "
        "them; 0 does not wait (the last writes may be lost at a failover).",
    )
    redis_allow_eviction: bool = Field(
        False,
        description="Run even when Redis may evict keys (a maxmemory with a maxmemory-policy "
        "other than noeviction). Eviction drops keys silently when Redis is full: card "
        "histories (features start again from nothing), id claims (a replayed transaction is "
        "counted twice) and snapshots (labels never learnt). Off: the service refuses to start "
        "on such a Redis, and reports not ready when the policy is changed while it runs.",
    )
    redis_prefix: str = Field("fs", description="Prefix of every Redis key fraudstream writes.")
    redis_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        10.0,
        description="How long a Redis call may wait for its answer before it is given up and "
        "the batch retried (a Redis that stalls holds a batch this long per attempt).",
    )
    snapshot_ttl_s: Annotated[int, Field(ge=60)] = Field(
        45 * DAY_S, description="Life of a feature snapshot; must exceed the longest label delay."
    )
    allowed_lateness_s: Annotated[int, Field(ge=0)] = Field(
        DAY_S,
        description="How late an event may be and still update windows exactly "
        "(history is kept this long beyond the longest window).",
    )
    max_event_ahead_s: Annotated[int, Field(ge=0)] = Field(
        DAY_S,
        description="Transactions whose event time is further ahead of their Kafka record's "
        "timestamp are dead-lettered (EventTimeAheadError): one transaction dated years ahead "
        "(a terminal's clock, a unit mistake) would otherwise make every later transaction of "
        "its card too late. The default takes any time-zone mistake (up to 14 h). 0: no limit "
        "(e.g. to stream a simulation that starts today faster than real time).",
    )
    card_history_max_records: Annotated[int, Field(ge=16, le=100_000)] = Field(
        1000,
        description="Most transactions a card's history keeps (within its retention): a card "
        "with more (a card-testing attack, a fleet card) keeps its newest, so its longest "
        "windows count at most this many, and a transaction older than the oldest kept one "
        "is too late. Bounds the Redis memory and the scoring work of one card: without it a "
        "card's every transaction costs time and memory in proportion to its history.",
    )
    windows_s: str = Field(
        "3600,86400,604800,2592000",
        description="Card window lengths in seconds, comma separated (default 1h,1d,7d,30d).",
    )
    terminal_windows_days: str = Field(
        "1,7,30",
        description="Terminal traffic window lengths in whole UTC days, comma separated.",
    )
    terminal_label_windows_days: str = Field(
        "14,30",
        description="Terminal fraud-label window lengths in whole UTC days, comma separated; "
        "longer than the label delay, or they hold no label.",
    )

    # --- Model -------------------------------------------------------------
    model: str = Field(
        "forest_logreg", description="Model from the catalogue (`fraudstream model catalogue`)."
    )
    min_labels_for_model: Annotated[int, Field(ge=0)] = Field(
        500,
        description="Labels learnt before the model may replace the rules prior; it does "
        "once it ranks its recent labels at least as well as the prior (service/serving.py).",
    )
    min_frauds_for_model: Annotated[int, Field(ge=0)] = Field(
        20,
        description="Frauds among a model's most recent labels before its quality on them "
        "is trusted to let it replace the rules prior (see service/serving.py).",
    )
    model_margin_over_prior: Annotated[float, Field(ge=-1.0, le=1.0)] = Field(
        0.0,
        description="How much higher than the rules prior's a version's average precision on "
        "its recent labels must be for it to serve (-1: no comparison, only the label counts).",
    )
    model_signing_key: SecretStr = Field(
        SecretStr("dev-only-insecure-key-change-me"),
        description="HMAC-SHA256 key that signs model versions. Change it in production.",
    )
    publish_every_labels: Annotated[int, Field(ge=1)] = Field(
        1000, description="Publish a new model version after this many new labels."
    )
    publish_every_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="...or after this many seconds with at least one new label."
    )
    label_wait_s: Annotated[float, Field(ge=0)] = Field(
        3600.0,
        description="How long a label whose transaction has no feature snapshot yet (the scorer "
        "behind, the transaction still on its way) waits for it, in Redis, before it is "
        "dead-lettered; looked for again every few seconds. 0: dead-lettered at once.",
    )
    learner_lease_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        30.0,
        description="One learner learns a model; others stand by. The active one holds a lease "
        "in Redis, renewed at every turn of its loop: stopped, it gives the lease up and a "
        "standby takes over within a second; killed or paused, after this many seconds (at once "
        "when a learner starts on the host where the killed one ran).",
    )
    model_versions_kept: Annotated[int, Field(ge=1)] = Field(
        10, description="Model versions kept in the registry."
    )
    model_poll_s: Annotated[float, Field(gt=0)] = Field(
        2.0, description="How often a scorer checks for a new model version."
    )
    metrics_window: Annotated[int, Field(ge=10)] = Field(
        10_000, description="Labels in the rolling window of progressive metrics."
    )

    # --- Decision ----------------------------------------------------------
    decision: DecisionMode = Field(
        DecisionMode.THRESHOLD,
        description="threshold: alert above alert_threshold; budget: "
        "alert on the top scores so that about alert_budget_per_day alerts are raised per day.",
    )
    alert_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description="Score at or above which an alert is raised (threshold mode)."
    )
    alert_budget_per_day: Annotated[int, Field(ge=1)] = Field(
        100, description="Alerts per day the fraud team can review (budget mode)."
    )
    expected_tx_per_day: Annotated[int, Field(ge=1)] = Field(
        10_000, description="Transactions per day, used to turn the budget into a score quantile."
    )

    # --- Role and operations -----------------------------------------------
    role: Role = Field(Role.ALL, description="all (scorer and learner), scorer or learner.")
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        9108, description="Port of the Prometheus /metrics, /healthz and /readyz endpoint (0: off)."
    )
    metrics_host: str = Field("127.0.0.1", description="Interface the metrics endpoint binds to.")
    stall_timeout_s: Annotated[float, Field(gt=0)] = Field(
        120.0,
        description="/healthz fails when records wait and no batch was done for this long "
        "(a batch stuck retrying, a consumer that stopped fetching).",
    )
    log_level: str = Field("INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_format: LogFormat = Field(
        LogFormat.TEXT,
        description="text (for people) or json (one JSON object per line, for log collectors).",
    )

    @field_validator("windows_s", "terminal_windows_days", "terminal_label_windows_days")
    @classmethod
    def _positive_int_list(cls, value: str) -> str:
        try:
            parts = [int(p) for p in value.split(",") if p.strip()]
        except ValueError as exc:
            raise ValueError(f"expected comma-separated whole numbers, got {value!r}") from exc
        if not parts or any(p <= 0 for p in parts):
            raise ValueError(f"expected positive whole numbers, got {value!r}")
        return ",".join(str(p) for p in sorted(set(parts)))

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "kafka_ssl_keyfile_password",
        "redis_ssl_ca_certs",
        "redis_ssl_certfile",
        "redis_ssl_keyfile",
        "redis_ssl_keyfile_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``FRAUDSTREAM_KAFKA_SSL_CAFILE=`` (empty) means unset, as for any optional setting."""
        if (
            isinstance(value, str | SecretStr)
            and not str(value.get_secret_value() if isinstance(value, SecretStr) else value).strip()
        ):
            return None
        return value

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "redis_ssl_ca_certs",
        "redis_ssl_certfile",
        "redis_ssl_keyfile",
    )
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if not value.is_file():
            problem = "is a folder, not a file" if value.is_dir() else "does not exist"
            raise ValueError(f"{value} {problem}")
        if not os.access(value, os.R_OK):
            raise ValueError(f"{value} is not readable by this user")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        # Imported here: the model module imports serving, which imports this one.
        from fraudstream.service.model import CATALOGUE

        if value in CATALOGUE:
            return value
        close = difflib.get_close_matches(value, CATALOGUE, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _invalid(
            f"unknown model {value!r}: {hint}one of {', '.join(CATALOGUE)} "
            "(`fraudstream model catalogue` describes them)"
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        scheme = urlsplit(url).scheme
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"the URL must start with redis://, rediss:// (TLS) or unix://, not {scheme!r}"
            )
        problem = redis_url_problem(url)
        if problem:
            raise _invalid(problem)
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap_servers(cls, value: str) -> str:
        problem = bootstrap_servers_problem(value)
        if problem:
            raise _invalid(problem)
        return value

    @field_validator(*TOPIC_SETTINGS)
    @classmethod
    def _topic_name(cls, value: str) -> str:
        problem = topic_name_problem(value)
        if problem:
            raise _invalid(problem)
        return value

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        """The service must never read what it writes, nor read one topic as two.

        Nor write alerts or scores where other records go, nor put its learner
        in its scorers' consumer group.
        """
        inputs = ("topic_transactions", "topic_labels")
        if self.topic_transactions == self.topic_labels:
            raise _conflict(
                "topic_labels",
                f"{env_name('topic_labels')} and {env_name('topic_transactions')} are both "
                f"{self.topic_labels!r}: labels and transactions need topics of their own",
            )
        for output in TOPIC_SETTINGS[2:]:  # alerts, scores and the dead-letter topics
            for source in inputs:
                if getattr(self, output) == getattr(self, source):
                    raise _conflict(
                        output,
                        f"{env_name(output)} is {env_name(source)} ({getattr(self, source)!r}): "
                        "the service would read what it writes; give it a topic of its own",
                    )
        # Alerts and scores each have readers of their own; the dead-letter
        # topics may share one topic (each record's headers say its source).
        outputs = TOPIC_SETTINGS[2:]
        for i, stream in enumerate(("topic_alerts", "topic_scores")):
            for other in outputs[i + 1 :]:
                if getattr(self, other) == getattr(self, stream):
                    raise _conflict(
                        other,
                        f"{env_name(other)} is {env_name(stream)} ({getattr(self, stream)!r}): "
                        f"{stream[6:-1]} readers would take its records for {stream[6:]}; "
                        "give it a topic of its own",
                    )
        if self.learner_group == self.consumer_group:
            raise _conflict(
                "learner_group",
                f"{env_name('learner_group')} and {env_name('consumer_group')} are both "
                f"{self.consumer_group!r}: the learner and the scorers need groups of their "
                "own (in one group, a learner restarting would stop every scorer to rebalance)",
            )
        return self

    @model_validator(mode="after")
    def _security_combinations(self) -> Settings:
        """Security settings that only make sense together, checked before anything connects."""
        try:
            self._check_kafka_security()
            self._check_redis_tls()
        except SettingsConflict as conflict:
            raise _conflict(conflict.setting, str(conflict)) from conflict
        return self

    def _check_kafka_security(self) -> None:
        protocol = self.kafka_security_protocol
        if protocol.uses_sasl:
            missing = [
                env_name(name)
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise SettingsConflict(
                    "kafka_security_protocol",
                    f"{protocol.value} needs {_and(missing)} "
                    f"(the mechanism is {_or([m.value for m in SaslMechanism])})",
                )
        else:
            given = [
                env_name(name)
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is not None
            ]
            if given:
                raise SettingsConflict(
                    "kafka_security_protocol",
                    f"{protocol.value} does not use SASL, yet {_and(given)} "
                    f"{'is' if len(given) == 1 else 'are'} set: "
                    "use SASL_SSL (or SASL_PLAINTEXT), or unset them",
                )
        tls_files = [
            name
            for name in (
                "kafka_ssl_cafile",
                "kafka_ssl_certfile",
                "kafka_ssl_keyfile",
                "kafka_ssl_keyfile_password",
            )
            if getattr(self, name) is not None
        ]
        if tls_files and not protocol.uses_tls:
            raise SettingsConflict(
                "kafka_security_protocol",
                f"{protocol.value} does not use TLS, yet {_and([env_name(n) for n in tls_files])} "
                f"{'is' if len(tls_files) == 1 else 'are'} set: use SSL or SASL_SSL, or unset them",
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise SettingsConflict(
                "kafka_ssl_keyfile",
                f"a client key needs its certificate: set {env_name('kafka_ssl_certfile')}",
            )
        if self.kafka_ssl_keyfile_password is not None and self.kafka_ssl_certfile is None:
            raise SettingsConflict(
                "kafka_ssl_keyfile_password",
                f"a key password needs a client certificate and key: set "
                f"{env_name('kafka_ssl_certfile')} (and {env_name('kafka_ssl_keyfile')})",
            )

    def _check_redis_tls(self) -> None:
        scheme = urlsplit(self.redis_url.get_secret_value()).scheme
        tls_files = [
            name
            for name in (
                "redis_ssl_ca_certs",
                "redis_ssl_certfile",
                "redis_ssl_keyfile",
                "redis_ssl_keyfile_password",
            )
            if getattr(self, name) is not None
        ]
        if tls_files and scheme != "rediss":
            raise SettingsConflict(
                tls_files[0],
                f"TLS files are used with rediss:// URLs only, and {env_name('redis_url')} "
                f"is a {scheme}:// URL: write rediss://host:port/db, or unset "
                f"{_and([env_name(n) for n in tls_files])}",
            )
        for name in ("redis_ssl_keyfile", "redis_ssl_keyfile_password"):
            if getattr(self, name) is not None and self.redis_ssl_certfile is None:
                raise SettingsConflict(
                    name,
                    f"a client key needs its certificate: set {env_name('redis_ssl_certfile')}",
                )

    @property
    def window_lengths_s(self) -> tuple[int, ...]:
        """Card window lengths in seconds, ascending."""
        return tuple(int(p) for p in self.windows_s.split(","))

    @property
    def terminal_window_days(self) -> tuple[int, ...]:
        """Terminal window lengths in days, ascending."""
        return tuple(int(p) for p in self.terminal_windows_days.split(","))

    @property
    def terminal_label_window_days(self) -> tuple[int, ...]:
        """Terminal label window lengths in days, ascending."""
        return tuple(int(p) for p in self.terminal_label_windows_days.split(","))

    @property
    def history_retention_s(self) -> int:
        """How long a card's raw history is kept: longest window plus allowed lateness."""
        return max(self.window_lengths_s) + self.allowed_lateness_s

    def with_local_servers(
        self, *, bootstrap_servers: str | None = None, redis_url: str | None = None
    ) -> Settings:
        """A copy pointed at servers started on this machine, which have no security.

        The Kafka security settings are reset with ``bootstrap_servers``, the Redis
        TLS settings with ``redis_url`` (the demo and the benchmarks use this for
        the servers they start themselves).

        >>> s = Settings(_env_file=None, kafka_security_protocol="SSL")
        >>> s.with_local_servers(bootstrap_servers="127.0.0.1:1").kafka_security_protocol.value
        'PLAINTEXT'
        """
        update: dict[str, object] = {}
        if bootstrap_servers is not None:
            update["bootstrap_servers"] = bootstrap_servers
            update.update({name: _default(name) for name in KAFKA_SECURITY_SETTINGS})
        if redis_url is not None:
            update["redis_url"] = SecretStr(redis_url)
            update.update({name: _default(name) for name in REDIS_TLS_SETTINGS})
        return self.model_copy(update=update)

    @classmethod
    def env_file_problem(cls) -> str | None:
        """Why the ``.env`` file cannot be read as settings, or ``None`` (fine, or no file).

        pydantic-settings and python-dotenv read it as UTF-8 and would stop with a
        ``UnicodeDecodeError`` traceback on any other encoding (a file saved as
        Latin-1 by an editor): this says which file, which byte on which line,
        and what to do, in one line.
        """
        env_file = cls.model_config.get("env_file")
        if not isinstance(env_file, str | Path) or not Path(env_file).is_file():
            return None
        path = Path(env_file)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"cannot read {path.absolute()} ({exc.strerror or exc}): fix or remove it"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            return (
                f"{path.absolute()} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line "
                f"{line}): save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or fix that line"
            )
        return None

    @classmethod
    def unknown_variables(cls) -> dict[str, tuple[str, str]]:
        """``FRAUDSTREAM_*`` variables of the environment and ``.env`` that are not settings.

        ``{variable: (value, problem)}``; the ``fraudstream`` command refuses to
        run with any (``config`` shows them).
        """
        names = dict(os.environ)
        env_file = cls.model_config.get("env_file")
        if isinstance(env_file, str | Path) and Path(env_file).is_file():
            from dotenv import dotenv_values  # pydantic-settings' own .env reader

            names.update({k: v or "" for k, v in dotenv_values(env_file).items() if k})
        return unknown_variables(names, set(cls.model_fields))

    def masked(self) -> dict[str, object]:
        """Options with current values, secrets shown as ``**********``.

        The Redis URL keeps its scheme, host, port and database, only its
        password is masked: it says where Redis is without saying the secret.

        >>> shown = Settings(_env_file=None, redis_url="redis://:pw@h:1/0",
        ...                  model_signing_key="k").masked()
        >>> shown["redis_url"], shown["model_signing_key"]
        ('redis://:***@h:1/0', '**********')
        """
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if name == "redis_url":
                shown[name] = masked_url(self.redis_url.get_secret_value())
            elif isinstance(value, SecretStr):
                shown[name] = "**********"
            else:
                shown[name] = value
        return shown


#: The settings of Kafka's security (their defaults: PLAINTEXT).
KAFKA_SECURITY_SETTINGS = tuple(
    name
    for name in Settings.model_fields
    if name.startswith(("kafka_security_", "kafka_sasl_", "kafka_ssl_"))
)

#: The settings of Redis's TLS (used with ``rediss://`` URLs).
REDIS_TLS_SETTINGS = tuple(name for name in Settings.model_fields if name.startswith("redis_ssl_"))


def _default(name: str) -> object:
    return Settings.model_fields[name].default


def _and(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _or(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
