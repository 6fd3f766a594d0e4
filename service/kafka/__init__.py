"""Thin, typed wrappers over kafka-python clients, shared by the service and the producers.

No business logic lives here: only client construction with fraudstream's
defaults (idempotent producer, manual commits, bounded polls), topic creation,
and delivery tracking that turns a failed send into an exception instead of a
silent loss.
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
    subscribe,
)

__all__ = [
    "DeliveryError",
    "DeliveryTracker",
    "accepts_connections",
    "check_reachable",
    "committed_offsets",
    "ensure_topics",
    "group_coordinator_known",
    "make_admin",
    "make_consumer",
    "make_producer",
    "subscribe",
]
