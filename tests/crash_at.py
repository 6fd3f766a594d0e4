"""Run ``fraudstream serve`` and crash it at one named point of the scorer's (or learner's) loop.

``python tests/crash_at.py POINT N MARKER [serve options...]``: the ``N``-th
time the process reaches ``POINT`` (one of :data:`POINTS`; only the times its
condition holds count), the process writes ``POINT N`` to the file ``MARKER``
and ends with ``os._exit(137)``: no ``finally`` block, no flush, no goodbye to
the group or the transaction coordinator, like a SIGKILL (the marker's third
word: the offsets this process saw committed before, summed over partitions; its
fourth, per partition: ``0=40,1=80``, or ``-``). Until then it is the
service unchanged, configured by the ``FRAUDSTREAM_*`` environment as
``fraudstream serve`` is (``tests/e2e/test_crash_points.py`` runs it, and
``tests/e2e/test_learner_crash_points.py`` with ``--role learner``).

A point is a function of the service (or of kafka-python) wrapped so that the
crash comes just *before* it runs or just *after* it returned. Where a request
was sent to Redis and the point is "it ran, its reply not read", the crash
first waits until the reply is on the socket (so Redis has run it), then exits
without reading it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaProducer

from fraudstream.service.checkpoint import Checkpoint
from fraudstream.service.features.cluster_store import ClusterFeatureStore
from fraudstream.service.features.redis_store import RedisFeatureStore, _Script
from fraudstream.service.kafka.clients import DeliveryTracker
from fraudstream.service.label_pipeline import LabelPipeline
from fraudstream.service.learner import Learner
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.snapshots import SnapshotSender, SnapshotStore
from fraudstream.service.waiting_labels import WaitingLabels

#: Longest wait for a reply to reach the socket before crashing without it.
_REPLY_WAIT_S = 10.0


class _Links:
    """Feature scripts sent on a connection and not read yet (the pipelined scorer's link)."""

    connection: Any = None
    unread = 0


def _track_feature_link() -> None:
    """Count the feature scripts in flight on the pipelined scorer's link."""
    send, read = RedisFeatureStore.send_update, RedisFeatureStore.read_update

    @functools.wraps(send)
    def send_update(self: RedisFeatureStore, connection: Any, update: Any) -> bool:
        sent = send(self, connection, update)
        if sent:
            _Links.connection, _Links.unread = connection, _Links.unread + 1
        return sent

    @functools.wraps(read)
    def read_update(self: RedisFeatureStore, connection: Any) -> Any:
        reply = read(self, connection)
        _Links.unread -= 1
        return reply

    RedisFeatureStore.send_update = send_update  # type: ignore[method-assign]
    RedisFeatureStore.read_update = read_update  # type: ignore[method-assign]


class _Committed:
    """Per partition, the offset this process last saw the group (or a transaction) take."""

    offsets: dict[Any, int] = {}


def _track_commits() -> None:
    """Remember every offset commit confirmed (the crash marker says how far they went)."""
    confirm = Checkpoint._confirm

    @functools.wraps(confirm)
    def _confirm(self: Checkpoint, offsets: Any) -> None:
        confirm(self, offsets)
        _Committed.offsets.update(self._committed)

    Checkpoint._confirm = _confirm  # type: ignore[method-assign]


def _replied(*connections: Any) -> None:
    """Wait until each connection has a reply waiting (Redis ran what was sent on it)."""
    for connection in connections:
        if not connection.can_read(timeout=_REPLY_WAIT_S):
            raise SystemExit(f"crash_at: no reply on {connection} within {_REPLY_WAIT_S} s")


def _next_features_in_flight(*_: Any, **__: Any) -> bool:
    """Batch k + 1's feature script is sent and its reply not read."""
    return _Links.unread > 0


def _delivering(tracker: DeliveryTracker, *_: Any, **__: Any) -> bool:
    """Records were handed to the producer (not an idle turn's flush of nothing)."""
    return bool(tracker._pending)


def _offsets_to_commit(checkpoint: Checkpoint, *_: Any, **__: Any) -> bool:
    """Offsets were tracked and not committed yet (not an idle turn)."""
    return any(checkpoint._committed.get(tp) != off for tp, off in checkpoint._next.items())


def _advances(checkpoint: Checkpoint, offsets: Any, *_: Any) -> bool:
    """A commit taken in moves an offset on (not an idle scorer proving its membership)."""
    return any(off > checkpoint._committed.get(tp, 0) for tp, off in offsets.items())


def _advances_with_next_features_in_flight(checkpoint: Checkpoint, offsets: Any) -> bool:
    return _advances(checkpoint, offsets) and _next_features_in_flight()


def _next_features_ran(sender: SnapshotSender, *_: Any) -> None:
    """Batch k + 1's feature script and batch k's snapshot writes have run in Redis."""
    _replied(_Links.connection, sender.connection)


@dataclass(frozen=True)
class Point:
    """Where to crash: ``owner.name`` called, ``when`` (before or after) it runs."""

    owner: type
    name: str
    when: str
    #: Only the calls for which this holds count (called with the call's arguments).
    condition: Callable[..., bool] | None = None
    #: Run just before crashing (with the call's arguments): e.g. wait for a reply.
    settle: Callable[..., None] | None = None
    #: Instead of the call, on the crashing call: send its request, wait, crash.
    replace: Callable[..., None] | None = None


def _feature_script_ran_unread(script: _Script, keys: list[str], args: list[Any]) -> None:
    """Send the feature script (one-at-a-time scorer) and let it run; its reply is never read."""
    connection = script._client.connection_pool.get_connection()
    script.send(connection, keys, args)
    _replied(connection)


def _snapshots_written_unacked(store: SnapshotStore, *args: Any, **kwargs: Any) -> None:
    """Send the snapshot script (one-at-a-time scorer) and let it run; its reply is never read."""
    keys, argv = store.put_arguments(*args, **kwargs)
    connection = store.client.connection_pool.get_connection()
    store.send_put(connection, keys, argv)
    _replied(connection)


def _wait_for_reply(_: object, connection: Any) -> None:
    _replied(connection)


def _some(_: object, items: Any, *__: Any) -> bool:
    """Called with something (records, members) to act on."""
    return bool(items)


def _learns_waiting(pipeline: LabelPipeline, records: Any, deadlines: Any = None) -> bool:
    """A look at waiting labels, some of which have their snapshot now (they are learnt)."""
    if not deadlines:
        return False
    ids = [orjson.loads(r.value or b"{}").get("transaction_id", "") for r in records]
    return any(s is not None for s in pipeline.learner.snapshots.get_many(ids))


def _label_cards_round(store: ClusterFeatureStore, calls: Any, *_: Any, **__: Any) -> bool:
    """A Redis Cluster round that ran the label card script (round 1 of a batch's labels)."""
    return bool(calls) and calls[0][1][0][1] == store._label_card_script.source


def _cards_round(store: ClusterFeatureStore, calls: Any, *_: Any, **__: Any) -> bool:
    """A Redis Cluster round that ran the card script (round 1 of a batch's features)."""
    return bool(calls) and calls[0][1][0][1] == store._card_script.source


#: Every point, by name. The pipelined scorer (at-least-once, overlapping batches on
#: one Redis node) sends its feature script and its snapshot writes without waiting
#: and reads their replies later; the one-at-a-time scorer (exactly-once) waits for each.
POINTS: dict[str, Point] = {
    # (a) the feature script sent, its reply not read
    "features-sent": Point(RedisFeatureStore, "send_update", "after"),
    "features-ran-unread": Point(RedisFeatureStore, "read_update", "before", None, _wait_for_reply),
    "features-ran-unread-sync": Point(
        _Script, "__call__", "before", replace=_feature_script_ran_unread
    ),
    # (b) the feature reply read, nothing scored
    "features-read": Point(RedisFeatureStore, "read_update", "after"),
    "features-read-sync": Point(RedisFeatureStore, "update_and_compute", "after"),
    # (c) the snapshots sent / written, not acknowledged; then acknowledged
    "snapshots-sent": Point(SnapshotStore, "send_put", "after"),
    "snapshots-written-unacked": Point(SnapshotStore, "read_put", "before", None, _wait_for_reply),
    "snapshots-written-unacked-sync": Point(
        SnapshotStore, "put_many", "before", replace=_snapshots_written_unacked
    ),
    "snapshots-acked": Point(SnapshotSender, "settle", "after"),
    "snapshots-acked-sync": Point(SnapshotStore, "put_many", "after"),
    # (d) alerts handed to the producer, not flushed
    "produced": Point(Checkpoint, "produce", "after"),
    # (e) every alert delivered (flushed), offsets not committed
    "flushed": Point(DeliveryTracker, "flush", "after", _delivering),
    "offsets-in-transaction": Point(KafkaProducer, "send_offsets_to_transaction", "after"),
    # (f) the offsets committed: the request sent, then its success taken in
    "commit-sent": Point(Checkpoint, "commit", "after", _offsets_to_commit),
    "commit-confirmed": Point(Checkpoint, "_confirm", "after", _advances),
    # (g) batch k + 1's feature script sent (and run) while batch k is not finished
    "next-features-in-flight-before-settle": Point(
        SnapshotSender, "settle", "before", _next_features_in_flight, _next_features_ran
    ),
    "next-features-in-flight-before-commit": Point(
        Checkpoint, "commit", "before", _next_features_in_flight
    ),
    "next-features-in-flight-after-commit": Point(
        Checkpoint, "_confirm", "after", _advances_with_next_features_in_flight
    ),
    # (h) Redis Cluster, between the feature rounds (service/features/cluster_store.py):
    # the cards counted (round 1), the terminals too (round 2), the flags and marks
    # settled (rounds 3 and 4)
    "rounds-cards-counted": Point(ClusterFeatureStore, "_run", "after", _cards_round),
    "rounds-terminals-counted": Point(ClusterFeatureStore, "_settle", "before"),
    "rounds-settled": Point(ClusterFeatureStore, "_settle", "after"),
    # (i) the learner (``--role learner``; its commits are (f)'s): a batch's labels
    # claimed for the pending version, counted in the card and terminal features,
    # learnt (in memory); a version published (before the next is reserved and the
    # offsets committed)
    "labels-claimed": Point(SnapshotStore, "claim_many", "after"),
    "labels-recorded": Point(RedisFeatureStore, "record_labels", "after"),
    "labels-learnt": Point(Learner, "learn_many", "after", _some),
    "version-published": Point(ModelRegistry, "publish", "after"),
    # (j) labels that came before their snapshot: parked in Redis to wait; learnt
    # once their snapshot is there; taken off once the version that learnt them is
    # published and its offsets committed
    "labels-waiting": Point(WaitingLabels, "add", "after", _some),
    "waiting-labels-learnt": Point(LabelPipeline, "process", "after", _learns_waiting),
    "waiting-labels-removed": Point(WaitingLabels, "remove", "before", _some),
    # (k) the learner on a Redis Cluster: a batch's labels flagged in the card
    # histories (round 1; rounds 2-4 are (h)'s "rounds-terminals-counted" and
    # "rounds-settled", which only labels reach in a learner)
    "label-rounds-cards-flagged": Point(ClusterFeatureStore, "_run", "after", _label_cards_round),
}


def _crash(point: str, n: int, marker: str) -> None:
    offsets = _Committed.offsets
    each = ",".join(f"{tp.partition}={off}" for tp, off in sorted(offsets.items())) or "-"
    with open(marker, "w", encoding="utf-8") as out:
        out.write(f"{point} {n} {sum(offsets.values())} {each}\n")
    sys.stderr.write(f"crash_at: crashing at {point}, call {n}\n")
    sys.stderr.flush()
    os._exit(137)


def install(point_name: str, nth: int, marker: str) -> None:
    """Wrap the function of ``point_name`` so that its ``nth`` counted call crashes."""
    point = POINTS[point_name]
    original = getattr(point.owner, point.name)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if point.condition is not None and not point.condition(*args, **kwargs):
            return original(*args, **kwargs)
        calls += 1
        if calls != nth:
            return original(*args, **kwargs)
        if point.replace is not None:
            point.replace(*args, **kwargs)
            _crash(point_name, nth, marker)
        if point.when == "before":
            if point.settle is not None:
                point.settle(*args, **kwargs)
            _crash(point_name, nth, marker)
        result = original(*args, **kwargs)
        if point.settle is not None:
            point.settle(*args, **kwargs)
        _crash(point_name, nth, marker)
        return result  # never reached

    setattr(point.owner, point.name, wrapper)


def main(argv: list[str]) -> None:
    """Install the crash, then run ``fraudstream serve`` with the remaining options."""
    point_name, nth, marker, *serve = argv
    if point_name not in POINTS:
        raise SystemExit(f"crash_at: unknown point {point_name!r}; known: {sorted(POINTS)}")
    _track_feature_link()
    _track_commits()
    install(point_name, int(nth), marker)
    from fraudstream.cli import main as fraudstream

    fraudstream(["serve", *serve], prog_name="fraudstream")


if __name__ == "__main__":
    main(sys.argv[1:])
