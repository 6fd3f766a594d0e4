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
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
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
        "predecessor's open transaction at once. Empty: a random id per process; a killed "
        "scorer's open transaction then holds read_committed readers back until it times out "
        "(60 s).",
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
        "with headers giving the original size and SHA-256. Keep it below the dead-letter "
        "topics' max.message.bytes.",
    )

    # --- Redis -------------------------------------------------------------
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL (may hold a password, so it is masked in logs).",
    )
    redis_prefix: str = Field("fs", description="Prefix of every Redis key fraudstream writes.")
    snapshot_ttl_s: Annotated[int, Field(ge=60)] = Field(
        45 * DAY_S, description="Life of a feature snapshot; must exceed the longest label delay."
    )
    allowed_lateness_s: Annotated[int, Field(ge=0)] = Field(
        DAY_S,
        description="How late an event may be and still update windows exactly "
        "(history is kept this long beyond the longest window).",
    )
    windows_s: str = Field(
        "3600,86400,604800,2592000",
        description="Card window lengths in seconds, comma separated (default 1h,1d,7d,30d).",
    )
    terminal_windows_days: str = Field(
        "1,7,30", description="Terminal window lengths in whole UTC days, comma separated."
    )

    # --- Model -------------------------------------------------------------
    model: str = Field(
        "logreg", description="Model from the catalogue (`fraudstream model catalogue`)."
    )
    min_labels_for_model: Annotated[int, Field(ge=0)] = Field(
        500,
        description="Labels learnt before the model replaces the rules prior "
        "(and at least one fraud among them).",
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

    @field_validator("windows_s", "terminal_windows_days")
    @classmethod
    def _positive_int_list(cls, value: str) -> str:
        try:
            parts = [int(p) for p in value.split(",") if p.strip()]
        except ValueError as exc:
            raise ValueError(f"expected comma-separated whole numbers, got {value!r}") from exc
        if not parts or any(p <= 0 for p in parts):
            raise ValueError(f"expected positive whole numbers, got {value!r}")
        return ",".join(str(p) for p in sorted(set(parts)))

    @property
    def window_lengths_s(self) -> tuple[int, ...]:
        """Card window lengths in seconds, ascending."""
        return tuple(int(p) for p in self.windows_s.split(","))

    @property
    def terminal_window_days(self) -> tuple[int, ...]:
        """Terminal window lengths in days, ascending."""
        return tuple(int(p) for p in self.terminal_windows_days.split(","))

    @property
    def history_retention_s(self) -> int:
        """How long a card's raw history is kept: longest window plus allowed lateness."""
        return max(self.window_lengths_s) + self.allowed_lateness_s

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
        """Options with current values, secrets shown as ``**********``."""
        return {
            name: ("**********" if isinstance(value, SecretStr) else value)
            for name, value in self.model_dump().items()
        }
