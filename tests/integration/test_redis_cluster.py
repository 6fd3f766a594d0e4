"""Redis Cluster, on the real local 3-master cluster: the stores agree with the single node.

The same simulated stream (out of order, late beyond the lateness bound,
duplicates, delayed labels) goes through the single-node stores on the session's
Redis and through the cluster stores; every feature value, every counter, every
claim and every snapshot must be the same.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import numpy as np
import pytest
import redis
import redis.cluster
from cluster_slots import SlotMove, Step, move_steps, slot_owners
from redis.crc import key_slot

from fraudstream.producers.simulator import SimulationConfig, simulate
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.features.cluster_store import (
    FLAG_LABEL_PENDING,
    FLAG_TERMINAL_PENDING,
    ClusterFeatureStore,
)
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import FLAG_LABELLED, RECORD_DTYPE, RedisFeatureStore
from fraudstream.service.features.store import LabelFact
from fraudstream.service.redis_client import check_cluster_mode, redis_client
from fraudstream.service.redis_cluster import (
    Call,
    ClusterUnavailableError,
    Group,
    NodeRounds,
    missing_slot_markers,
    slot_marker_key,
)
from fraudstream.service.schemas import Transaction
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import CLAIM_CONFLICT, Snapshot, SnapshotStore
from fraudstream.service.snapshots_cluster import ClusterSnapshotStore
from fraudstream.service.state import StateLostError, StateMarker, ensure_state, marker_key
from fraudstream.service.stores import feature_store, snapshot_store

# redis-py leaves execute_command and the cluster client's methods unannotated: their calls
# carry a narrow `type: ignore[no-untyped-call]`.

DAY_MS = 86_400_000


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    assert len(client.get_primaries()) == 3  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        client.close()


def simulated_stream(seed: int) -> tuple[list[Transaction], list[tuple[int, LabelFact]]]:
    """A few thousand simulated transactions in arrival order, and labels to record after some.

    Arrival: shuffled within 20 minutes (out of order), 2 % replays a little later
    (duplicates), 1 % arriving 3 days late (beyond the lateness of the config
    below: too late), plus a few replays of an original with other content.
    Labels: every fraud and 5 % of the genuine, each after the transaction with
    index ``i`` (a label delay of ~1,500 transactions), some twice.
    """
    sim = simulate(
        SimulationConfig(
            seed=seed,
            n_customers=400,
            n_terminals=300,
            n_days=6,
            start=datetime(2018, 4, 1, tzinfo=UTC),
        )
    )
    rng = random.Random(seed)
    rows = list(sim.rows(np.arange(len(sim))))
    txs = [Transaction.model_validate(row) for row in rows]
    arrival = []
    for tx in txs:
        delay_ms = rng.random() * 20 * 60_000
        if rng.random() < 0.01:
            delay_ms = 3 * DAY_MS
        arrival.append((tx.event_time_ms + delay_ms, tx))
    arrival.sort(key=lambda pair: pair[0])
    stream = [tx for _, tx in arrival]
    for _ in range(len(stream) // 50):
        original = rng.randrange(len(stream))
        stream.insert(min(len(stream), original + rng.randrange(1, 300)), stream[original])
    labels: list[tuple[int, LabelFact]] = []
    for i, tx in enumerate(txs):
        fraud = bool(sim.is_fraud[i])
        if fraud or rng.random() < 0.05:
            fact = LabelFact(tx.transaction_id, tx.card_id, tx.terminal_id, tx.event_time_ms, fraud)
            at = min(len(stream) - 1, i + 1500)
            labels.append((at, fact))
            if rng.random() < 0.1:
                labels.append((min(len(stream) - 1, at + rng.randrange(1, 500)), fact))
    return stream, labels


def config(prefix: str) -> FeatureConfig:
    # Card windows up to 1 day and 1 hour of lateness: the 3-day-late events are too late.
    return FeatureConfig(prefix=prefix, windows_s=(3600, 86400), allowed_lateness_s=3600)


def test_features_on_a_cluster_equal_the_single_nodes(
    cluster: redis.cluster.RedisCluster, redis_client: redis.Redis, redis_prefix: str
) -> None:
    stream, labels = simulated_stream(seed=5)
    assert len(stream) > 2000
    single = RedisFeatureStore(redis_client, config(redis_prefix))
    on_cluster = ClusterFeatureStore(cluster, config(redis_prefix), wait_replicas=1)
    by_position: dict[int, list[LabelFact]] = {}
    for at, fact in labels:
        by_position.setdefault(at, []).append(fact)
    rng = random.Random(5)
    i = 0
    while i < len(stream):
        size = rng.choice([1, 7, 100, 500, 1000])
        batch = stream[i : i + size]
        want = single.update_and_compute(batch)
        got = on_cluster.update_and_compute(batch)
        np.testing.assert_array_equal(got.is_duplicate, want.is_duplicate)
        np.testing.assert_array_equal(got.values, want.values)
        facts = [f for j in range(i, i + len(batch)) for f in by_position.get(j, [])]
        single.record_labels(facts)
        on_cluster.record_labels(facts)
        i += len(batch)
    assert on_cluster.counters == single.counters
    counters = single.counters
    assert counters.duplicates > 0 and counters.too_late > 0 and counters.inserted > 2000
    # Nothing pending is left: every record's flags and every terminal mark settled.
    leftovers = [k for k in cluster.scan_iter(match=f"{redis_prefix}:*:n", count=1000)]
    assert leftovers == []
    pending = FLAG_TERMINAL_PENDING | FLAG_LABEL_PENDING
    cards = list(cluster.scan_iter(match=f"{redis_prefix}:{{c:*", count=1000))
    # A client that does not decode replies: bytes, which redis-py types as bytes | str.
    flags = np.concatenate(
        [
            np.frombuffer(cast(bytes | None, cluster.get(k)) or b"", RECORD_DTYPE)["flags"]
            for k in cards
        ]
    )
    assert len(cards) > 300 and len(flags) > 1000  # 1-day windows: older records trimmed
    assert not (flags & pending).any()
    assert (flags & FLAG_LABELLED).sum() > 100  # the labels did flag their records


class CrashAfter:
    """Rounds that run ``rounds`` rounds, then fail as a lost connection would."""

    def __init__(self, rounds: NodeRounds, rounds_before_crash: int) -> None:
        self.inner = rounds
        self.left = rounds_before_crash

    def group(self, keys: Sequence[str]) -> list[Group]:
        return self.inner.group(keys)

    def run(self, calls: Sequence[Call], *, wait: bool = False) -> list[list[Any]]:
        if self.left == 0:
            raise redis.ConnectionError("crash between rounds")
        self.left -= 1
        return self.inner.run(calls, wait=wait)


def test_a_replay_after_a_crash_between_rounds_counts_nothing_twice(
    cluster: redis.cluster.RedisCluster, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """A batch interrupted after each round, then replayed, ends as one run of it on one node.

    Interrupted before its pending flags were cleared (after round 1 or 2), the
    replay reports what the first run would have: the same duplicates, the same
    features. Interrupted after round 3, the batch had been counted: its replay
    is a replay of duplicates.
    """
    stream, _ = simulated_stream(seed=6)
    batch = stream[:400]
    single = RedisFeatureStore(redis_client, config(redis_prefix))
    want = single.update_and_compute(batch)
    after = single.update_and_compute(stream[400:800])
    for stop_after in (1, 2, 3):
        store = ClusterFeatureStore(cluster, config(f"{redis_prefix}-{stop_after}"))
        rounds = store._rounds
        store._rounds = CrashAfter(rounds, stop_after)  # type: ignore[assignment]
        with pytest.raises(redis.ConnectionError):
            store.update_and_compute(batch)
        store._rounds = rounds
        replay = store.update_and_compute(batch)
        if stop_after < 3:
            np.testing.assert_array_equal(replay.is_duplicate, want.is_duplicate)
            np.testing.assert_array_equal(replay.values, want.values)
        else:
            assert replay.is_duplicate.all()
        # What follows sees exactly the single node's state.
        follow = store.update_and_compute(stream[400:800])
        np.testing.assert_array_equal(follow.values, after.values)
    assert want.values.shape[0] == 400


def test_snapshots_and_claims_on_a_cluster_equal_the_single_nodes(
    cluster: redis.cluster.RedisCluster, redis_client: redis.Redis, redis_prefix: str
) -> None:
    stream, _ = simulated_stream(seed=7)
    batch = stream[:1500]
    single = SnapshotStore(redis_client, redis_prefix, 3600)
    on_cluster = ClusterSnapshotStore(cluster, redis_prefix, 3600, wait_replicas=1)
    changed = [
        Transaction.model_validate({**tx.model_dump(), "amount": tx.amount + 1}) for tx in batch[:5]
    ]
    for part in (batch, batch[:700], changed):
        np.testing.assert_array_equal(on_cluster.claim_many_ids(part), single.claim_many_ids(part))
    assert (single.claim_many_ids(changed) == CLAIM_CONFLICT).all()
    X = np.random.default_rng(0).random((len(batch), 4))
    names = ["a", "b", "c", "d"]
    keep = np.arange(len(batch)) % 3 == 0
    for store in (single, on_cluster):
        store.put_many(batch, X, X[:, 0], 3, names, keep_existing=keep)
    ids = [tx.transaction_id for tx in batch] + ["missing"]

    def fields(snapshot: Snapshot | None) -> tuple[object, ...] | None:
        if snapshot is None:
            return None
        return (snapshot.card_id, snapshot.score, snapshot.features.tolist())

    got, want = on_cluster.get_many(ids), single.get_many(ids)
    assert [fields(s) for s in got] == [fields(s) for s in want]
    assert want[-1] is None and all(s is not None for s in want[:-1])
    label_ids = ids[:300] + ids[:10]
    assert on_cluster.claim_many(label_ids, "7") == single.claim_many(label_ids, "7")
    assert on_cluster.claim_many(ids[:20], "8", stale=["7"]) == single.claim_many(
        ids[:20], "8", stale=["7"]
    )


def test_the_state_marker_of_every_slot(
    cluster: redis.cluster.RedisCluster, redis_prefix: str
) -> None:
    """A fresh deployment writes all 16,384 slot markers; a lost slot stops its scripts."""
    marker = ensure_state(cluster, redis_prefix, lambda: False)
    assert marker.origin == "fresh"
    assert missing_slot_markers(cluster, redis_prefix) == []
    store = ClusterFeatureStore(cluster, config(redis_prefix), check_state=True)
    stream, _ = simulated_stream(seed=8)
    store.update_and_compute(stream[:200])
    # One slot loses its marker (as a master restarted empty would lose its slots').
    slot = cluster.keyslot(store.card_key(stream[300].card_id))  # type: ignore[no-untyped-call]
    cluster.delete(slot_marker_key(redis_prefix, slot))
    with pytest.raises(StateLostError, match="state of prefix"):
        store.update_and_compute(stream[300:301])
    with pytest.raises(StateLostError, match="1 of the cluster's 16,384 slots"):
        ensure_state(cluster, redis_prefix, lambda: True)
    StateMarker.write(cluster, redis_prefix, "rebuilt")
    assert missing_slot_markers(cluster, redis_prefix) == []
    store.update_and_compute(stream[300:301])
    assert cluster.exists(marker_key(redis_prefix))


def test_the_cluster_setting_must_match_the_server(
    redis_cluster_url: str, redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ConfigurationError, match="is not a Redis Cluster node"):
        redis_client(
            make_settings(redis_url=redis_url, redis_cluster=True, bootstrap_servers="127.0.0.1:1")
        )
    settings = make_settings(redis_url=redis_cluster_url, bootstrap_servers="127.0.0.1:1")
    client = redis.Redis.from_url(redis_cluster_url)
    with pytest.raises(ConfigurationError, match="set FRAUDSTREAM_REDIS_CLUSTER=true"):
        check_cluster_mode(client, settings)
    client.close()
    settings = make_settings(
        redis_url=redis_cluster_url, redis_cluster=True, bootstrap_servers="127.0.0.1:1"
    )
    cluster = redis_client(settings)
    check_cluster_mode(cluster, settings)
    assert isinstance(feature_store(cluster, config("x")), ClusterFeatureStore)
    assert isinstance(snapshot_store(cluster, "x", 60), ClusterSnapshotStore)
    cluster.close()


# -- resharding while a stream is counted ---------------------------------------------


class Resharding:
    """Slot moves run a step at a time between the calls of a stream (see the test below).

    :meth:`call` runs a store call; while Redis refuses it, the next step of the
    plan is taken and the call retried, as the scorer retries a batch until the
    slot has moved. :meth:`advance` takes the next step between batches, once the
    current state has been met by a call touching its slot. Every call is logged
    with the state it met, whether its keys touch the moving slot, and its outcome.
    """

    def __init__(self, plan: list[tuple[int, tuple[str, Callable[[], None]]]]) -> None:
        self.plan = plan
        self.state, self.slot = "stable", -1
        self.met = True
        self.log: list[tuple[str, str, bool, str]] = []

    def step(self) -> bool:
        if not self.plan:
            return False
        self.slot, (self.state, run) = self.plan.pop(0)
        run()
        self.met = False
        return True

    def advance(self) -> None:
        if self.met:
            self.step()

    def call(self, name: str, keys: Sequence[str], run: Callable[[], Any]) -> Any:
        reloads = 2  # once the plan is done, a stale slot map is reloaded by the retry
        while True:
            touched = any(key_slot(key.encode()) == self.slot for key in keys)
            self.met = self.met or touched
            try:
                out = run()
            except ClusterUnavailableError as exc:
                # Redis 7.0's refusal of a script touching a key this master does not
                # serve now: a slot migrating (the key gone, or new), or moved.
                assert "Script attempted to access a non local key" in str(exc)
                self.log.append((self.state, name, touched, "refused"))
                # Retried once in the same state (the slot map reloaded), then after
                # the next step.
                again = self.log[-2:-1] == [(self.state, name, touched, "refused")]
                if again and not self.step():
                    reloads -= 1
                    if not reloads:
                        raise
                continue
            self.log.append((self.state, name, touched, "ok"))
            return out


def _slots_to_move(
    features: ClusterFeatureStore, stream: Sequence[Transaction], tail: Sequence[LabelFact]
) -> list[int]:
    """The slots to move (see the test below).

    The busiest terminal's, the two busiest cards' (of slots without a
    terminal), the slot of the terminal with the most labels in ``tail``.
    """

    def slot(key: str) -> int:
        return key_slot(key.encode())

    terminals = Counter(slot(features.terminal_key(tx.terminal_id)) for tx in stream)
    cards = Counter(slot(features.card_key(tx.card_id)) for tx in stream)
    busy_cards = [s for s, _ in cards.most_common() if s not in terminals][:2]
    labelled = Counter(slot(features.terminal_key(f.terminal_id)) for f in tail)
    slots = [terminals.most_common(1)[0][0], *busy_cards, labelled.most_common(1)[0][0]]
    assert len(set(slots)) == 4
    return slots


def _maps_loaded_first(stores: Sequence[Any], steps: list[Step]) -> list[Step]:
    """``steps``, the last after the stores' slot maps were loaded (naming the source)."""
    name, run = steps[-1]

    def load_then_run() -> None:
        for store in stores:
            store._rounds.group([])  # reloads the map of a store that met a refusal
        run()

    return [*steps[:-1], (name, load_then_run)]


