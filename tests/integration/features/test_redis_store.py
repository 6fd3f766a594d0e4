"""The Redis feature store against the reference store, on a real Redis server."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import cast

import numpy as np
import pytest
import redis

from fraudstream.devstack import RedisServer
from fraudstream.service.features import redis_store
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import (
    FOUND_BUDGET,
    RECORD_DTYPE,
    PreparedUpdate,
    RedisFeatureStore,
)
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import FeatureBatch, LabelFact
from fraudstream.service.schemas import Transaction
from fraudstream.service.snapshots import (
    CLAIM_BYTES,
    CLAIM_CONFLICT,
    CLAIM_REPLAY,
    SnapshotStore,
    id_claims,
    snapshot_key,
)

START_MS = 1_522_540_800_000  # 2018-04-01 00:00 UTC
HOUR_MS = 3_600_000

#: Short windows so that a few hundred events exercise trimming and too-late events.
CONFIG = FeatureConfig(
    prefix="unused",
    windows_s=(600, 3600, 6 * 3600),
    terminal_window_days=(1, 2),
    terminal_label_window_days=(1, 3),
    allowed_lateness_s=1800,
)


def random_stream(
    seed: int,
    events: int,
    cards: int = 30,
    terminals: int = 12,
    days: float = 4.0,
    lateness_s: int = CONFIG.allowed_lateness_s,
    duplicate_rate: float = 0.08,
) -> list[Transaction]:
    """Transactions in arrival order: shuffled within ``lateness_s``, with replays.

    Timestamps are whole minutes, so ties within a card happen.
    """
    rng = random.Random(seed)
    made: list[tuple[float, Transaction]] = []
    for i in range(events):
        ts = START_MS + rng.randrange(int(days * 24 * 60)) * 60_000
        located = rng.random() < 0.8
        tx = Transaction(
            transaction_id=f"tx{seed}-{i}",
            card_id=f"card{rng.randrange(cards)}",
            terminal_id=f"term{rng.randrange(terminals)}",
            amount=round(rng.lognormvariate(3.5, 1.0), 2),
            timestamp=ts,
            lat=rng.uniform(40, 50) if located else None,
            lon=rng.uniform(-5, 10) if located else None,
        )
        # Arrival = event time + a delay below the lateness bound.
        made.append((ts + rng.random() * lateness_s * 1000 * 0.999, tx))
    made.sort(key=lambda pair: pair[0])
    stream = [tx for _, tx in made]
    for _ in range(int(events * duplicate_rate)):
        # A replay lands a little later than the original (redelivery).
        original = rng.randrange(len(stream))
        stream.insert(min(len(stream), original + rng.randrange(1, 20)), stream[original])
    return stream


def batches(stream: list[Transaction], rng: random.Random) -> Iterator[list[Transaction]]:
    """Cut the stream in batches of random size."""
    i = 0
    while i < len(stream):
        size = rng.randrange(1, 120)
        yield stream[i : i + size]
        i += size


def assert_same(got: FeatureBatch, want: FeatureBatch) -> None:
    assert got.names == want.names
    assert got.values.shape == want.values.shape
    np.testing.assert_array_equal(got.is_duplicate, want.is_duplicate)
    bad = ~np.isclose(got.values, want.values, rtol=1e-6, atol=1e-6)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise AssertionError(
            f"{bad.sum()} values differ; first: row {row} {got.names[column]} "
            f"redis={got.values[row, column]!r} reference={want.values[row, column]!r}"
        )


@pytest.fixture
def config(redis_prefix: str) -> FeatureConfig:
    return FeatureConfig(
        prefix=redis_prefix,
        windows_s=CONFIG.windows_s,
        terminal_window_days=CONFIG.terminal_window_days,
        terminal_label_window_days=CONFIG.terminal_label_window_days,
        allowed_lateness_s=CONFIG.allowed_lateness_s,
    )


def label_for(tx: Transaction, is_fraud: bool = True) -> LabelFact:
    return LabelFact(tx.transaction_id, tx.card_id, tx.terminal_id, tx.event_time_ms, is_fraud)


@pytest.mark.parametrize(
    ("seed", "claims", "found_budget"),
    [(1, False, 0), (2, False, 0), (3, False, 0), (4, True, FOUND_BUDGET), (5, True, 0)],
)
def test_equals_reference_on_random_streams(
    redis_client: redis.Redis, config: FeatureConfig, seed: int, claims: bool, found_budget: int
) -> None:
    """With claims and a budget, a replay is computed as its first count; else from now."""
    store = RedisFeatureStore(
        redis_client, config, claim_ttl_s=3600 if claims else None, found_budget=found_budget
    )
    reference = ReferenceFeatureStore(config, first_found=found_budget > 0)
    rng = random.Random(seed)
    seen: list[Transaction] = []
    for batch in batches(random_stream(seed, 1500), rng):
        got = store.update_and_compute(batch)
        assert_same(got, reference.update_and_compute(batch))
        # Replays carry the same content: never a conflict.
        if not claims:
            assert got.is_conflict is None
        else:
            assert got.is_conflict is not None and not got.is_conflict.any()
        seen += batch
        # Labels arrive later, for random earlier transactions, some repeated.
        labels = [label_for(tx, rng.random() < 0.5) for tx in rng.sample(seen, min(len(seen), 3))]
        store.record_labels(labels)
        reference.record_labels(labels)
    assert store.counters == reference.counters
    assert reference.counters.duplicates > 0
    assert reference.counters.too_late == 0  # arrivals stay within the lateness bound


def test_late_beyond_retention_is_not_stored(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    store, reference = RedisFeatureStore(redis_client, config), ReferenceFeatureStore(config)
    retention_ms = config.retention_s * 1000
    stream = random_stream(7, 300, cards=3, days=1.0)
    very_late = [
        Transaction.model_validate(
            {**tx.model_dump(), "transaction_id": f"late{i}", "timestamp": START_MS - retention_ms}
        )
        for i, tx in enumerate(stream[:5])
    ]
    rng = random.Random(7)
    for batch in batches([*stream, *very_late, *very_late], rng):
        assert_same(store.update_and_compute(batch), reference.update_and_compute(batch))
    assert store.counters == reference.counters
    assert store.counters.too_late == 10


def test_replaying_a_batch_counts_nothing_twice(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    store, reference = RedisFeatureStore(redis_client, config), ReferenceFeatureStore(config)
    # Within one retention, so that every replayed event is still in its history.
    stream = random_stream(11, 400, days=0.2, duplicate_rate=0.0)
    first, second = stream[:200], stream[200:]
    assert_same(store.update_and_compute(first), reference.update_and_compute(first))
    before = {k: redis_client.get(k) for k in redis_client.scan_iter(f"{config.prefix}:*")}
    replay = store.update_and_compute(first)  # a crash after the update, before the commit
    assert replay.is_duplicate.all()
    after = {k: redis_client.get(k) for k in redis_client.scan_iter(f"{config.prefix}:*")}
    assert after == before
    assert_same(replay, reference.update_and_compute(first))
    assert_same(store.update_and_compute(second), reference.update_and_compute(second))
    assert store.counters.inserted == 400


def test_a_replay_before_its_snapshot_is_computed_from_what_its_first_count_found(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    """A crash after the feature script, before the snapshot: the replay sees its first count.

    Not the state now, which holds what was counted after it (here: a later
    transaction at its terminal and an earlier one of its card, arrived late).
    Once its snapshot is written, that replaces what was kept: a replay then
    keeps the snapshot and is computed from the state now.
    """
    store = RedisFeatureStore(redis_client, config, claim_ttl_s=3600)
    snapshots = SnapshotStore(redis_client, config.prefix, ttl_s=3600)
    first = Transaction(transaction_id="a", card_id="c", terminal_id="m", amount=10.0,
                        timestamp=START_MS + HOUR_MS)  # fmt: skip
    later = [
        Transaction(transaction_id="b", card_id="d", terminal_id="m", amount=5.0,
                    timestamp=START_MS + 2 * HOUR_MS),
        Transaction(transaction_id="c0", card_id="c", terminal_id="n", amount=7.0,
                    timestamp=START_MS + HOUR_MS - 60_000),
    ]  # fmt: skip
    counted = store.update_and_compute([first])
    store.update_and_compute(later)
    names = list(store.names)
    columns = [names.index("terminal_tx_count_1d"), names.index("card_tx_count_1h")]
    assert counted.values[0, columns].tolist() == [1, 1]

    replay = store.update_and_compute([first])
    assert replay.is_duplicate.tolist() == [True]
    np.testing.assert_array_equal(replay.values, counted.values)
    assert snapshots.get_many(["a"]) == [None], "what was kept reads as no snapshot yet"

    snapshots.put_many([first], replay.values, np.array([0.5]), 7, store.names,
                       keep_existing=replay.is_duplicate)  # fmt: skip
    stored = snapshots.get_many(["a"])[0]
    assert stored is not None and stored.model_version == 7
    np.testing.assert_array_equal(stored.features, counted.values[0].astype(np.float32))
    assert len(cast(bytes, redis_client.get(snapshots.key("a")))) < 300
    after = store.update_and_compute([first])
    assert after.is_duplicate.tolist() == [True]
    assert after.values[0, columns].tolist() == [2, 2], "from the state now"
    assert store.counters.inserted == 3 and store.counters.duplicates == 2


def test_what_a_transaction_found_is_not_written_to_the_aof(
    own_redis: RedisServer, config: FeatureConfig
) -> None:
    """Kept for a replay before the snapshot, not persisted: after a restart, the claim alone.

    The replay is then computed from the state as it is now, and nothing is counted twice.
    """
    client = redis.Redis.from_url(own_redis.url)
    store = RedisFeatureStore(client, config, claim_ttl_s=3600)
    stream = random_stream(31, 200, days=0.2, duplicate_rate=0.0)
    store.update_and_compute(stream)
    key = snapshot_key(config.prefix, stream[0].transaction_id)
    assert len(cast(bytes, client.get(key))) > CLAIM_BYTES
    cards = {k: client.get(k) for k in client.scan_iter(f"{config.prefix}:{{c:*")}
    client.close()
    own_redis.stop()
    own_redis.start()
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert client.get(key) == id_claims(stream[:1])
        assert {k: client.get(k) for k in client.scan_iter(f"{config.prefix}:{{c:*")} == cards
        replay = RedisFeatureStore(client, config, claim_ttl_s=3600).update_and_compute(stream)
        assert replay.is_duplicate.all()
        assert {k: client.get(k) for k in client.scan_iter(f"{config.prefix}:{{c:*")} == cards
    finally:
        client.close()


def test_ids_claimed_with_other_content_are_flagged_and_not_counted(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    store = RedisFeatureStore(redis_client, config, claim_ttl_s=3600)
    reference = ReferenceFeatureStore(config, first_found=True)
    snapshots = SnapshotStore(redis_client, config.prefix, ttl_s=3600)
    stream = random_stream(21, 300, duplicate_rate=0.05)
    rng = random.Random(21)
    conflicts = 0
    for batch in batches(stream, rng):
        # Some ids again with other content, after their first holders.
        distinct = {tx.transaction_id: tx for tx in batch}.values()
        reused = [
            Transaction.model_validate({**tx.model_dump(), "amount": tx.amount + 1.0})
            for tx in rng.sample(list(distinct), min(2, len(distinct)))
        ]
        mixed = [*batch, *reused]
        got = store.update_and_compute(mixed)
        assert got.is_conflict is not None
        # The first holder of an id claims it; its reuse is flagged and counted nowhere.
        assert got.is_conflict.tolist() == [any(tx is r for r in reused) for tx in mixed], (
            "only the reused ids conflict"
        )
        conflicts += int(got.is_conflict.sum())
        kept = ~got.is_conflict
        want = reference.update_and_compute(batch)
        assert_same(FeatureBatch(got.names, got.values[kept], got.is_duplicate[kept]), want)
    assert conflicts > 0
    assert store.counters == reference.counters
    # The claims are the snapshot store's: the same content is a replay, other content conflicts.
    tx = stream[0]
    other = Transaction.model_validate({**tx.model_dump(), "card_id": "someone-else"})
    assert snapshots.claim_many_ids([tx, other]).tolist() == [CLAIM_REPLAY, CLAIM_CONFLICT]
    assert 3500 < redis_client.ttl(snapshots.key(tx.transaction_id)) <= 3600


def test_keys_use_the_prefix_and_carry_ttls(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    store = RedisFeatureStore(redis_client, config)
    store.update_and_compute(random_stream(5, 50))
    keys = sorted(k.decode() for k in redis_client.scan_iter(f"{config.prefix}:*"))
    assert keys
    assert all(k.startswith((f"{config.prefix}:{{c:", f"{config.prefix}:{{t:")) for k in keys)
    assert f"{config.prefix}:{{c:card0}}" in keys or len(keys) < 20
    for key in keys:
        ttl_ms = redis_client.pttl(key)
        limit = config.card_ttl_s if ":{c:" in key else config.terminal_ttl_s
        assert 0 < ttl_ms <= limit * 1000


def test_labels_update_fraud_features(redis_client: redis.Redis, config: FeatureConfig) -> None:
    store = RedisFeatureStore(redis_client, config)
    tx = [
        Transaction(transaction_id=f"x{i}", card_id="c", terminal_id="m", amount=10.0,
                    timestamp=START_MS + i * 60_000)
        for i in range(3)
    ]  # fmt: skip
    store.update_and_compute(tx[:2])
    store.record_labels([label_for(tx[0]), label_for(tx[1], is_fraud=False)])
    store.record_labels([label_for(tx[0]), label_for(tx[1])])  # repeated labels count once
    row = dict(zip(store.names, store.update_and_compute(tx[2:]).values[0], strict=True))
    assert row["card_fraud_labels_30d"] == 1
    assert row["terminal_tx_count_1d"] == 3
    assert row["terminal_fraud_labels_1d"] == 1
    # Among the two labelled transactions, not the three counted.
    assert row["terminal_fraud_rate_1d"] == pytest.approx(1 / 2)
    assert row["terminal_days_since_fraud"] == 0
    assert (row["terminal_fraud_episode_days"], row["terminal_labelled_episode"]) == (0, 2)


def test_two_scorers_sharing_terminals_match_the_reference(
    redis_url: str, config: FeatureConfig
) -> None:
    clients = [redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)]
    try:
        scorers = [RedisFeatureStore(c, config) for c in clients]
        reference = ReferenceFeatureStore(config)
        rng = random.Random(3)
        # Cards split between scorers (Kafka partitions by card); terminals shared.
        for i, batch in enumerate(batches(random_stream(13, 1200, terminals=4), rng)):
            assert_same(
                scorers[i % 2].update_and_compute(batch), reference.update_and_compute(batch)
            )
    finally:
        for client in clients:
            client.close()


def test_reloads_the_script_after_a_flush(redis_client: redis.Redis, config: FeatureConfig) -> None:
    store, reference = RedisFeatureStore(redis_client, config), ReferenceFeatureStore(config)
    stream = random_stream(17, 100)
    assert_same(store.update_and_compute(stream[:50]), reference.update_and_compute(stream[:50]))
    redis_client.script_flush()
    assert_same(store.update_and_compute(stream[50:]), reference.update_and_compute(stream[50:]))


def test_two_batches_in_flight_on_one_connection_equal_the_reference(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    """As the overlapping scorer calls it: batch k + 1's script is sent before k's reply is read."""
    store = RedisFeatureStore(redis_client, config, claim_ttl_s=3600)
    reference = ReferenceFeatureStore(config, first_found=True)
    link = redis_client.connection_pool.get_connection()
    try:
        store.load_scripts()
        in_flight: list[tuple[list[Transaction], PreparedUpdate]] = []
        for batch in [*batches(random_stream(21, 1500), random.Random(21)), []]:
            if batch:
                update = store.prepare_update(batch)
                assert store.send_update(link, update)
                in_flight.append((batch, update))
            if len(in_flight) == 2 or (not batch and in_flight):
                sent, update = in_flight.pop(0)
                got = store.compute_update(update, store.read_update(link))
                assert_same(got, reference.update_and_compute(sent))
        assert not in_flight
        assert store.counters == reference.counters
        assert reference.counters.duplicates > 0
    finally:
        redis_client.connection_pool.release(link)


def test_a_script_lost_in_flight_fails_as_a_dependency_and_is_loaded_again(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    """SCRIPT FLUSH (or a restart) before a sent batch runs: nothing counted, retried after."""
    from fraudstream.service.errors import RedisUnavailableError, is_dependency_error

    store, reference = RedisFeatureStore(redis_client, config), ReferenceFeatureStore(config)
    stream = random_stream(23, 60)
    link = redis_client.connection_pool.get_connection()
    try:
        redis_client.script_flush()
        update = store.prepare_update(stream)
        store.send_update(link, update)
        with pytest.raises(RedisUnavailableError) as failed:
            store.read_update(link)
        assert is_dependency_error(failed.value)
        assert store.counters.inserted == 0
        assert not redis_client.keys(f"{config.prefix}:*")  # nothing counted
        # The retry finds the script loaded again.
        store.send_update(link, store.prepare_update(stream))
        got = store.compute_update(store.prepare_update(stream), store.read_update(link))
        assert_same(got, reference.update_and_compute(stream))
    finally:
        redis_client.connection_pool.release(link)


def test_the_empty_batch_sends_nothing(redis_client: redis.Redis, config: FeatureConfig) -> None:
    store = RedisFeatureStore(redis_client, config)
    link = redis_client.connection_pool.get_connection()
    try:
        update = store.prepare_update([])
        assert not store.send_update(link, update)
        assert store.compute_update(update, None).values.shape == (0, len(store.names))
    finally:
        redis_client.connection_pool.release(link)


@pytest.mark.parametrize(
    ("seed", "cap", "cards", "rows_per_pass", "claims"),
    [
        (21, 12, 4, None, True),
        (22, 40, 1, None, True),
        (23, 1, 4, None, True),
        (24, 40, 1, 50, False),
    ],
)
def test_a_card_over_its_cap_equals_the_reference(
    redis_client: redis.Redis,
    config: FeatureConfig,
    seed: int,
    cap: int,
    cards: int,
    rows_per_pass: int | None,
    claims: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Few cards, many transactions: every card goes over its cap, out of order and replayed.

    Features, duplicates and counters equal the reference's; no card keeps more
    than ``cap`` valid records. With ``rows_per_pass``, every batch of more than
    one transaction is computed in slices. Without ``claims``, a replay is
    counted again from the state as it is now (too late once the cap dropped it).
    """
    if rows_per_pass is not None:
        monkeypatch.setattr(redis_store, "ROWS_PER_PASS", rows_per_pass)
    config = dataclasses.replace(config, card_history_max=cap)
    store = RedisFeatureStore(redis_client, config, claim_ttl_s=3600 if claims else None)
    reference = ReferenceFeatureStore(config, first_found=claims)
    rng = random.Random(seed)
    seen: list[Transaction] = []
    stream = random_stream(seed, 1500, cards=cards, days=0.5, duplicate_rate=0.1)
    for batch in batches(stream, rng):
        assert_same(store.update_and_compute(batch), reference.update_and_compute(batch))
        seen += batch
        labels = [label_for(tx, rng.random() < 0.5) for tx in rng.sample(seen, min(len(seen), 3))]
        store.record_labels(labels)
        reference.record_labels(labels)
        for card in {tx.card_id for tx in batch}:
            records = np.frombuffer(
                cast(bytes, redis_client.get(store.card_key(card)) or b""), RECORD_DTYPE
            )
            ts = records["ts_lo"].astype(np.int64) | (records["ts_hi"].astype(np.int64) << 32)
            valid = int((ts > ts[-1] - config.retention_s * 1000).sum()) if len(ts) else 0
            assert valid <= cap
    assert store.counters == reference.counters
    assert reference.counters.duplicates > 0
    # Arrivals stay within the lateness bound: every too-late one is the cap's.
    assert reference.counters.too_late > 0


