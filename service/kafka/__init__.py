"""Thin, typed wrappers over kafka-python clients, shared by the service and the producers.

No business logic lives here: only client construction with fraudstream's
defaults (idempotent producer, manual commits, bounded polls), topic creation,
and delivery tracking that turns a failed send into an exception instead of a
silent loss. Every builder takes the settings (or a :class:`KafkaConnection`),
so every client gets the security options (TLS, SASL); a secured connection
is verified (:func:`verify`) before a client is built. The builders return the
typed protocols of :mod:`fraudstream.service.kafka.protocols` (kafka-python
itself has no types).
"""

from fraudstream.service.kafka.clients import (
    DeliveryError,
    DeliveryTracker,
    accepts_connections,
    check_reachable,
    committed_offsets,
    ensure_topics,
    group_coordinator_known,
    make_admin,
    make_consumer,
    make_producer,
    max_message_bytes,
    subscribe,
)
from fraudstream.service.kafka.connection import KafkaConnection, verify

__all__ = [
    "DeliveryError",
    "DeliveryTracker",
    "KafkaConnection",
    "accepts_connections",
    "check_reachable",
    "committed_offsets",
    "ensure_topics",
    "group_coordinator_known",
    "make_admin",
    "make_consumer",
    "make_producer",
    "max_message_bytes",
    "subscribe",
    "verify",
]
