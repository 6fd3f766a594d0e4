"""Message contracts: the pydantic models of every record fraudstream reads or writes.

Inputs (:class:`Transaction`, :class:`Label`) are strict where a wrong value
would corrupt features or learning, and keep unknown fields. Outputs
(:class:`Alert`, :class:`ScoreRecord`) are what downstream systems read; their
JSON Schemas are exported by ``fraudstream schemas``.

Examples
--------
>>> tx = Transaction.model_validate_json(
...     b'{"transaction_id": "t1", "card_id": "c1", "terminal_id": "m1",'
...     b' "amount": 12.5, "timestamp": 1522540800000, "loyalty": "gold"}')
>>> tx.timestamp.isoformat(), tx.currency, tx.event_time_ms
('2018-04-01T00:00:00+00:00', 'EUR', 1522540800000)
>>> tx.model_extra
{'loyalty': 'gold'}
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

#: Version of the output records' layout; bumped on incompatible changes.
SCHEMA_VERSION = 1

#: Event times outside this range are refused: they are almost always a unit
#: mistake (seconds sent as milliseconds or the reverse).
_MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)

#: Namespace of alert ids: an alert id is derived from its transaction id, so a
#: replayed transaction produces the same alert id and downstream can dedupe.
_ALERT_NAMESPACE = uuid.UUID("6f1c2a52-3c1e-4d55-9a43-4f0c8d1e2b7a")


def _parse_event_time(value: Any) -> Any:
    """Accept epoch milliseconds (int/float) or an RFC 3339 string with an offset."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be epoch milliseconds or an RFC 3339 string")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("timestamp must be finite")
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    return value


def _require_aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone offset (e.g. 2018-04-01T10:00:00Z)")
    value = value.astimezone(UTC)
    if not _MIN_EVENT_TIME <= value < _MAX_EVENT_TIME:
        raise ValueError(f"timestamp {value.isoformat()} is outside 2000-01-01..2100-01-01")
    return value


EventTime = Annotated[datetime, BeforeValidator(_parse_event_time)]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


class Transaction(BaseModel):
    """A card transaction event (topic ``transactions``, key = ``card_id``).

    Unknown fields are kept in ``model_extra`` and never used as features.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    transaction_id: Identifier = Field(description="Unique id of the transaction.")
    card_id: Identifier = Field(description="Card (customer) id; the Kafka key.")
    terminal_id: Identifier = Field(description="Terminal or merchant id.")
    amount: float = Field(gt=0, description="Amount in `currency`, > 0 and finite.")
    currency: CurrencyCode = Field("EUR", description="ISO 4217 code.")
    timestamp: EventTime = Field(
        description="Event time: RFC 3339 with an offset, or epoch milliseconds."
    )
    merchant_category: str | None = Field(None, description="Merchant category code.")
    channel: str | None = Field(None, description="e.g. pos, ecom, atm.")
    country: str | None = Field(None, description="ISO 3166 country of the terminal.")
    lat: float | None = Field(None, ge=-90, le=90, description="Latitude of the terminal.")
    lon: float | None = Field(None, ge=-180, le=180, description="Longitude of the terminal.")

    _check_time = field_validator("timestamp")(_require_aware_utc)

    @model_validator(mode="after")
    def _location_is_complete(self) -> Transaction:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        return self

    @cached_property
    def event_time_ms(self) -> int:
        """Event time in epoch milliseconds (computed once: the hot path reads it often)."""
        return round(self.timestamp.timestamp() * 1000)


class Label(BaseModel):
    """A verdict on a transaction, arriving days later (topic ``labels``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    transaction_id: Identifier = Field(description="The labelled transaction.")
    is_fraud: bool = Field(description="True for fraud.")
    labeled_at: EventTime = Field(description="When the verdict was given (event time).")
    source: str = Field("unknown", description="e.g. chargeback, analyst.")

    _check_time = field_validator("labeled_at")(_require_aware_utc)


class Reason(BaseModel):
    """One feature's part in a score."""

    model_config = ConfigDict(frozen=True)

    feature: str = Field(description="Feature name.")
    value: float = Field(description="The feature's value for this transaction.")
    contribution: float = Field(description="Its contribution to the score (log-odds or points).")


Scorer = Literal["model", "rules"]


class ScoreRecord(BaseModel):
    """One scoring decision (topic ``scores``, optional)."""

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    card_id: str
    terminal_id: str
    amount: float
    event_time: datetime
    score: float = Field(ge=0, le=1, description="Probability of fraud.")
    threshold: float = Field(ge=0, le=1, description="Score at which an alert is raised.")
    is_alert: bool
    scorer: Scorer = Field(description="'model' once trained enough, else 'rules'.")
    model_version: int = Field(description="0 for the rules prior.")
    reasons: list[Reason] = Field(description="Top contributing features.")
    scored_at: datetime
    latency_ms: float = Field(description="Event produce time (or event time) to decision.")
    schema_version: int = SCHEMA_VERSION


class Alert(ScoreRecord):
    """A suspected fraud (topic ``fraud-alerts``, key = ``card_id``)."""

    alert_id: str = Field(description="Derived from transaction_id: replays give the same id.")

    @staticmethod
    def id_for(transaction_id: str) -> str:
        """Alert id of a transaction.

        >>> Alert.id_for("t1") == Alert.id_for("t1")
        True
        """
        return str(uuid.uuid5(_ALERT_NAMESPACE, transaction_id))


TRANSACTION_BATCH = TypeAdapter(list[Transaction])
LABEL_BATCH = TypeAdapter(list[Label])

#: Exported by ``fraudstream schemas``.
EXPORTED_SCHEMAS: dict[str, type[BaseModel]] = {
    "transaction": Transaction,
    "label": Label,
    "alert": Alert,
    "score": ScoreRecord,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every exported message, by name."""
    return {name: model.model_json_schema() for name, model in EXPORTED_SCHEMAS.items()}


def condense(error: ValidationError, whole: str = "record") -> str:
    """A pydantic error as one line: ``field: message; field: message``.

    ``whole`` names the location of an error about the whole input (no field).

    Examples
    --------
    >>> try:
    ...     Label.model_validate({"transaction_id": "t1"})
    ... except ValidationError as exc:
    ...     print(condense(exc))
    is_fraud: Field required; labeled_at: Field required
    """
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or whole
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
