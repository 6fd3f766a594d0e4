"""Two scorer processes in one group, one killed mid-stream; partitions added mid-stream.

Every transaction is counted exactly once in the feature store and none is lost.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import redis
from conftest import AppUnderTest, committed_offsets
from kafka.admin import KafkaAdminClient, NewPartitions

from fraudstream.service.kafka import make_producer
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import SnapshotStore

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


def _stream(
    tx: Callable[..., tuple[bytes, bytes]], cards: int, per_card: int, offset: int
) -> list[tuple[bytes, bytes]]:
    records = []
    for i in range(offset, offset + per_card):
        for c in range(cards):
            at = START + timedelta(minutes=10 * i, seconds=c)
            amount = 10.0 + (i * 13 + c) % 50
            records.append(tx(f"c{c}-{i}", f"c{c}", f"T{(c + i) % 7}", amount, at))
    return records


def test_two_scorers_share_partitions_and_a_crash_double_counts_nothing(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    group_members: Callable[[str, str], dict[str, int]],
    counting_problems: Callable[..., list[str]],
    redis_url: str,
) -> None:
    settings = make_settings(topic_partitions=4, max_batch_size=50, role="scorer")
    cards, per_card = 12, 30
    first = spawn_service(settings.model_copy(update={"client_id": "scorer-a"}), name="scorer-a")
    second = spawn_service(settings.model_copy(update={"client_id": "scorer-b"}), name="scorer-b")

    def shared() -> bool:
        members = group_members(settings.bootstrap_servers, settings.consumer_group)
        return (
            len(members) == 2
            and all(owned > 0 for owned in members.values())
            and sum(members.values()) == 4
        )

    # Both members own partitions, and together all four.
    wait_for(shared, 180, "both scorers to share the four partitions")

    client = redis.Redis.from_url(redis_url)
    snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)
    all_records = _stream(make_transaction, cards, per_card // 2, 0)
    produce(settings.bootstrap_servers, settings.topic_transactions, all_records)
    # Kill one scorer without warning while it works; the other takes its partitions
    # over and replays whatever was not committed.
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    later = _stream(make_transaction, cards, per_card - per_card // 2, per_card // 2)
    produce(settings.bootstrap_servers, settings.topic_transactions, later)
    all_records += later
    ids = [orjson.loads(v)["transaction_id"] for _, v in all_records]

    def all_scored() -> bool:
        return all(s is not None for s in snapshots.get_many(ids))

    wait_for(all_scored, 240, "every transaction to be scored")
    assert second.poll() is None, "the surviving scorer died"

    assert len(all_records) == cards * per_card
    assert counting_problems(settings, all_records) == []
    client.close()


def test_a_scorer_reading_ahead_through_rebalances_counts_each_transaction_once(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    group_members: Callable[[str, str], dict[str, int]],
    counting_problems: Callable[..., list[str]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Overlapped batches across rebalances count each transaction once.

    A stream produced faster than batches of 5 are scored makes the scorer
    overlap batches (batch k in its worker while k + 1 is polled); a second
    scorer joins, takes partitions and leaves meanwhile, so partitions are
    revoked while batches are in hand. Every transaction is scored, and counted
    in its card's history exactly once.
    """
    settings = make_settings(topic_partitions=4, max_batch_size=5, role="scorer")
    assert settings.overlap_batches
    cards = 12
    produced: list[tuple[bytes, bytes]] = []
    done = threading.Event()

    def members() -> dict[str, int]:
        return group_members(settings.bootstrap_servers, settings.consumer_group)

    def keep_producing() -> None:
        rounds = 0
        while (not done.is_set() or rounds < 60) and rounds < 400:  # at most 4,800
            chunk = _stream(make_transaction, cards, 10, rounds)
            produce(settings.bootstrap_servers, settings.topic_transactions, chunk)
            produced.extend(chunk)
            rounds += 10

    first = spawn_service(settings.model_copy(update={"client_id": "ahead-a"}), name="ahead-a")
    wait_for(lambda: len(members()) == 1, 120, "the first scorer to join (it creates the topics)")
    producer = threading.Thread(target=keep_producing, daemon=True)
    producer.start()
    second = spawn_service(settings.model_copy(update={"client_id": "ahead-b"}), name="ahead-b")
    wait_for(lambda: len(members()) == 2 and all(members().values()), 120, "both to own partitions")
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=60)
    done.set()
    producer.join(timeout=120)
    ids = [orjson.loads(v)["transaction_id"] for _, v in produced]
    client = redis.Redis.from_url(redis_url)
    snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)
    wait_for(lambda: all(s is not None for s in snapshots.get_many(ids)), 240, "all to be scored")
    assert first.poll() is None, "the first scorer died"

    assert counting_problems(settings, produced) == []
    read_again = sum(log.read_text().count("read again") for log in tmp_path.glob("ahead-*.log"))
    print(f"{len(ids)} transactions; batches read again after a rebalance: {read_again}")
    client.close()


def test_partitions_added_while_two_scorers_run_lose_and_double_count_nothing(
    make_settings: Callable[..., Settings],
    card_stream: Callable[..., list[tuple[bytes, bytes]]],
    run_app: Callable[[Settings], AppUnderTest],
    wait_for: Callable[..., None],
    group_lag: Callable[[Settings], int],
    counting_problems: Callable[..., list[str]],
    committed_past_unscored: Callable[..., list[str]],
) -> None:
    """``transactions`` grows from 2 to 5 partitions mid-stream.

    A case an independent tester wrote: a card's later transactions go to
    another partition, maybe to the other scorer.
    """
    settings = make_settings(role="scorer", max_batch_size=20, session_timeout_ms=6000)
    stream = card_stream("p", cards=30, per_card=12)
    for name in ("one", "two"):
        run_app(settings.model_copy(update={"client_id": name}))
    time.sleep(5)

    def feed() -> None:
        producer = make_producer(settings, client_id="feeder", metadata_max_age_ms=1000)
        try:
            for i in range(0, len(stream), 6):
                for key, value in stream[i : i + 6]:
                    producer.send(settings.topic_transactions, key=key, value=value)
                time.sleep(0.1)
            producer.flush(timeout=60)
        finally:
            producer.close(timeout=10)

    feeder = threading.Thread(target=feed, name="feeder")
    feeder.start()
    time.sleep(3)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.create_partitions({settings.topic_transactions: NewPartitions(5)})
    finally:
        admin.close()
    feeder.join(timeout=120)
    wait_for(lambda: len(committed_offsets(settings)[1]) == 5, 60, "5 partitions")
    wait_for(lambda: group_lag(settings) == 0, 90, "every offset committed")
    assert committed_past_unscored(settings) == []
    assert counting_problems(settings, stream) == []
