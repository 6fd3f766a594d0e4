"""Delayed labels end to end.

A learner process killed and restarted loses no label and learns none twice; a scorer started later
scores with the newest version. Labels that cannot be learnt (no snapshot, malformed, or saying the
opposite of the label learnt) go to the labels dead-letter topic with the reason.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from conftest import AppUnderTest, lag_of

from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Role, Settings

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _transactions(tx: Callable[..., tuple[bytes, bytes]], n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        fraud = i % 10 == 3
        amount = 900.0 + i if fraud else 15.0 + i % 20
        out.append(tx(f"t{i}", f"c{i % 40}", f"T{i % 9}", amount, START + timedelta(minutes=i)))
    return out


def _labels(ids: range) -> list[tuple[bytes, bytes]]:
    return [
        (
            b"l",
            orjson.dumps(
                {
                    "transaction_id": f"t{i}",
                    "is_fraud": i % 10 == 3,
                    "labeled_at": _iso(START + timedelta(days=1, minutes=i)),
                    "source": "chargeback",
                }
            ),
        )
        for i in ids
    ]


def test_learner_crash_and_restart_continue_versions_and_a_new_scorer_uses_them(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    wait_for: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    read_topic: Callable[..., list[ConsumerRecord]],
    unique_name: Callable[[str], str],
    redis_url: str,
) -> None:
    settings = make_settings(
        publish_every_labels=40,
        publish_every_s=1.0,
        min_labels_for_model=100,
        # This test is about versions, not quality: any version with 100 labels serves.
        model_margin_over_prior=-1.0,
        publish_scores=True,
    )
    client = redis.Redis.from_url(redis_url)
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)
    n = 300
    run_app(settings.model_copy(update={"role": Role.SCORER}))
    transactions = _transactions(make_transaction, n)
    produce(settings.bootstrap_servers, settings.topic_transactions, transactions)
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=n, timeout_s=180)

    learner = spawn_service(settings, "--role", "learner", name="learner-1")
    produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(0, 150)))
    wait_for(
        lambda: (registry.latest_version() or 0) > 0 and registry.load().model.labels_learnt >= 80,
        240,
        "a first published version",
    )
    learner.send_signal(signal.SIGKILL)
    learner.wait(timeout=30)
    before = registry.load()

    produce(
        settings.bootstrap_servers,
        settings.topic_labels,
        _labels(range(150, n)) + _labels(range(0, 10)),
    )  # ten labels sent twice
    spawn_service(settings, "--role", "learner", name="learner-2")
    wait_for(lambda: registry.load().model.labels_learnt >= n, 240, "every label learnt")
    time.sleep(2)  # give a wrong double-learning time to show
    after = registry.load()
    assert after.version > before.version
    assert after.model.labels_learnt == n  # none lost, none learnt twice
    assert after.model.frauds_learnt == sum(1 for i in range(n) if i % 10 == 3)

    # A scorer started now scores with the newest version, not the rules prior. It
    # publishes to a topic of its own: the first scorer scores the probe too.
    late = settings.model_copy(
        update={
            "role": Role.SCORER,
            "consumer_group": unique_name("late-scorer"),
            "topic_scores": unique_name("late-scores"),
        }
    )
    run_app(late)
    probe = make_transaction("probe", "c1", "T1", 20.0, START + timedelta(days=1))
    produce(settings.bootstrap_servers, settings.topic_transactions, [probe])

    def probe_record() -> dict[str, Any] | None:
        # The whole topic, not its first n + 1 records: those stop at a poll's 500
        # records, partition by partition, and missed the probe's partition tail.
        for record in read_topic(settings.bootstrap_servers, late.topic_scores):
            decision: dict[str, Any] = orjson.loads(record.value or b"")
            if decision["transaction_id"] == "probe":
                return decision
        return None

    wait_for(lambda: probe_record() is not None, 60, "the probe to be scored")
    decision = probe_record()
    assert decision is not None
    assert decision["scorer"] == "model"
    assert decision["model_version"] >= after.version
    client.close()


def test_labels_without_snapshot_malformed_or_contradicting_go_to_the_labels_dlq(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
) -> None:
    """The ghost label waits for its snapshot for label_wait_s, then is dead-lettered.

    A transaction labelled genuine, then fraud (a corrected label): the first is
    learnt, the second dead-lettered with the reason; its repeat is a duplicate.
    """
    settings = make_settings(publish_every_s=1.0, label_wait_s=2.0)
    app = run_app(settings)
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        [make_transaction("t1", "c1", "T1", 25.0, START)],
    )
    wait_for(lambda: app.metrics.processed._value.get() >= 1, 120, "t1 to be scored")

    def label(tx: str, fraud: bool | str) -> bytes:
        return orjson.dumps(
            {"transaction_id": tx, "is_fraud": fraud, "labeled_at": _iso(START), "source": "x"}
        )

    ghost, malformed = label("never-scored", True), label("x", "maybe")
    genuine, corrected = label("t1", False), label("t1", True)
    records = [(b"k1", ghost), (b"k2", malformed), (b"t1", genuine), (b"t1", corrected)]
    records.append((b"t1", genuine))  # sent twice
    produce(settings.bootstrap_servers, settings.topic_labels, records)
    letters = consume(
        settings.bootstrap_servers, settings.topic_labels_dlq, at_least=3, timeout_s=180, settle_s=1
    )
    by_key = {r.key: dict(r.headers) for r in letters}
    assert by_key[b"k1"]["fraudstream.error.class"] == b"MissingSnapshotError"
    assert b"never-scored" in by_key[b"k1"]["fraudstream.error.message"]
    assert b"after waiting 2 s" in by_key[b"k1"]["fraudstream.error.message"]
    assert by_key[b"k2"]["fraudstream.error.class"] == b"ValidationFailedError"
    assert by_key[b"t1"]["fraudstream.error.class"] == b"LabelConflictError"
    assert by_key[b"t1"]["fraudstream.error.message"].startswith(
        b"transaction t1 was labelled genuine; this label says fraud and is not learnt"
    )
    assert sorted(r.value or b"" for r in letters) == sorted([ghost, malformed, corrected])
    m = app.metrics
    assert m.labels_rejected.labels("missing_snapshot")._value.get() == 1
    assert m.labels_rejected.labels("conflict")._value.get() == 1
    assert m.labels_rejected.labels("duplicate")._value.get() == 1
    assert m.labels_learnt._value.get() == 1


def test_labels_that_teach_nothing_new_are_committed_without_a_new_version(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    redis_url: str,
) -> None:
    """Duplicates and a malformed label alone, on a quiet feed: the learner's lag drains.

    Offsets wait for the version that holds what was learnt; when nothing new was
    learnt there is no version to wait for (found by the learner crash sweep: a
    learner restarted after a crash relearnt its labels from the waiting set, then
    re-read only duplicates, and its lag never drained).
    """
    settings = make_settings(
        publish_every_labels=20,
        publish_every_s=1.0,
        min_labels_for_model=20,
        model_margin_over_prior=-1.0,  # this is about offsets, not quality
        publish_scores=True,
    )
    run_app(settings)
    n = 30
    produce(
        settings.bootstrap_servers, settings.topic_transactions, _transactions(make_transaction, n)
    )
    consume(settings.bootstrap_servers, settings.topic_scores, at_least=n, timeout_s=180)
    produce(settings.bootstrap_servers, settings.topic_labels, _labels(range(n)))
    client = redis.Redis.from_url(redis_url)
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)

    try:
        wait_for(
            lambda: (
                (registry.latest_version() or 0) > 0
                and registry.load().model.labels_learnt == n
                and lag_of(settings, learner=True) == 0
            ),
            180,
            "every label learnt and committed",
        )
        version = registry.latest_version()
        malformed = (b"k", b'{"transaction_id": "t1", "is_fraud": "perhaps"}')
        produce(settings.bootstrap_servers, settings.topic_labels, [*_labels(range(10)), malformed])
        wait_for(
            lambda: lag_of(settings, learner=True) == 0,
            60,
            "the duplicates and the dead letter committed",
        )
        letters = consume(settings.bootstrap_servers, settings.topic_labels_dlq, at_least=1)
        assert [r.value for r in letters] == [malformed[1]]
        assert registry.latest_version() == version  # nothing new learnt, no new version
        assert registry.load().model.labels_learnt == n
    finally:
        client.close()
