"""Redis restarted without persistence.

The scorer notices, stops scoring on empty state, says why, and resumes with the exact history once
``fraudstream state rebuild`` has replayed Kafka.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import redis
from click.testing import CliRunner
from conftest import AppUnderTest, settings_env

from fraudstream.cli import main
from fraudstream.devstack import RedisServer, free_port
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import SnapshotStore

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
CARDS = 8


def _records(
    tx: Callable[..., tuple[bytes, bytes]], first: int, count: int
) -> list[tuple[bytes, bytes]]:
    """Transactions ``first..first+count-1`` of every card, a few hours apart."""
    return [
        tx(f"c{c}-{i}", f"c{c}", f"T{c % 3}", 20.0 + i, START + timedelta(hours=6 * i, minutes=c))
        for i in range(first, first + count)
        for c in range(CARDS)
    ]


def test_lost_redis_state_pauses_scoring_until_a_rebuild_restores_the_history(
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    tmp_path: Path,
) -> None:
    port = free_port()
    server = RedisServer(tmp_path / "redis-1", port=port)  # no persistence
    server.start()
    try:
        settings = make_settings(redis_url=server.url, publish_scores=True, role="scorer")
        app = run_app(settings)
        before = _records(make_transaction, 0, 5)
        produce(settings.bootstrap_servers, settings.topic_transactions, before)
        consume(
            settings.bootstrap_servers, settings.topic_scores, at_least=len(before), timeout_s=180
        )
        wait_for(lambda: app.ready()[0], 60, "the scorer to be ready")

        # Redis restarts with nothing: every card history, snapshot and marker is gone.
        server.stop()
        server = RedisServer(tmp_path / "redis-2", port=port)
        server.start()
        after = _records(make_transaction, 5, 2)
        produce(settings.bootstrap_servers, settings.topic_transactions, after)
        # Not ready, saying why (a batch in flight may first report another reason).
        wait_for(
            lambda: not app.ready()[0] and "state rebuild" in app.ready()[1],
            60,
            "the scorer to report not ready until a state rebuild",
        )
        # Nothing is scored on the empty state meanwhile.
        waiting = consume(
            settings.bootstrap_servers, settings.topic_scores, at_least=len(before) + 1, timeout_s=5
        )
        assert len(waiting) == len(before)

        result = CliRunner().invoke(main, ["state", "rebuild"], env=settings_env(settings))
        assert result.exit_code == 0, result.output
        assert f"{len(before) + len(after):,} transactions read" in result.output

        scores = consume(
            settings.bootstrap_servers,
            settings.topic_scores,
            at_least=len(before) + len(after),
            timeout_s=180,
            settle_s=2,
        )
        scored = [orjson.loads(r.value or b"")["transaction_id"] for r in scores]
        assert sorted(scored) == sorted(
            orjson.loads(v)["transaction_id"] for _, v in before + after
        )
        wait_for(lambda: app.ready()[0], 60, "the scorer to be ready again")

        # The transactions scored after the loss saw each card's whole history.
        client = redis.Redis.from_url(server.url)
        try:
            snapshots = SnapshotStore(client, settings.redis_prefix, settings.snapshot_ttl_s)
            names = app_feature_names(settings)
            column = names.index("card_tx_count_30d")
            for i in (5, 6):
                for c in range(CARDS):
                    snap = snapshots.get_many([f"c{c}-{i}"])[0]
                    assert snap is not None, f"c{c}-{i}"
                    assert snap.features[column] == i + 1, (f"c{c}-{i}", snap.features[column])
                    assert snap.model_version == 0 and snap.score == snap.score  # scored, not NaN
        finally:
            client.close()
    finally:
        server.stop()


def app_feature_names(settings: Settings) -> tuple[str, ...]:
    from fraudstream.service.features.definitions import FeatureConfig, feature_names

    return feature_names(FeatureConfig.from_settings(settings))
