"""Feature snapshots against a real Redis."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import redis

from fraudstream.evaluation.synthetic import synthetic_stream
from fraudstream.service.schemas import Transaction
from fraudstream.service.snapshots import (
    CLAIM_CONFLICT,
    CLAIM_NEW,
    CLAIM_REPLAY,
    LABEL_CLAIMED,
    LABEL_CONFLICT,
    LABEL_HELD,
    LABEL_TAKEN,
    SnapshotSender,
    SnapshotStore,
    feature_set_id,
)

NAMES, X, _ = synthetic_stream(200, seed=5)
NAMES30 = tuple(f"f{i}" for i in range(30))


def _txs(n: int, offset: int = 0) -> list[Transaction]:
    return [
        Transaction(
            transaction_id=f"tx-{offset + i:09d}",
            card_id=f"card-{i % 50:06d}",
            terminal_id=f"term-{i % 17:05d}",
            amount=10.0 + i,
            timestamp=1_700_000_000_000 + i * 1000,
        )
        for i in range(n)
    ]


def test_round_trip_ttl_and_missing(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    txs = _txs(len(X))
    scores = np.linspace(0, 1, len(X))
    store.put_many(txs, X, scores, model_version=7, feature_names=NAMES)
    got = store.get_many([t.transaction_id for t in txs] + ["nope"])
    assert got[-1] is None
    for tx, row, score, snap in zip(txs, X, scores, got[:-1], strict=True):
        assert snap is not None
        np.testing.assert_array_equal(snap.features, row.astype(np.float32))
        assert snap.card_id == tx.card_id and snap.terminal_id == tx.terminal_id
        assert snap.event_time_ms == tx.event_time_ms
        assert snap.model_version == 7 and snap.feature_set == feature_set_id(NAMES)
        assert snap.score == np.float32(score)
        assert snap.x(NAMES) == dict(zip(NAMES, row.astype(np.float32).astype(float), strict=True))
    ttl = redis_client.ttl(store.key(txs[0].transaction_id))
    assert 3500 < ttl <= 3600
    assert store.key("t1").endswith(":{x:t1}")


def test_claim_once(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    taken, claimed, held = LABEL_TAKEN, LABEL_CLAIMED, LABEL_HELD
    genuine = [False] * 3
    assert store.claim_many(["a", "b", "a"], genuine, token="5") == [claimed, claimed, held]
    assert store.claim_many(["a", "c"], genuine[:2], token="6") == [taken, claimed]
    assert store.claim_many(["c"], [False], token="6") == [held]
    # A claim by a crashed learner's token may be retaken once.
    assert store.claim_many(["a", "b"], genuine[:2], token="6", stale=["5"]) == [claimed, claimed]
    assert store.claim_many(["a"], [False], token="7", stale=["5"]) == [taken]
    assert 3500 < redis_client.ttl(store.claim_key("a")) <= 3600
    with pytest.raises(ValueError, match="one verdict per transaction id"):
        store.claim_many(["a", "b"], [False], token="7")


def test_a_claim_with_the_other_verdict_is_a_conflict(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Against any token that is not stale, in one call or later; the claim stays as it was."""
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    conflict, claimed, held, taken = LABEL_CONFLICT, LABEL_CLAIMED, LABEL_HELD, LABEL_TAKEN
    ids, verdicts = ["a", "a", "a", "b"], [False, True, False, True]
    assert store.claim_many(ids, verdicts, token="5") == [claimed, conflict, held, claimed]
    assert store.claim_many(["a", "b"], [True, False], token="5") == [conflict, conflict]
    assert store.claim_many(["a", "b"], [True, True], token="6") == [conflict, taken]
    assert redis_client.get(store.claim_key("a")) == b"5:0"
    # A stale token's claim is taken over with the new verdict.
    assert store.claim_many(["a"], [True], token="7", stale=["5"]) == [claimed]
    assert store.claim_many(["a"], [False], token="8") == [conflict]
    # A claim written before verdicts were kept (the token alone) agrees with either.
    redis_client.set(store.claim_key("old"), b"4")
    assert store.claim_many(["old", "old"], [True, False], token="8") == [taken, taken]


def test_bytes_per_snapshot(redis_client: redis.Redis, redis_prefix: str) -> None:
    """30 features, realistic ids: MEMORY USAGE (value + key + overhead) ≤ 300 bytes."""
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=45 * 86400)
    rng = np.random.default_rng(0)
    txs = _txs(500, offset=10**8)
    store.put_many(txs, rng.normal(size=(500, 30)), rng.random(500), 3, NAMES30)
    usages = [redis_client.memory_usage(store.key(t.transaction_id)) for t in txs]
    sizes = [size for size in usages if size is not None]
    assert len(sizes) == len(txs), "a snapshot is missing"
    print(f"snapshot bytes: min {min(sizes)} max {max(sizes)}")
    assert max(sizes) <= 300, sizes[:5]


