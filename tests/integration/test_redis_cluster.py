"""Redis Cluster, on the real local 3-master cluster: the stores agree with the single node.

The same simulated stream (out of order, late beyond the lateness bound,
duplicates, delayed labels) goes through the single-node stores on the session's
Redis and through the cluster stores; every feature value, every counter, every
claim and every snapshot must be the same.
"""

from __future__ import annotations

import dataclasses
import logging
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
from fraudstream.service.errors import ConfigurationError, is_dependency_error
from fraudstream.service.features.cluster_store import (
    FLAG_LABEL_PENDING,
    FLAG_TERMINAL_PENDING,
    ClusterFeatureStore,
)
from fraudstream.service.features.definitions import FeatureConfig, stable_hash32
from fraudstream.service.features.redis_store import (
    FLAG_LABELLED,
    RECORD_DTYPE,
    RECORD_SIZE,
    RedisFeatureStore,
    pack_needle,
)
from fraudstream.service.features.store import FeatureBatch, LabelFact
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
from fraudstream.service.snapshots import (
    CLAIM_CONFLICT,
    LABEL_CLAIMED,
    LABEL_CONFLICT,
    LABEL_HELD,
    Snapshot,
    SnapshotStore,
)
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


def config(prefix: str, card_history_max: int = 1000) -> FeatureConfig:
    # Card windows up to 1 day and 1 hour of lateness: the 3-day-late events are too late.
    return FeatureConfig(
        prefix=prefix,
        windows_s=(3600, 86400),
        allowed_lateness_s=3600,
        card_history_max=card_history_max,
    )


@pytest.mark.parametrize("cap", [1000, 3])  # 3: most cards go over their cap
def test_features_on_a_cluster_equal_the_single_nodes(
    cluster: redis.cluster.RedisCluster, redis_client: redis.Redis, redis_prefix: str, cap: int
) -> None:
    stream, labels = simulated_stream(seed=5)
    assert len(stream) > 2000
    single = RedisFeatureStore(redis_client, config(redis_prefix, cap))
    on_cluster = ClusterFeatureStore(cluster, config(redis_prefix, cap), wait_replicas=1)
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


class Crashed(Exception):
    """The process stopped between two rounds (nothing of it catches this)."""


class CrashAfter:
    """Rounds that run ``rounds`` rounds, then stop as a crash of the process would."""

    def __init__(self, rounds: NodeRounds, rounds_before_crash: int) -> None:
        self.inner = rounds
        self.left = rounds_before_crash

    def group(self, keys: Sequence[str]) -> list[Group]:
        return self.inner.group(keys)

    def run(self, calls: Sequence[Call], *, wait: bool = False) -> list[list[Any]]:
        if self.left == 0:
            raise Crashed("crash between rounds")
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
        with pytest.raises(Crashed):
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
    label_ids = ids[:300] + ids[:10] + ids[5:15]
    verdicts = [i % 7 == 0 for i in range(300)] + [False] * 20
    first = single.claim_many(label_ids, verdicts, "7")
    assert on_cluster.claim_many(label_ids, verdicts, "7") == first
    assert {LABEL_CLAIMED, LABEL_HELD, LABEL_CONFLICT} <= set(first)
    again = single.claim_many(ids[:20], [True] * 20, "8", stale=["7"])
    assert on_cluster.claim_many(ids[:20], [True] * 20, "8", stale=["7"]) == again


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


# -- a slot moving between the rounds of one batch ------------------------------------


def _data_keys(command: tuple[Any, ...]) -> list[str]:
    """The keys of a :class:`NodeScript` command but the state markers."""
    keys = command[4 : 4 + int(command[3])]
    return [k for k in keys if not k.endswith(":state")]


