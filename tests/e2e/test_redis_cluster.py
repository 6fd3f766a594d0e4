"""The real service on Kafka and a real 3-master Redis Cluster (3 replicas).

Every transaction is scored and counted exactly once, at its card and at its
terminal; every label is learnt once. A master killed mid-stream (SIGKILL) is
survived: its replica is promoted, the batches that failed meanwhile are
retried, and the state ends as if nothing had happened. So is one frozen
(SIGSTOP) past the client's and the node timeout, which wakes to run the calls
it was sent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import orjson
import pytest
import redis
import redis.cluster
from click.testing import CliRunner
from conftest import AppUnderTest, settings_env
from redis.crc import key_slot

from fraudstream.cli import main
from fraudstream.devstack import RedisCluster
from fraudstream.service.features.definitions import FeatureConfig, feature_names
from fraudstream.service.features.redis_store import BUCKET_SIZE
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import SnapshotStore

# redis-py leaves execute_command and the cluster client's methods unannotated: their calls
# carry a narrow `type: ignore[no-untyped-call]`.

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def _stream(
    tx: Callable[..., tuple[bytes, bytes]], prefix: str, cards: int, per_card: int, first: int = 0
) -> list[tuple[bytes, bytes]]:
    """Transactions of ``cards`` cards at 7 terminals, in each card's event-time order."""
    records = []
    for i in range(first, first + per_card):
        for c in range(cards):
            at = START + timedelta(minutes=10 * i, seconds=c)
            card = f"{prefix}c{c}"
            amount = 10.0 + (i * 13 + c) % 50
            records.append(tx(f"{card}-{i}", card, f"{prefix}T{(c + i) % 7}", amount, at))
    return records