def test_replayed_rows_keep_the_first_snapshot_but_fill_a_missing_one(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    txs = _txs(3)
    first = X[:3]
    store.put_many(txs[:2], first[:2], np.array([0.1, 0.2]), 1, NAMES)
    # The replay sees other values; only the transaction without a snapshot is written.
    store.put_many(
        txs,
        first + 1.0,
        np.array([0.9, 0.9, 0.9]),
        2,
        NAMES,
        keep_existing=np.array([True, True, True]),
    )
    snaps = store.get_many([t.transaction_id for t in txs])
    assert [s.model_version for s in snaps if s is not None] == [1, 1, 2]
    assert snaps[0] is not None
    np.testing.assert_allclose(snaps[0].features, first[0].astype(np.float32))


def test_ids_are_claimed_with_their_content(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    a, b = _txs(2)
    other_card = a.model_copy(update={"card_id": "someone-else"})
    other_amount = a.model_copy(update={"amount": a.amount + 0.01})
    claims = store.claim_many_ids([a, b, a, other_card])
    assert claims.tolist() == [CLAIM_NEW, CLAIM_NEW, CLAIM_REPLAY, CLAIM_CONFLICT]
    assert store.claim_many_ids([other_amount, b]).tolist() == [CLAIM_CONFLICT, CLAIM_REPLAY]
    assert 3500 < redis_client.ttl(store.key(a.transaction_id)) <= 3600
    # A claim alone is no snapshot: the learner sees it as missing.
    assert store.get_many([a.transaction_id]) == [None]
    # The snapshot written after scoring replaces the claim and keeps the content check.
    store.put_many([a], X[:1], np.array([0.5]), 1, NAMES, keep_existing=np.array([True]))
    snap = store.get_many([a.transaction_id])[0]
    assert snap is not None and snap.model_version == 1
    assert store.claim_many_ids([a, other_card]).tolist() == [CLAIM_REPLAY, CLAIM_CONFLICT]


def test_snapshots_of_the_previous_layout_are_still_read_and_count_as_replays(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    (tx,) = _txs(1)
    row = X[0].astype("<f4")
    card, term = tx.card_id.encode(), tx.terminal_id.encode()
    v1 = (
        struct.pack(
            "<BIIfqHHH", 1, feature_set_id(NAMES), 4, 0.25, tx.event_time_ms, len(row),
            len(card), len(term),
        )
        + card
        + term
        + row.tobytes()
    )  # fmt: skip
    redis_client.set(store.key(tx.transaction_id), v1)
    snap = store.get_many([tx.transaction_id])[0]
    assert snap is not None and snap.model_version == 4 and snap.card_id == tx.card_id
    assert store.claim_many_ids([tx]).tolist() == [CLAIM_REPLAY]


def test_the_sender_writes_what_put_many_writes_once_settled(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Sent without waiting, several batches at once: settled, they are the store's snapshots."""
    store = SnapshotStore(redis_client, redis_prefix + "a", ttl_s=3600)
    sent_to = SnapshotStore(redis_client, redis_prefix + "b", ttl_s=3600)
    sender = SnapshotSender(sent_to, redis_client.connection_pool.get_connection())
    try:
        txs, scores = _txs(len(X)), np.linspace(0, 1, len(X))
        keep = np.arange(len(X)) % 3 == 0
        for lo in range(0, len(X), 70):
            part = slice(lo, lo + 70)
            store.put_many(txs[part], X[part], scores[part], 3, NAMES, keep_existing=keep[part])
            sender.put_many(txs[part], X[part], scores[part], 3, NAMES, keep_existing=keep[part])
        sender.put_many([], X[:0], scores[:0], 3, NAMES)  # nothing to send
        sender.settle()
        ids = [t.transaction_id for t in txs]
        for got, want in zip(sent_to.get_many(ids), store.get_many(ids), strict=True):
            assert got is not None and want is not None
            np.testing.assert_array_equal(got.features, want.features)
            assert (got.score, got.model_version, got.event_time_ms, got.card_id) == (
                want.score,
                want.model_version,
                want.event_time_ms,
                want.card_id,
            )
        # Claims go to the store, waited for.
        assert (sender.claim_many_ids(txs[:3]) == CLAIM_REPLAY).all()
    finally:
        redis_client.connection_pool.release(sender.connection)


def test_the_sender_reset_drops_the_link_and_what_was_not_settled(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = SnapshotStore(redis_client, redis_prefix, ttl_s=3600)
    sender = SnapshotSender(store, redis_client.connection_pool.get_connection())
    try:
        txs = _txs(10)
        sender.put_many(txs, X[:10], np.zeros(10), 1, NAMES)
        sender.reset()
        sender.settle()  # nothing left to wait for
        # The link is usable again: it reconnects for the next writes.
        sender.put_many(txs, X[:10], np.ones(10), 2, NAMES)
        sender.settle()
        snaps = store.get_many([t.transaction_id for t in txs])
        assert all(s is not None and s.model_version in (1, 2) for s in snaps)
    finally:
        redis_client.connection_pool.release(sender.connection)