class MoveBeforeRound:
    """Rounds of which round ``at`` meets a slot moved just after the round before it.

    Just before round ``at`` runs (its calls grouped by the slot map as it was),
    the slot of the key in the middle of its biggest call moves to the next
    master: ``fully`` (every key of the slot migrated, its state marker among
    them, and the new owner set on every master) or not (the slot migrating,
    that key alone moved). :meth:`finish` completes a partial move.
    """

    def __init__(
        self, store: ClusterFeatureStore, at: int, *, fully: bool, masters: Sequence[str]
    ) -> None:
        self.inner = store._rounds
        self.terminal = store._terminal_script.source
        self.at = at
        self.fully = fully
        self.masters = masters
        self.move: SlotMove | None = None
        self.key = ""
        self.finished = False

    def group(self, keys: Sequence[str]) -> list[Group]:
        return self.inner.group(keys)

    def run(self, calls: Sequence[Call], *, wait: bool = False) -> list[list[Any]]:
        if self.move is None and self.round(calls[0][1][0]) == self.at:
            node, commands = max(calls, key=lambda call: len(_data_keys(call[1][0])))
            keys = _data_keys(commands[0])
            self.key = keys[len(keys) // 2]
            target = self.masters[(self.masters.index(node.name) + 1) % len(self.masters)]
            self.move = SlotMove(key_slot(self.key.encode()), node.name, target, self.masters)
            self.move.begin()
            if self.fully:
                self.finish()
            else:
                self.move.migrate([self.key])
        return self.inner.run(calls, wait=wait)

    def round(self, command: tuple[Any, ...]) -> int:
        """The round of a command: 2 terminal.lua, 3 and 4 pending.lua's clear and forget."""
        if command[1] == self.terminal:
            return 2
        mode = command[4 + int(command[3])]
        return {b"clear": 3, b"forget": 4}.get(mode, 1)

    def finish(self) -> None:
        assert self.move is not None
        if not self.finished:
            self.move.finish()
            self.finished = True


def _retried(run: Callable[[], Any], moving: MoveBeforeRound) -> tuple[Any, int]:
    """``run()`` until it succeeds, as the scorer and the learner retry a batch; the refusals.

    Each failure must be one the service retries (a dependency error): Redis
    7.0's refusal of a script touching a key its master does not serve now. A
    slot left migrating is met once more by the retry, then its move completes.
    """
    refusals = 0
    while True:
        try:
            out = run()
        except Exception as exc:
            assert is_dependency_error(exc), repr(exc)
            assert "Script attempted to access a non local key" in str(exc)
            refusals += 1
            assert refusals <= 2
            moving.finish()
            continue
        moving.finish()
        return out, refusals


def _flags(
    client: redis.Redis | redis.cluster.RedisCluster,
    store: RedisFeatureStore,
    items: Sequence[tuple[str, str, int]],
) -> list[int | None]:
    """The flags of the record of each (transaction id, card id, event time), None when absent."""
    out: list[int | None] = []
    for tx_id, card_id, ts in items:
        history = cast(bytes | None, client.get(store.card_key(card_id))) or b""
        needle = pack_needle(stable_hash32(tx_id), ts)
        at = history.find(needle)
        while at >= 0 and at % RECORD_SIZE:
            at = history.find(needle, at + 1)
        out.append(None if at < 0 else history[at + 10])
    return out


def _check_the_replay(
    batch: Sequence[Transaction],
    flags: list[int | None],
    got: FeatureBatch,
    want: FeatureBatch,
    again: FeatureBatch,
) -> np.ndarray:
    """The features of a batch replayed after its round 3 was refused (see the test below).

    ``flags``: its records' flags after the refusal; ``want``, ``again``: the
    single node's features of the batch, and of its replay right after.
    Returns the transactions of the batch reported as duplicates by the replay only.
    """
    new = ~want.is_duplicate
    cleared = new & np.array([f is not None and not f & FLAG_TERMINAL_PENDING for f in flags])
    # The flags cleared on some masters (and on the refusing one before the refused key)...
    assert 0 < cleared.sum() < new.sum()
    # ... make those transactions duplicates; the others get the first run's features.
    np.testing.assert_array_equal(got.is_duplicate, want.is_duplicate | cleared)
    kept = ~got.is_duplicate
    np.testing.assert_array_equal(got.values[kept], want.values[kept])
    # A duplicate's features come from the state as found. Its terminal's: with the
    # batch counted whole, or for one already a duplicate in the first run the ring
    # it found then (kept in its mark); for a transaction twice in the batch they
    # depend on which occurrence left which mark, so those are not compared.
    terminal = np.array([name.startswith("terminal_") for name in got.names])
    card = np.array([name.startswith("card_") for name in got.names])
    ids = Counter(tx.transaction_id for tx in batch)
    once = np.array([ids[tx.transaction_id] == 1 for tx in batch])
    np.testing.assert_array_equal(
        got.values[np.ix_(cleared & once, terminal)], again.values[np.ix_(cleared & once, terminal)]
    )
    first = want.is_duplicate & once
    np.testing.assert_array_equal(
        got.values[np.ix_(first, terminal)], want.values[np.ix_(first, terminal)]
    )
    # Its card's: the history with the batch's cleared records, without those still
    # pending (a card with records on both sides of the refused key: not compared).
    pending = {
        tx.card_id for tx, f in zip(batch, flags, strict=True) if f and f & FLAG_TERMINAL_PENDING
    }
    settled = got.is_duplicate & np.array([tx.card_id not in pending for tx in batch])
    assert (settled & cleared).any()
    np.testing.assert_array_equal(
        got.values[np.ix_(settled, card)], again.values[np.ix_(settled, card)]
    )
    return cast(np.ndarray, cleared)


class MovesBetweenRounds:
    """Store calls that each meet a slot moved between two of their rounds, then retried.

    :meth:`run` checks what must hold once the call succeeded: the slot is its
    target's, with its state marker, and no slot misses its marker. It records
    the marks the call left in the terminals' ``:n`` hashes, by kind.
    """

    def __init__(
        self,
        cluster: redis.cluster.RedisCluster,
        features: ClusterFeatureStore,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        self.cluster = cluster
        self.features = features
        self.caplog = caplog
        self.prefix = features.config.prefix
        self.primary = cluster.get_primaries()[0].name  # type: ignore[no-untyped-call]
        self.masters = sorted(set(slot_owners(self.primary).values()))
        self.moved: list[MoveBeforeRound] = []
        self.marks_left: dict[tuple[str, int, bool], Counter[str]] = {}

    def run(
        self,
        path: str,
        call: Callable[[], Any],
        plan: tuple[int, bool],
        after_refusal: Callable[[], None] = lambda: None,
    ) -> tuple[Any, int]:
        """``call()`` meeting the move ``plan``, then retried if it was refused.

        Refused in round 2, or in round 3 with the slot still migrating; round 3
        and round 4 run again in place once the slot map is reloaded. Returns
        what the call returned, and how many times its retries were refused.
        """
        before = self.marks()
        rounds = self.features._rounds
        moving = MoveBeforeRound(self.features, plan[0], fully=plan[1], masters=self.masters)
        self.features._rounds = moving  # type: ignore[assignment]
        out = None
        try:
            if plan[0] == 4 or plan == (3, True):
                with self.caplog.at_level(logging.WARNING):
                    self.caplog.clear()
                    out = call()
                # Moved whole: the round ran again once the slot map was reloaded.
                # Migrating, round 4: refused again, its marks left to expire.
                warned = [r for r in self.caplog.records if "were not dropped" in r.getMessage()]
                assert len(warned) == (0 if plan[1] else 1)
            else:
                with pytest.raises(ClusterUnavailableError, match="non local key"):
                    call()
        finally:
            self.features._rounds = rounds
        assert moving.move is not None
        self.moved.append(moving)
        refusals = 0
        if plan[0] == 4 or plan == (3, True):
            moving.finish()
        else:
            after_refusal()
            out, refusals = _retried(call, moving)
        slot = moving.move.slot
        assert slot_owners(self.primary)[slot] == moving.move.target
        assert self.cluster.exists(slot_marker_key(self.prefix, slot))
        assert missing_slot_markers(self.cluster, self.prefix) == []
        self.marks_left[path, *plan] = self.marks() - before
        return out, refusals

    def marks(self) -> Counter[str]:
        """The marks in the terminals' ``:n`` hashes, by kind."""
        kinds: Counter[str] = Counter()
        for key in self.cluster.scan_iter(match=f"{self.prefix}:*:n", count=1000):
            fields = cast(list[bytes], self.cluster.hkeys(key))
            kinds.update(chr(field[0]) for field in fields)
        return kinds

    def close(self) -> None:
        for moving in self.moved:
            if moving.move is not None:
                moving.move.close()


def test_a_slot_moving_between_the_rounds_of_a_batch(
    cluster: redis.cluster.RedisCluster,
    redis_client: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slot the next round needs moves after round 1, 2 or 3 of a batch.

    In a simulated stream (duplicates, out-of-order and late events, labels, many
    of them of transactions without a record), six batches of transactions and
    six batches of labels each meet a move of a slot of their keys between two of
    their rounds (:class:`MoveBeforeRound`): after round 1 a terminal's slot, met
    by round 2; after round 2 a card's, met by round 3 (clearing the pending
    flags); after round 3 a terminal's, met by round 4 (dropping the marks),
    each fully moved or left migrating with the key met moved. A refused batch
    is retried as the scorer and the learner retry one. Against a single node
    fed the same stream: refused in round 2, the replay is one run of the batch;
    round 3 runs again in place, so a slot moved whole costs nothing, and one
    still migrating fails the batch, whose replay reports as duplicates the
    transactions whose flags were cleared (:func:`_check_the_replay`); round 4
    refused does not fail the batch. Every transaction and label is counted
    once: the card histories and terminal rings equal the single node's byte
    for byte.
    """
    stream, labels = simulated_stream(seed=10)
    cfg = config(redis_prefix)
    ensure_state(cluster, redis_prefix, lambda: False)
    single = RedisFeatureStore(redis_client, cfg)
    features = ClusterFeatureStore(cluster, cfg, check_state=True, wait_replicas=1)
    label_at: dict[int, list[LabelFact]] = {}
    for at, fact in labels:
        label_at.setdefault(at, []).append(fact)
    plans = [(at, fully) for at in (2, 3, 4) for fully in (True, False)]
    feature_plans, label_plans = list(plans), list(plans)
    moves = MovesBetweenRounds(cluster, features, caplog)
    reported = 0
    try:
        rng = random.Random(10)
        i = 0
        while i < len(stream):
            batch = stream[i : i + rng.choice([150, 300])]
            facts = [f for j in range(i, i + len(batch)) for f in label_at.get(j, [])]
            i += len(batch)
            if feature_plans:
                reported += _a_batch_meeting_a_move(
                    single, features, moves, batch, feature_plans.pop(0)
                )
            else:
                want = single.update_and_compute(batch)
                got = features.update_and_compute(batch)
                np.testing.assert_array_equal(got.is_duplicate, want.is_duplicate)
                np.testing.assert_array_equal(got.values, want.values)
            if not facts:
                continue
            single.record_labels(facts)
            # A move for a batch of labels with and without a record.
            items = [(f.transaction_id, f.card_id, f.event_time_ms) for f in facts]
            recorded = [r is not None for r in _flags(redis_client, single, items)]
            if label_plans and 0 < sum(recorded) < len(recorded):
                moves.run("labels", partial(features.record_labels, facts), label_plans.pop(0))
            else:
                features.record_labels(facts)
        assert not feature_plans and not label_plans
    finally:
        moves.close()

    # Each transaction counted once, the duplicates as on the single node plus those
    # the replays of round 3 reported; each label counted once; byte for byte.
    assert reported > 0
    assert features.counters.inserted == single.counters.inserted - reported
    assert features.counters.duplicates == single.counters.duplicates + reported
    assert features.counters.too_late == single.counters.too_late
    assert features.counters.terminal_dropped == single.counters.terminal_dropped
    keys = {
        key
        for tx in stream
        for key in (features.card_key(tx.card_id), features.terminal_key(tx.terminal_id))
    }
    assert [k for k in sorted(keys) if cluster.get(k) != redis_client.get(k)] == []
    assert ensure_state(cluster, redis_prefix, lambda: True).origin == "fresh"
    # The marks left to expire (terminal_ttl): those of the transactions and labels
    # that a replay found settled (it counts nothing for them, so drops nothing), and
    # those of round 4 refused while the slot was migrating. The others were dropped.
    left = moves.marks_left
    for path in ("features", "labels"):
        assert left[path, 2, True] == left[path, 2, False] == {}
        assert left[path, 3, True] == left[path, 4, True] == {}
    assert left["features", 3, False]["T"] > 0
    assert left["features", 3, False].total() == reported
    assert set(left["features", 4, False]) <= {"T", "R"}
    assert left["features", 4, False].total() > 0
    assert set(left["labels", 3, True] + left["labels", 3, False]) <= {"L"}
    assert set(left["labels", 4, False]) <= {"L", "l"} and left["labels", 4, False].total() > 0


def _a_batch_meeting_a_move(
    single: RedisFeatureStore,
    features: ClusterFeatureStore,
    moves: MovesBetweenRounds,
    batch: list[Transaction],
    plan: tuple[int, bool],
) -> int:
    """A batch of the test above meeting the move ``plan``; the transactions it reports anew.

    Returns how many transactions the replay reported as duplicates that the
    single node counted (round 3 refused).
    """
    want = single.update_and_compute(batch)
    counters = dataclasses.replace(single.counters)
    again = single.update_and_compute(batch)  # a replay of the batch counted whole
    single.counters = counters
    flags: list[int | None] = []

    def after_refusal() -> None:
        items = [(tx.transaction_id, tx.card_id, tx.event_time_ms) for tx in batch]
        flags.extend(_flags(moves.cluster, features, items))

    got, refusals = moves.run(
        "features", partial(features.update_and_compute, batch), plan, after_refusal
    )
    # Still migrating with the key moved, the slot refuses the retry too.
    assert refusals == (0 if plan[1] or plan[0] == 4 else 1)
    if plan == (3, False):
        return int(_check_the_replay(batch, flags, got, want, again).sum())
    # Refused in round 2, the replay is the first run; round 3 moved whole ran again
    # in place, and round 4 did not fail the batch.
    np.testing.assert_array_equal(got.is_duplicate, want.is_duplicate)
    np.testing.assert_array_equal(got.values, want.values)
    return 0
