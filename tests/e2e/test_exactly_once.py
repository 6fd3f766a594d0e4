"""exactly_once mode: alerts and offsets commit in one Kafka transaction."""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from conftest import AppUnderTest, spawn_serve, stop_processes

from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def _stream(tx: Callable[..., tuple[bytes, bytes]], prefix: str) -> list[tuple[bytes, bytes]]:
    """Ten cards with a quiet history, then each makes one huge purchase somewhere new."""
    records = []
    for c in range(10):
        card = f"{prefix}-card-{c}"
        records += [
            tx(f"{card}-h{i}", card, "T-home", 20.0 + i, NOW - timedelta(days=9 - i))
            for i in range(8)
        ]
        records.append(tx(f"{card}-attack", card, f"T-far-{c}", 3000.0, NOW))
    return records


def test_alerts_are_seen_once_by_read_committed_readers_and_not_repeated_after_restart(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
) -> None:
    settings = make_settings(guarantee="exactly_once", publish_scores=True, role="scorer")
    read_committed = functools.partial(consume, settings.bootstrap_servers, read_committed=True)
    app = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, _stream(make_transaction, "a"))
    committed = read_committed(settings.topic_alerts, at_least=10, timeout_s=180, settle_s=2)
    ids = [orjson.loads(r.value or b"")["alert_id"] for r in committed]
    assert len(ids) == 10 and len(set(ids)) == 10
    scores = read_committed(settings.topic_scores, at_least=90, timeout_s=60)
    assert len(scores) == 90

    # A restarted scorer resumes after the committed offsets: nothing is scored twice.
    app.stop()
    run_app(settings)
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        _stream(make_transaction, "b")[:3],
    )
    after = read_committed(settings.topic_scores, at_least=93, timeout_s=180, settle_s=3)
    transaction_ids = [orjson.loads(r.value or b"")["transaction_id"] for r in after]
    assert len(transaction_ids) == 93 and len(set(transaction_ids)) == 93


def test_a_scorer_fenced_by_another_with_its_transactional_id_stops_with_one_clear_error(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    unique_name: Callable[[str], str],
    wait_for: Callable[..., None],
) -> None:
    settings = make_settings(
        guarantee="exactly_once",
        publish_scores=True,
        role="scorer",
        transactional_id=unique_name("scorer"),
    )
    first = run_app(settings)
    produce(settings.bootstrap_servers, settings.topic_transactions, _stream(make_transaction, "a"))
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=90, read_committed=True)
    # Misconfigured: a second scorer (another group) with the same transactional id.
    run_app(settings.model_copy(update={"consumer_group": unique_name("other-scorers")}))
    time.sleep(3)  # it has fenced the first
    produce(settings.bootstrap_servers, settings.topic_transactions, _stream(make_transaction, "b"))
    wait_for(lambda: hasattr(first, "run_error"), 60, "the fenced scorer to stop")
    assert str(first.run_error) == (
        f"another scorer took over transactional id {settings.transactional_id}: "
        "give each scorer its own FRAUDSTREAM_TRANSACTIONAL_ID; this one stops"
    )
    assert first.ready()[0] is False


@pytest.mark.slow  # ~30 s, most of it the broker's wait for the timeout: opt-in (-m slow)
def test_a_scorer_lost_inside_its_transaction_holds_the_group_until_the_timeout_and_says_why(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    group_members: Callable[[str, str], dict[str, int]],
    wait_for: Callable[..., None],
    tmp_path: Path,
) -> None:
    """Two scorers; one dies after its offsets went into its transaction, before the commit.

    Its transaction holds the offsets of its partition until the broker aborts it
    (FRAUDSTREAM_TRANSACTION_TIMEOUT_S, here 15 s instead of 60): the other scorer,
    which takes the partition over, scores nothing meanwhile, then everything, once
    (``read_committed``), and its log explains the wait in one warning instead of
    kafka-python's ten ERROR lines a second.
    """
    settings = make_settings(
        guarantee="exactly_once",
        publish_scores=True,
        role="scorer",
        topic_partitions=2,
        max_batch_size=20,
        session_timeout_ms=6000,
        transaction_timeout_s=15,
    )
    logs = [tmp_path / "lost.log", tmp_path / "survivor.log"]
    marker = tmp_path / "crashed"
    crashes = [["offsets-in-transaction", "2", str(marker)], []]
    processes = [
        spawn_serve(settings.model_copy(update={"client_id": f"fs{j}"}), path, "scorer", *crash)
        for j, (crash, path) in enumerate(zip(crashes, logs, strict=True))
    ]
    lost, survivor = processes
    try:
        bootstrap = settings.bootstrap_servers
        wait_for(
            lambda: sorted(group_members(bootstrap, settings.consumer_group).values()) == [1, 1],
            180,
            "both scorers to own a partition",
        )
        records = [
            make_transaction(
                f"h{c}-{i}", f"card{c}", f"T{c}", 5.0 + i, NOW - timedelta(hours=20 - i)
            )
            for i in range(20)
            for c in range(10)
        ]
        produce(bootstrap, settings.topic_transactions, records)
        assert lost.wait(timeout=120) == 137, logs[0].read_text()[-3000:]
        crashed_at = time.monotonic()
        scores = consume(
            bootstrap,
            settings.topic_scores,
            at_least=len(records),
            timeout_s=150,
            settle_s=2,
            read_committed=True,
        )
        resumed_s = time.monotonic() - crashed_at
        scored = Counter(orjson.loads(r.value or b"")["transaction_id"] for r in scores)
        assert scored == Counter(orjson.loads(v)["transaction_id"] for _, v in records)
        assert survivor.poll() is None, logs[1].read_text()[-3000:]
        said = logs[1].read_text()
        print(f"everything scored {resumed_s:.0f} s after the crash")
        # With the default 60 s the broker aborts the transaction a minute after it began.
        assert resumed_s < 55, said[-3000:]
        assert "are held by an open transaction of a scorer that stopped" in said, said[-3000:]
        assert "ERROR kafka.coordinator.consumer" not in said, said[-3000:]
    finally:
        stop_processes(processes)
