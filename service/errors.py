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


class DevStackError(FraudstreamError):
    """The local Kafka/Redis stack could not be installed, started or stopped.

    The message is one line that says what is wrong and what to do.
    """


class InvalidEventError(FraudstreamError):
    """An event could not be decoded or validated; it goes to a dead-letter topic."""


class OversizeEventError(InvalidEventError):
    """An event is larger than ``max_message_bytes``."""


class DecodeError(InvalidEventError):
    """An event's bytes are not UTF-8 JSON."""


class ValidationFailedError(InvalidEventError):
    """An event is JSON but breaks the message contract."""


class MissingSnapshotError(FraudstreamError):
    """A label arrived for a transaction whose feature snapshot is missing or expired."""


class ModelVersionError(FraudstreamError):
    """A model version is missing or unreadable; the version in use stays."""


class SignatureError(ModelVersionError):
    """A model version is unsigned, tampered or signed with another key: never unpickled."""


class UnavailableError(FraudstreamError):
    """Kafka or Redis cannot be reached; the caller backs off and retries."""
