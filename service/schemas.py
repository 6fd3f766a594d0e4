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

import functools
import hashlib
import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, overload

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
_MIN_EVENT_TIME_MS = int(_MIN_EVENT_TIME.timestamp() * 1000)
_MAX_EVENT_TIME_MS = int(_MAX_EVENT_TIME.timestamp() * 1000)

#: The usual shape of an RFC 3339 event time: UTC ("Z"), whole seconds up to
#: microseconds. :func:`_parse_event_time` parses it with ``datetime.fromisoformat``
#: (pydantic and ``fromisoformat`` read such a string alike); pydantic parses the rest.
_UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z", re.ASCII)

#: Largest accepted amount, in currency units. Card histories store amounts as
#: float32 (about 7 significant digits, overflowing above 3.4e38); no card
#: payment comes near a billion units, so anything larger is a unit or encoding
#: mistake and is dead-lettered rather than allowed to skew the card's windows.
MAX_AMOUNT = 1_000_000_000.0

#: Longest accepted id (characters) and optional text field.
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 256

#: Characters refused in ids and text fields: control characters (Cc: NUL, line
#: breaks, escapes), format characters (Cf: bidi overrides, zero-width spaces,
#: BOM) and line/paragraph separators. They make ids that look alike but differ, break logs and
#: terminals, or cannot be written to Redis. Evaluated by pydantic-core's Rust
#: regex engine, which knows Unicode categories.
_PRINTABLE = r"^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$"

#: Namespace of alert ids: an alert id is derived from its transaction id, so a
#: replayed transaction produces the same alert id and downstream can dedupe.
_ALERT_NAMESPACE = uuid.UUID("6f1c2a52-3c1e-4d55-9a43-4f0c8d1e2b7a")


def _parse_event_time(value: Any) -> Any:
    """Accept epoch milliseconds (a JSON number) or an RFC 3339 string with an offset.

    Numbers are range-checked *before* any conversion, so no value (``10**30``,
    ``1e300``, ``-1e20``) can raise anything but a validation error. A string of
    the common shape :data:`_UTC_TIME` is parsed here, into the datetime pydantic
    would make of it once in UTC (~0.7 µs less per transaction than pydantic's
    parse and :func:`_require_aware_utc`'s conversion); any other string is left
    to pydantic.

    >>> _parse_event_time(1522540800000).isoformat()
    '2018-04-01T00:00:00+00:00'
    >>> _parse_event_time("2018-04-01T00:00:00.5Z").isoformat()
    '2018-04-01T00:00:00.500000+00:00'
    >>> _parse_event_time("2018-04-01T02:00:00+02:00")  # left to pydantic
    '2018-04-01T02:00:00+02:00'
    >>> _parse_event_time(10**30)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: timestamp 1000000000000000000000000000000 is not epoch milliseconds between ...
    """
    if type(value) is str and _UTC_TIME.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value  # e.g. February 30th: pydantic says what is wrong
    if isinstance(value, bool):
        raise ValueError("timestamp must be epoch milliseconds or an RFC 3339 string")
    if isinstance(value, int | float):
        if not (math.isfinite(value) and _MIN_EVENT_TIME_MS <= value < _MAX_EVENT_TIME_MS):
            raise ValueError(
                f"timestamp {value!r} is not epoch milliseconds between 2000-01-01 and "
                "2100-01-01 (seconds sent as milliseconds?)"
            )
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        # pydantic would guess seconds or milliseconds from a digit string's size.
        raise ValueError(
            "timestamp must be a JSON number (epoch milliseconds) or an RFC 3339 string, "
            f"not the digit string {value[:40]!r}"
        )
    return value


def _require_aware_utc(value: datetime) -> datetime:
    if value.tzinfo is not UTC:  # already in UTC (the usual case): nothing to convert
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must carry a timezone offset (e.g. 2018-04-01T10:00:00Z)")
        value = value.astimezone(UTC)
    if not _MIN_EVENT_TIME <= value < _MAX_EVENT_TIME:
        raise ValueError(f"timestamp {value.isoformat()} is outside 2000-01-01..2100-01-01")
    return value


T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class _computed_once(Generic[T]):
    """``functools.cached_property`` without its lock.

    On Python 3.11 ``cached_property`` takes an ``RLock`` on every first read
    of every instance (3.12 dropped it): on the scorer's hot path, a transaction's
    ``event_time_ms`` and ``content_digest`` cost ~0.3 µs more each. The value is
    a pure function of a frozen model, so two threads computing it at once both
    store the same value.

    >>> class C:
    ...     @_computed_once
    ...     def twice(self) -> int:
    ...         return 2
    >>> c = C()
    >>> c.twice, "twice" in c.__dict__
    (2, True)
    """

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _computed_once[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> T | _computed_once[T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.func(obj)
        return value


EventTime = Annotated[datetime, BeforeValidator(_parse_event_time)]
Identifier = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH, pattern=_PRINTABLE
    ),
]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_LENGTH, pattern=_PRINTABLE)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
#: A JSON number (int or float): strings and booleans are refused.
Number = Annotated[float, Field(strict=True)]


