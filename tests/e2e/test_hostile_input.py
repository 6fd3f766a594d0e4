"""A hostile stream on real Kafka and Redis.

Every record is scored or dead-lettered as documented (``tests/hostile_corpus.py``), no dead letter
stalls the scorer, and the service stays up and keeps scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import orjson
import redis
from conftest import AppUnderTest
from hostile_corpus import corpus

from fraudstream.service.features.definitions import FeatureConfig, feature_names
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import SnapshotStore


def test_a_hostile_stream_is_scored_or_dead_lettered_and_the_service_stays_up(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
) -> None:
    settings = make_settings(publish_scores=True, topic_partitions=1, role="scorer")
    cases = corpus(settings.max_message_bytes)
    app = run_app(settings)
    produce(
        settings.bootstrap_servers,
        settings.topic_transactions,
        [(c.key, c.value, c.headers or None) for c in cases],
    )
    expected_letters = {i: c for i, c in enumerate(cases) if c.expect != "scored"}
    expected_scored = [
        orjson.loads(c.value or b"")["transaction_id"] for c in cases if c.expect == "scored"
    ]

    letters = consume(
        settings.bootstrap_servers,
        settings.topic_transactions_dlq,
        at_least=len(expected_letters),
        timeout_s=180,
        settle_s=2,
    )
    by_offset = {int(dict(r.headers)["fraudstream.source.offset"]): r for r in letters}
    assert sorted(by_offset) == sorted(expected_letters), "dead letters differ from the corpus"
    assert len(letters) == len(expected_letters)
    for offset, case in expected_letters.items():
        record = by_offset[offset]
        headers = dict(record.headers)
        assert headers["fraudstream.error.class"].decode() == case.expect, case.name
        assert headers["fraudstream.error.message"], case.name
        if "fraudstream.value.truncated" not in headers:
            assert record.value == case.value, f"{case.name}: value changed"
    near_limit = next(i for i, c in expected_letters.items() if c.name == "near_broker_limit")
    cut = dict(by_offset[near_limit].headers)
    assert cut["fraudstream.value.truncated"] == b"true"
    assert int(cut["fraudstream.value.original_bytes"]) == len(cases[near_limit].value or b"")

    # The service is still up: a probe sent after the whole corpus is scored.
    probe = make_transaction("probe-after-hostile", "probe-card", "T1", 12.0, _recent())
    produce(settings.bootstrap_servers, settings.topic_transactions, [probe])
    scores = consume(
        settings.bootstrap_servers,
        settings.topic_scores,
        at_least=len(expected_scored) + 1,
        timeout_s=180,
        settle_s=2,
    )
    scored = [orjson.loads(r.value or b"")["transaction_id"] for r in scores]
    assert sorted(scored) == sorted([*expected_scored, "probe-after-hostile"])
    assert not app._failures
    wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")


def _recent() -> datetime:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def test_a_transaction_dated_years_ahead_does_not_silence_its_card(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    redis_url: str,
) -> None:
    """A terminal with its clock in 2099: the transaction is dead-lettered.

    Counted, every later transaction of its card would be too late (older than
    the retention before 2099) and the card's windows empty.
    """
    from datetime import UTC, timedelta
    from datetime import datetime as dt

    settings = make_settings(publish_scores=True, topic_partitions=1, role="scorer")
    run_app(settings)
    start = _recent() - timedelta(hours=1)
    first = make_transaction("ahead-0", "ahead-card", "T1", 10.0, start)
    broken = make_transaction("ahead-2099", "ahead-card", "T1", 10.0, dt(2099, 6, 1, tzinfo=UTC))
    later = [
        make_transaction(f"ahead-{i}", "ahead-card", "T1", 10.0, start + timedelta(minutes=i))
        for i in range(1, 6)
    ]
    produce(settings.bootstrap_servers, settings.topic_transactions, [first, broken, *later])
    scores = consume(
        settings.bootstrap_servers, settings.topic_scores, at_least=6, timeout_s=180, settle_s=2
    )
    by_id = {orjson.loads(r.value or b"")["transaction_id"]: r for r in scores}
    assert sorted(by_id) == sorted(["ahead-0"] + [f"ahead-{i}" for i in range(1, 6)])
    letters = consume(
        settings.bootstrap_servers, settings.topic_transactions_dlq, at_least=1, timeout_s=60
    )
    headers = dict(letters[0].headers)
    assert headers["fraudstream.error.class"] == b"EventTimeAheadError"
    assert b"2099-06-01T00:00:00Z" in headers["fraudstream.error.message"]
    # The card's windows go on counting: the fifth later one is its sixth in the hour.
    client = redis.Redis.from_url(redis_url)
    snapshot = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s).get_many(
        ["ahead-5"]
    )[0]
    assert snapshot is not None
    assert snapshot.x(feature_names(FeatureConfig()))["card_tx_count_1h"] == 6