def test_a_card_testing_burst_costs_a_bounded_history(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    """20,000 transactions of one card in 3 hours: it keeps its newest ``cap``.

    Its replays (the records the cap dropped included) are never counted again.
    """
    cap = 50
    config = dataclasses.replace(config, card_history_max=cap)
    store = RedisFeatureStore(redis_client, config)
    burst = [
        Transaction(
            transaction_id=f"burst{i}",
            card_id="tested",
            terminal_id=f"shop{i % 3}",
            amount=1.0,
            timestamp=START_MS + i * 500,
        )
        for i in range(20_000)
    ]
    for i in range(0, len(burst), 2000):
        store.update_and_compute(burst[i : i + 2000])
    history = np.frombuffer(
        cast(bytes, redis_client.get(store.card_key("tested")) or b""), RECORD_DTYPE
    )
    assert len(history) <= cap + 3  # and up to 3 stale ones, trimmed lazily
    counted = store.counters.inserted
    assert counted == 20_000
    # Replayed: every transaction is a duplicate (still kept) or too late (dropped by
    # the cap, older than every kept record): nothing is counted again.
    for i in range(0, len(burst), 2000):
        store.update_and_compute(burst[i : i + 2000])
    assert store.counters.inserted == counted
    assert store.counters.duplicates == cap
    assert store.counters.too_late == 20_000 - cap
    # The 1-hour count of the last transaction saturates at the cap (plus itself).
    last = store.update_and_compute(burst[-1:])
    assert last.is_duplicate.all()
    assert last.values[0, list(last.names).index("card_tx_count_1h")] <= cap + 1


def test_what_a_burst_keeps_for_its_replay_is_bounded(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    """2,000 transactions of one card at its cap (1,000): ~40 MB of histories found.

    One call keeps at most 8 MiB of them for a replay before the snapshots; the
    rest keep their claim alone, and their replay is counted nowhere again (too
    late where the cap dropped them).
    """
    store = RedisFeatureStore(redis_client, config, claim_ttl_s=3600)
    burst = [
        Transaction(transaction_id=f"b{i}", card_id="tested", terminal_id="shop", amount=1.0,
                    timestamp=START_MS + i * 500)
        for i in range(2000)
    ]  # fmt: skip
    first = store.update_and_compute(burst)
    pipe = redis_client.pipeline(transaction=False)
    for tx in burst:
        pipe.strlen(snapshot_key(config.prefix, tx.transaction_id))
    lengths = np.array(pipe.execute())
    kept = lengths > CLAIM_BYTES
    assert kept[0] and not kept[-1]
    assert 4 << 20 < int((lengths - CLAIM_BYTES).sum()) <= (8 << 20) + 2000 * 32
    replay = store.update_and_compute(burst)
    assert store.counters.inserted == 2000, "a replay counted again"
    assert replay.is_duplicate[kept].all()
    np.testing.assert_array_equal(replay.values[kept], first.values[kept])