def _check_the_states(
    log: list[tuple[str, str, bool, str]], slots: list[int], planned: list[str]
) -> None:
    """Every state was met by a call touching its slot, and each refused the calls it should."""
    met = {s for s, _, touched, _ in log if touched}
    assert met >= set(planned) and len(planned) == 24
    refused = [(s, call) for s, call, touched, outcome in log if outcome == "refused"]
    assert {call for _, call in refused} == {"features", "labels"}
    assert all(touched for _, _, touched, outcome in log if outcome == "refused")
    # The card's scripts ran while its slot was split between two masters...
    assert (f"slot {slots[1]} migrating, some keys moved", "features", True, "ok") in log
    # ... and none ran once the marker of the slot had moved (the card still there).
    assert all(
        outcome == "refused" for s, _, touched, outcome in log if touched and "moved first" in s
    )
    # A stale slot map: the first call touching the moved slot refused, the retry served.
    for slot in (slots[0], slots[2]):
        moved = [e for e in log if e[0] == f"slot {slot} moved, slot maps stale" and e[2]]
        assert moved[0][3] == "refused" and moved[1][3] == "ok", moved[:2]


def test_resharding_while_a_stream_is_counted(
    cluster: redis.cluster.RedisCluster, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Slots of the stream's keys move between masters between batches, through every state.

    Four slots move one after the other with ``CLUSTER SETSLOT ...
    IMPORTING/MIGRATING``, ``MIGRATE ... KEYS`` two keys at a time and ``CLUSTER
    SETSLOT ... NODE``: the busiest terminal's (its state marker among the other
    keys; the owner changed everywhere at once, so the stores' slot maps are
    stale), the busiest card's (the card and the marker moved last: the card's
    scripts still run while the slot's other keys are gone), the next card's
    (the marker moved first: every script touching the slot is refused), and,
    while the last labels are counted, the slot of their busiest terminal. Each
    batch of the stream (id claims, features, snapshots, the label path) runs in
    the state the last step left; a refused call is retried as the scorer and the
    learner retry a batch. Every transaction and label must be counted as on a
    single node, and the snapshots found where the label path looks.
    """
    stream, labels = simulated_stream(seed=9)
    cfg = config(redis_prefix)
    ensure_state(cluster, redis_prefix, lambda: False)
    single = RedisFeatureStore(redis_client, cfg)
    single_snapshots = SnapshotStore(redis_client, redis_prefix, 3600)
    features = ClusterFeatureStore(cluster, cfg, check_state=True, wait_replicas=1)
    snapshots = ClusterSnapshotStore(cluster, redis_prefix, 3600, wait_replicas=1)
    label_at: dict[int, list[LabelFact]] = {}
    for at, fact in labels:
        label_at.setdefault(at, []).append(fact)

    def counted(txs: Sequence[Transaction]) -> list[str]:
        return [
            k
            for tx in txs
            for k in (features.card_key(tx.card_id), features.terminal_key(tx.terminal_id))
        ]

    def stored(ids: Sequence[str]) -> list[str]:
        return [k for i in ids for k in (snapshots.key(i), snapshots.claim_key(i))]

    tail = label_at.pop(len(stream) - 1)  # the labels that come after the stream
    slots = _slots_to_move(features, stream, tail)
    owners = slot_owners(cluster.get_primaries()[0].name)  # type: ignore[no-untyped-call]
    masters = sorted(set(owners.values()))
    moves = [
        SlotMove(slot, owners[slot], masters[(masters.index(owners[slot]) + 1) % 3], masters)
        for slot in slots
    ]
    marker = [slot_marker_key(redis_prefix, slot) for slot in slots]
    card = {key_slot(k.encode()): k for k in counted(stream)}

    stores = (features, snapshots)
    reshard = Resharding(
        [
            *(
                (slots[0], s)
                for s in _maps_loaded_first(stores, move_steps(moves[0], assign_at_once=True))
            ),
            *((slots[1], s) for s in move_steps(moves[1], last=[card[slots[1]], marker[1]])),
            *(
                (slots[2], s)
                for s in _maps_loaded_first(
                    stores, move_steps(moves[2], first=[marker[2]], assign_at_once=True)
                )
            ),
        ]
    )
    planned = [name for _, (name, _) in reshard.plan] + [name for name, _ in move_steps(moves[3])]
    scored: set[str] = set()

    def score(batch: list[Transaction]) -> None:
        ids = [tx.transaction_id for tx in batch]
        claims = reshard.call("id claims", stored(ids), partial(snapshots.claim_many_ids, batch))
        np.testing.assert_array_equal(
            claims == CLAIM_CONFLICT, single_snapshots.claim_many_ids(batch) == CLAIM_CONFLICT
        )
        want = single.update_and_compute(batch)
        got = reshard.call("features", counted(batch), partial(features.update_and_compute, batch))
        np.testing.assert_array_equal(got.is_duplicate, want.is_duplicate)
        np.testing.assert_array_equal(got.values, want.values)
        put = partial(
            snapshots.put_many, batch, got.values, got.values[:, 0], 1, got.names,
            keep_existing=got.is_duplicate,
        )  # fmt: skip
        reshard.call("snapshots", stored(ids), put)
        scored.update(ids)

    def learn(facts: list[LabelFact]) -> None:
        # The label path: the snapshot of each labelled transaction scored so far...
        labelled = [f.transaction_id for f in facts if f.transaction_id in scored]
        found = reshard.call(
            "snapshot reads", stored(labelled), partial(snapshots.get_many, labelled)
        )
        assert all(s is not None for s in found)
        # ... and the labels counted at their cards and terminals.
        keys = [
            k
            for f in facts
            for k in (features.card_key(f.card_id), features.terminal_key(f.terminal_id))
        ]
        single.record_labels(facts)
        reshard.call("labels", keys, partial(features.record_labels, facts))

    try:
        rng = random.Random(9)
        i = batches = 0
        while i < len(stream):
            batch = stream[i : i + rng.choice([50, 150, 300])]
            batches += 1
            facts = [f for j in range(i, i + len(batch)) for f in label_at.get(j, [])]
            # The scorer's and the learner's calls, in turn first to meet a new state.
            if batches % 2:
                score(batch)
                learn(facts)
            else:
                learn(facts)
                score(batch)
            i += len(batch)
            reshard.advance()
        assert not reshard.plan  # every step met the stream
        reshard.plan = [(slots[3], step) for step in move_steps(moves[3])]
        reshard.advance()
        for k in range(0, len(tail), 3):
            learn(tail[k : k + 3])
            reshard.advance()
        assert not reshard.plan
    finally:
        for move in moves:
            move.close()

    _check_the_states(reshard.log, slots, planned)

    # Counted as on a single node: each transaction once, the duplicates as duplicates,
    # each label once, every card history and terminal ring byte for byte.
    assert features.counters == single.counters
    for key in {*counted(stream), *(features.terminal_key(f.terminal_id) for f in tail)}:
        assert cluster.get(key) == redis_client.get(key), key
    assert single.counters.duplicates > 0 and single.counters.inserted > 2000
    assert list(cluster.scan_iter(match=f"{redis_prefix}:*:n", count=1000)) == []
    # Each slot is its target's, with its keys and its state marker; the state is whole.
    owners = slot_owners(cluster.get_primaries()[0].name)  # type: ignore[no-untyped-call]
    assert [owners[slot] for slot in slots] == [move.target for move in moves]
    assert cluster.exists(*marker) == 4
    assert missing_slot_markers(cluster, redis_prefix) == []
    assert ensure_state(cluster, redis_prefix, lambda: True).origin == "fresh"
    assert all(s is not None for s in snapshots.get_many([tx.transaction_id for tx in stream]))