class Transaction(BaseModel):
    """A card transaction event (topic ``transactions``, key = ``card_id``).

    Unknown fields are kept in ``model_extra`` and never used as features.
    """

    model_config = ConfigDict(
        extra="allow", frozen=True, allow_inf_nan=False, ignored_types=(_computed_once,)
    )

    transaction_id: Identifier = Field(description="Unique id of the transaction.")
    card_id: Identifier = Field(description="Card (customer) id; the Kafka key.")
    terminal_id: Identifier = Field(description="Terminal or merchant id.")
    amount: Number = Field(
        ge=0,
        le=MAX_AMOUNT,
        description="Amount in `currency`: a JSON number, 0 (card verification) to 1e9, finite.",
    )
    currency: CurrencyCode = Field("EUR", description="ISO 4217 code.")
    timestamp: EventTime = Field(
        description="Event time: RFC 3339 with an offset, or epoch milliseconds."
    )
    merchant_category: Text | None = Field(None, description="Merchant category code.")
    channel: Text | None = Field(None, description="e.g. pos, ecom, atm.")
    country: Text | None = Field(None, description="ISO 3166 country of the terminal.")
    lat: Number | None = Field(None, ge=-90, le=90, description="Latitude of the terminal.")
    lon: Number | None = Field(None, ge=-180, le=180, description="Longitude of the terminal.")

    _check_time = field_validator("timestamp")(_require_aware_utc)

    @model_validator(mode="after")
    def _location_is_complete(self) -> Transaction:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        return self

    @_computed_once
    def event_time_ms(self) -> int:
        """Event time in epoch milliseconds (computed once: the hot path reads it often)."""
        return round(self.timestamp.timestamp() * 1000)

    @_computed_once
    def content_digest(self) -> bytes:
        """8 bytes that identify what the transaction says (card, terminal, time, amount, currency).

        A transaction id that arrives again with the same digest is a replay; with
        another digest it is a conflict (an id reused for another transaction).

        >>> a = Transaction(transaction_id="t", card_id="c", terminal_id="m", amount=5,
        ...                 timestamp=1522540800000)
        >>> b = a.model_copy(update={"card_id": "other"})
        >>> len(a.content_digest), a.content_digest == a.model_copy().content_digest
        (8, True)
        >>> a.content_digest == b.content_digest
        False
        """
        text = "\x1f".join(
            (
                self.card_id,
                self.terminal_id,
                str(self.event_time_ms),
                repr(self.amount),
                self.currency,
            )
        )
        return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


class Label(BaseModel):
    """A verdict on a transaction, arriving days later (topic ``labels``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    transaction_id: Identifier = Field(description="The labelled transaction.")
    is_fraud: bool = Field(strict=True, description="True for fraud (a JSON boolean).")
    labeled_at: EventTime = Field(description="When the verdict was given (event time).")
    source: Text = Field("unknown", description="e.g. chargeback, analyst.")

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


@functools.cache
def batch_adapter(model: type[M], *, tolerant: bool = False) -> TypeAdapter[list[Any]]:
    """The pydantic adapter of a list of ``model``, to validate a batch in one call.

    Strict (the default), one bad item fails the whole call. ``tolerant``, a bad
    item comes back as its JSON value (a dict, most often) instead, for the
    caller to validate alone for its reason; each good item as a ``model``. The
    tolerant list costs ~6 % more per item (pydantic parses each item before
    trying the model, to try the other choice): it is for batches expected to
    hold bad records.

    >>> items = batch_adapter(Label, tolerant=True).validate_json(
    ...     b'[{"transaction_id":"t1","is_fraud":true,"labeled_at":"2024-01-01T00:00:00Z"},'
    ...     b'{"transaction_id":"t2"}]'
    ... )
    >>> [type(item).__name__ for item in items]
    ['Label', 'dict']
    """
    if not tolerant:
        return TypeAdapter(list[model])  # type: ignore[valid-type]
    item = Annotated[model | Any, Field(union_mode="left_to_right")]  # type: ignore[valid-type]
    return TypeAdapter(list[item])


TRANSACTION_BATCH = batch_adapter(Transaction)


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
        message = item["msg"]
        if item["type"] == "string_pattern_mismatch" and item.get("ctx", {}).get("pattern") == (
            _PRINTABLE
        ):
            message = "must not contain control or invisible formatting characters"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
