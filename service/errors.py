"""Exceptions of fraudstream.

One root, :class:`FraudstreamError`, and a few subclasses that mean something to
the caller. A bad *input* (an event, a label, a model version) never crashes the
service: it becomes a dead letter or a refused model version carrying the error's
class name and message.
"""

from __future__ import annotations


class FraudstreamError(Exception):
    """Root of every error fraudstream raises on purpose."""


class ConfigurationError(FraudstreamError):
    """The settings or the environment do not allow the requested operation."""


class AuthenticationFailedError(ConfigurationError):
    """Kafka or Redis refused the credentials (password, client certificate) it was given.

    The message says "authentication failed", where, and which setting holds
    the credentials; retrying does not help until the setting is fixed.
    """


class DevStackError(FraudstreamError):
    """The local Kafka/Redis stack could not be installed, started or stopped.

    The message is one line that says what is wrong and what to do.
    """


class InvalidEventError(FraudstreamError):
    """An event could not be decoded or validated; it goes to a dead-letter topic."""


class OversizeEventError(InvalidEventError):
    """An event is larger than ``max_message_bytes``."""


class UnreadableRecordsError(InvalidEventError):
    """Records in the log could not be read: a record batch damaged after the broker wrote it.

    Its bytes are the dead letter's value; the partition goes on after the batch.
    """


class DecodeError(InvalidEventError):
    """An event's bytes are not UTF-8 JSON."""


class ValidationFailedError(InvalidEventError):
    """An event is JSON but breaks the message contract."""


class EventTimeAheadError(InvalidEventError):
    """An event time is further ahead of its record's Kafka timestamp than allowed."""


class MissingSnapshotError(FraudstreamError):
    """A label arrived for a transaction whose feature snapshot is missing or expired."""


class LabelConflictError(FraudstreamError):
    """A label says the opposite of the label already learnt for its transaction.

    An online model cannot unlearn the first; the second is dead-lettered for
    a person to look at (a corrected label, or a labelling bug upstream).
    """


class ModelVersionError(FraudstreamError):
    """A model version is missing or unreadable; the version in use stays."""


class SignatureError(ModelVersionError):
    """A model version is unsigned, tampered or signed with another key: never unpickled."""


class LeaseLostError(FraudstreamError):
    """Another learner took the lease this learner held: it stops, its model unpublished.

    See :mod:`fraudstream.service.learner_lease`.
    """


class LogReplacedError(FraudstreamError):
    """A log the service reads was replaced under it: its topic created again, or truncated.

    Its offsets then mean other records: the loop stops for a restart to read on.
    """


class UnavailableError(FraudstreamError):
    """Kafka or Redis cannot be reached; the caller backs off and retries."""


class RedisUnavailableError(UnavailableError):
    """Redis answers but cannot do the work yet (state or scripts lost): a Redis error, retried."""


class IdConflictError(InvalidEventError):
    """A transaction id arrived again with other content (another card, time, amount...)."""


class UnprocessableEventError(InvalidEventError):
    """A valid-looking event made a processing step fail; it is dead-lettered alone."""


def is_dependency_error(exc: BaseException) -> bool:
    """Whether ``exc`` says a dependency (Redis, Kafka) is unwell, not that the input is bad.

    Such errors are retried after a back-off with nothing committed; any other
    error raised while processing one record is that record's fault and makes
    it a dead letter.

    >>> import redis
    >>> is_dependency_error(redis.ConnectionError("gone")), is_dependency_error(ValueError("x"))
    (True, False)
    >>> is_dependency_error(redis.ResponseError("OOM command not allowed when used memory"))
    True
    """
    import redis  # local: keeps this module importable without the client libraries
    from kafka.errors import KafkaError

    if isinstance(exc, UnavailableError | MemoryError | KafkaError):
        return True
    if isinstance(
        exc,
        redis.ConnectionError
        | redis.TimeoutError
        | redis.exceptions.OutOfMemoryError
        | redis.exceptions.ReadOnlyError
        | redis.exceptions.ClusterError
        | redis.exceptions.TryAgainError
        | redis.exceptions.AskError,
    ):
        return True
    # The cluster client found no node to ask (all unreachable, e.g. during a failover).
    if isinstance(exc, redis.exceptions.RedisClusterException) and "cannot be connected" in str(
        exc
    ):
        return True
    # Servers that answer without the specific error class (e.g. over a proxy).
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(
        ("OOM", "LOADING", "BUSY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "READONLY")
    )
