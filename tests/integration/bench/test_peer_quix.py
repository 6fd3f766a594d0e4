"""The Quix Streams peer of the pipeline benchmark on a real broker (needs the bench extra)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from fraudstream.bench.peer_quix import INSTALL_HINT, quix_available
from fraudstream.bench.pipeline import measure_peer_quix, preload, simulate_records
from fraudstream.service.features.definitions import FeatureConfig, feature_names
from fraudstream.service.kafka import ensure_topics
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.model import FraudModel

pytestmark = pytest.mark.skipif(
    not quix_available(), reason=f"needs the bench extra: {INSTALL_HINT}"
)


def test_the_peer_scores_every_transaction_and_publishes_alerts(
    kafka_bootstrap: str,
    unique_name: Callable[[str], str],
    consume: Callable[..., list[ConsumerRecord]],
) -> None:
    topic, alerts = unique_name("peer-tx"), unique_name("peer-alerts")
    ensure_topics(kafka_bootstrap, {topic: 3, alerts: 3})
    data = simulate_records(400, seed=2)
    preload(kafka_bootstrap, topic, data.keys, data.values)
    # An untrained model says 0.5 to everything: at threshold 0.5 every transaction alerts.
    model = FraudModel("logreg", feature_names(FeatureConfig()))
    result = measure_peer_quix(
        kafka_bootstrap,
        topic,
        alerts,
        unique_name("peer-group"),
        model,
        {"windows_s": "3600,86400,604800,2592000", "alert_threshold": 0.5},
        target=400,
    )
    assert result["peer_processed"] == 400
    assert result["peer_tx_per_s"] > 0 and result["peer_rss_mb"] > 0
    assert len(result["window"]) == 2
    records = consume(kafka_bootstrap, alerts, at_least=400, settle_s=1.0)
    values = [orjson.loads(r.value or b"") for r in records]
    assert sorted(v["transaction_id"] for v in values) == sorted(
        orjson.loads(v)["transaction_id"] for v in data.values
    )
    assert all(r.key == v["card_id"].encode() for r, v in zip(records, values, strict=True))