def _labels(records: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = []
    for i, (_, value) in enumerate(records):
        tx_id = orjson.loads(value)["transaction_id"]
        label = {
            "transaction_id": tx_id,
            "is_fraud": i % 9 == 4,
            "labeled_at": (START + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
            "source": "chargeback",
        }
        out.append((b"l", orjson.dumps(label)))
    return out


def counted_problems(
    client: redis.cluster.RedisCluster, settings: Settings, records: list[tuple[bytes, bytes]]
) -> list[str]:
    """Transactions not counted exactly once, at their card or at their terminal (empty: none).

    Card: a transaction's 30-day count in its snapshot is its rank in its card's
    history. Terminal: the day buckets of each terminal sum to its transactions.
    """
    config = FeatureConfig.from_settings(settings)
    snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)
    count_30d = feature_names(config).index("card_tx_count_30d")
    values = [orjson.loads(value) for _, value in records]
    seen: Counter[str] = Counter()
    out = []
    ids = [v["transaction_id"] for v in values]
    for v, snapshot in zip(values, snapshots.get_many(ids), strict=True):
        seen[v["card_id"]] += 1
        if snapshot is None:
            out.append(f"{v['transaction_id']} never scored")
        elif snapshot.features[count_30d] != seen[v["card_id"]]:
            out.append(f"{v['transaction_id']} counted as #{snapshot.features[count_30d]:.0f}")
    per_terminal = Counter(v["terminal_id"] for v in values)
    for terminal, expected in sorted(per_terminal.items()):
        # A client that does not decode replies: bytes, which redis-py types as bytes | str.
        raw = cast(bytes | None, client.get(f"{settings.redis_prefix}:{{t:{terminal}}}")) or b""
        rings = np.frombuffer(raw, dtype="<u4").reshape(-1, BUCKET_SIZE // 4)
        if rings[:, 1].sum() != expected:
            out.append(f"terminal {terminal}: {rings[:, 1].sum()} counted, {expected} sent")
    return out


def _scored_ids(
    consume: Callable[..., list[ConsumerRecord]], settings: Settings, n: int
) -> Counter[str]:
    records = consume(
        settings.bootstrap_servers, settings.topic_scores, at_least=n, timeout_s=240, settle_s=3
    )
    return Counter(orjson.loads(r.value or b"")["transaction_id"] for r in records)


def test_the_service_on_a_cluster_scores_counts_and_learns_each_once(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_cluster_url: str,
) -> None:
    settings = make_settings(
        redis_url=redis_cluster_url,
        redis_cluster=True,
        publish_scores=True,
        max_batch_size=200,
        publish_every_labels=50,
        publish_every_s=1.0,
    )
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    try:
        app = run_app(settings)
        records = _stream(make_transaction, "e", cards=30, per_card=20)
        produce(settings.bootstrap_servers, settings.topic_transactions, records + records[:40])
        ids = [orjson.loads(value)["transaction_id"] for _, value in records]
        # Each decision once, and the 40 replays' again (their decision, nothing counted).
        assert _scored_ids(consume, settings, len(records) + 40) == Counter(ids + ids[:40])
        assert app.metrics.duplicates._value.get() == 40
        assert counted_problems(client, settings, records) == []

        labels = _labels(records[:200])
        produce(settings.bootstrap_servers, settings.topic_labels, labels + labels[:20])
        registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)
        wait_for(
            lambda: (
                (registry.latest_version() or 0) > 0 and registry.load().model.labels_learnt >= 200
            ),
            240,
            "every label learnt",
        )
        assert registry.load().model.labels_learnt == 200  # the 20 repeated ones once
        # Ready (a loop inside one call for over 5 s reports not ready for that while).
        wait_for(lambda: app.ready() == (True, "ready"), 30, "the scorer to be ready")
    finally:
        client.close()


# Frozen is opt-in (-m slow, ~25 s): the default suite keeps the kill.
@pytest.mark.parametrize("fault", ["killed", pytest.param("frozen", marks=pytest.mark.slow)])
def test_a_master_killed_or_frozen_mid_stream_is_survived_without_loss_or_double_counting(
    fault: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
) -> None:
    """Its own cluster (the session's must stay whole); a master fails mid-stream.

    ``killed``: SIGKILL, without warning. ``frozen``: SIGSTOP for 6 s, past the
    client's timeout (``redis_timeout_s``, 3 s here) and the 1 s node timeout:
    its replica is promoted while it sleeps, and it wakes to run the calls it
    was sent before it learns it was replaced (then resyncs from the new
    master, dropping them). Either way the retries go to the promoted
    replica: nothing lost, nothing counted twice.
    """
    cluster = RedisCluster(tmp_path / "cluster")
    cluster.start()
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        settings = make_settings(
            redis_url=cluster.url,
            redis_cluster=True,
            publish_scores=True,
            max_batch_size=50,
            role="scorer",
            redis_timeout_s=3.0,
        )
        app = run_app(settings)
        first = _stream(make_transaction, "f", cards=24, per_card=10)
        produce(settings.bootstrap_servers, settings.topic_transactions, first)
        _scored_ids(consume, settings, len(first))

        # The master of a card of the stream fails while the next part is being scored.
        later = _stream(make_transaction, "f", cards=24, per_card=30, first=10)
        victim = client.get_node_from_key(f"{settings.redis_prefix}:{{c:fc0}}")  # type: ignore[no-untyped-call]
        pid = cluster.node_at(f"{victim.host}:{victim.port}").running_pid() or 0
        produce(settings.bootstrap_servers, settings.topic_transactions, later[:240])
        if fault == "killed":
            os.kill(pid, signal.SIGKILL)
            produce(settings.bootstrap_servers, settings.topic_transactions, later[240:])
        else:
            os.kill(pid, signal.SIGSTOP)
            try:
                produce(settings.bootstrap_servers, settings.topic_transactions, later[240:])
                time.sleep(6)
            finally:
                os.kill(pid, signal.SIGCONT)

        records = first + later
        scored = _scored_ids(consume, settings, len(records))
        assert set(scored) == {orjson.loads(v)["transaction_id"] for _, v in records}
        wait_for(lambda: app.ready()[0], 120, "the scorer to be ready again")
        assert not hasattr(app, "run_error")
        if fault == "killed":  # frozen, the cluster client may move to the replica by itself
            assert app.metrics.errors.labels("redis")._value.get() > 0
        wait_for(
            lambda: list(cluster.masters_by_address().values()).count("master") == 3,
            60,
            "three masters, a replica among them",
        )
        assert counted_problems(client, settings, records) == []
    finally:
        client.close()
        cluster.stop()


def test_a_master_that_lost_its_keys_pauses_its_slots_until_a_rebuild(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_cluster_url: str,
) -> None:
    """``fraudstream state status|rebuild`` on a cluster: one master's keys of the prefix vanish."""
    settings = make_settings(
        redis_url=redis_cluster_url, redis_cluster=True, publish_scores=True, role="scorer"
    )
    env = settings_env(settings)
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    try:
        app = run_app(settings)
        before = _stream(make_transaction, "s", cards=12, per_card=5)
        produce(settings.bootstrap_servers, settings.topic_transactions, before)
        _scored_ids(consume, settings, len(before))
        status = CliRunner().invoke(main, ["state", "status"], env=env)
        assert status.exit_code == 0 and "every slot of the cluster" in status.output

        # As if this master had restarted empty: every key of the prefix on it is gone.
        master = client.get_node_from_key(f"{settings.redis_prefix}:{{c:sc0}}")  # type: ignore[no-untyped-call]
        node = redis.Redis(host=master.host, port=master.port)
        lost = list(node.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
        for key in lost:
            node.delete(key)
        node.close()
        assert len(lost) > 5000  # its slots' markers, and card, terminal and snapshot keys
        after = _stream(make_transaction, "s", cards=12, per_card=2, first=5)
        produce(settings.bootstrap_servers, settings.topic_transactions, after)
        # Not ready, saying why (a batch in flight may first report another reason).
        wait_for(
            lambda: not app.ready()[0] and "state rebuild" in app.ready()[1],
            60,
            "the scorer to report not ready until a state rebuild",
        )
        status = CliRunner().invoke(main, ["state", "status"], env=env)
        assert status.exit_code == 1 and "slots have no state marker" in status.output

        rebuild = CliRunner().invoke(main, ["state", "rebuild"], env=env)
        assert rebuild.exit_code == 0, rebuild.output
        records = before + after
        assert f"{len(records):,} transactions read" in rebuild.output
        scored = _scored_ids(consume, settings, len(records))
        assert set(scored) == {orjson.loads(v)["transaction_id"] for _, v in records}
        wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")
        assert counted_problems(client, settings, records) == []
    finally:
        client.close()


def _first_slots_to_move(
    client: redis.cluster.RedisCluster, keys: list[str]
) -> tuple[redis.cluster.ClusterNode, int]:
    """A master, and how many of its slots to reshard so that one of ``keys`` moves.

    ``redis-cli --cluster reshard`` takes a master's slots in ascending order;
    the master and count are those that move a key of ``keys`` soonest.
    """
    slots: dict[str, list[int]] = {}
    for slot, holders in client.nodes_manager.slots_cache.items():
        slots.setdefault(holders[0].name, []).append(slot)
    best = min(
        (sorted(slots[client.get_node_from_key(k).name]).index(key_slot(k.encode())) + 1, k)  # type: ignore[no-untyped-call]
        for k in keys
    )
    return client.get_node_from_key(best[1]), best[0]  # type: ignore[no-untyped-call]


def test_a_reshard_mid_stream_scores_counts_and_learns_each_once(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_cluster_url: str,
) -> None:
    """``redis-cli --cluster reshard`` moves slots with the stream's keys while it flows.

    The slots move from a master to another, up to the first that holds a card or
    terminal key of the stream, while 1,500 transactions and their labels are
    being processed; 60 more come after the move (the slot maps stale). Whether
    a batch meets a slot while it migrates depends on timing; the moved slot,
    the stale maps and the outcome do not.
    """
    settings = make_settings(
        redis_url=redis_cluster_url,
        redis_cluster=True,
        publish_scores=True,
        max_batch_size=50,
        publish_every_labels=50,
        publish_every_s=1.0,
    )
    client = redis.cluster.RedisCluster.from_url(redis_cluster_url)
    cli = shutil.which("redis-cli")
    assert cli is not None
    try:
        app = run_app(settings)
        first = _stream(make_transaction, "r", cards=30, per_card=5)
        produce(settings.bootstrap_servers, settings.topic_transactions, first)
        _scored_ids(consume, settings, len(first))

        prefix = settings.redis_prefix
        keys = [f"{prefix}:{{c:rc{c}}}" for c in range(30)]
        keys += [f"{prefix}:{{t:rT{t}}}" for t in range(7)]
        source, count = _first_slots_to_move(client, keys)
        target = next(n for n in client.get_primaries() if n.name != source.name)  # type: ignore[no-untyped-call]
        node_ids = []
        for node in (source, target):
            connection = redis.Redis(host=node.host, port=node.port)
            node_ids.append(connection.execute_command("CLUSTER MYID").decode())  # type: ignore[no-untyped-call]
            connection.close()

        # A long part in flight, the reshard, then a part after it (stale slot maps).
        later = _stream(make_transaction, "r", cards=30, per_card=50, first=5)
        produce(settings.bootstrap_servers, settings.topic_transactions, later)
        labels = _labels(first)
        produce(settings.bootstrap_servers, settings.topic_labels, labels)
        reshard = subprocess.run(
            [cli, "--cluster", "reshard", source.name, "--cluster-from", node_ids[0],
             "--cluster-to", node_ids[1], "--cluster-slots", str(count), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
        assert reshard.returncode == 0, (reshard.stdout + reshard.stderr)[-2000:]
        assert reshard.stdout.count("Moving slot") == 2 * count
        after = _stream(make_transaction, "r", cards=30, per_card=2, first=55)
        produce(settings.bootstrap_servers, settings.topic_transactions, after)

        records = first + later + after
        ids = [orjson.loads(value)["transaction_id"] for _, value in records]
        assert _scored_ids(consume, settings, len(records)) == Counter(ids)
        # A batch retried after a refused round is not a replay: nothing is reported
        # as a duplicate without a retry. A round refused after the batch's
        # features were all counted (the snapshots, the last rounds) makes its
        # retry a replay of up to two batches (the one in hand and the one polled
        # meanwhile): reported as duplicates, still scored and counted once (above
        # and below).
        retried = app.metrics.errors.labels("redis")._value.get()
        assert app.metrics.duplicates._value.get() <= retried * 2 * settings.max_batch_size
        assert counted_problems(client, settings, records) == []
        registry = ModelRegistry(client, prefix, settings.model_signing_key)
        wait_for(
            lambda: (
                (registry.latest_version() or 0) > 0
                and registry.load().model.labels_learnt >= len(labels)
            ),
            240,
            "every label learnt",
        )
        assert registry.load().model.labels_learnt == len(labels)
        # Ready (a loop inside one call for over 5 s reports not ready for that while).
        wait_for(lambda: app.ready() == (True, "ready"), 30, "the scorer to be ready")
        assert not hasattr(app, "run_error")
    finally:
        client.close()
