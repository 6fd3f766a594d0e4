"""``fraudstream evaluate --via kafka`` (real Kafka, Redis and Applications) agrees with
the in-process replay on a small stream."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from fraudstream.evaluation.prequential import ReplayConfig, replay
from fraudstream.evaluation.stream import LabelledStream
from fraudstream.evaluation.via_kafka import replay_via_kafka
from fraudstream.producers.simulator import SimulationConfig, simulate
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.progressive import roc_auc
from fraudstream.service.serving import ServingPolicy


def test_in_process_and_kafka_agree(
    make_settings: Callable[..., Any], kafka_bootstrap: str, redis_url: str, redis_prefix: str
) -> None:
    stream = LabelledStream.from_simulation(
        simulate(SimulationConfig(n_customers=250, n_terminals=500, n_days=12, seed=4))
    )
    config = ReplayConfig(
        models=("logreg",),
        label_delay_days=2.0,
        policy=ServingPolicy(min_labels=200, min_frauds=5),
    )
    settings = make_settings()
    local = replay(
        stream,
        config,
        store="redis",
        redis_url=redis_url,
        feature_config=dataclasses.replace(
            FeatureConfig.from_settings(settings), prefix=redis_prefix
        ),
    )
    # 12 event days in about 8 seconds.
    deployed = replay_via_kafka(
        stream,
        config,
        settings,
        bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        speed=12 * 86_400 / 8,
    )
    # Every transaction scored by every application.
    for name in ("rules", "logreg"):
        assert np.isfinite(deployed.scores[name]).all(), name
    # The rules prior sees the same features: the same scores (published rounded to
    # 6 decimals), except where a label was counted at a slightly different moment
    # (the learner runs on wall time).
    same = np.isclose(deployed.scores["rules"], local.scores["rules"], atol=1e-6)
    assert same.mean() > 0.97, same.mean()
    # The model served in both, from about the same day, and ranks about as well.
    served = [deployed.serving_from_ms["logreg"], local.serving_from_ms["logreg"]]
    assert None not in served
    assert abs(served[0] - served[1]) <= 2 * 86_400_000  # type: ignore[operator]
    late = stream.time_ms >= stream.time_ms[0] + 6 * 86_400_000
    y = stream.is_fraud[late]
    for name in ("rules", "logreg"):
        a, b = roc_auc(deployed.scores[name][late], y), roc_auc(local.scores[name][late], y)
        print(f"{name}: AUC kafka {a:.3f} in-process {b:.3f}; same rules scores {same.mean():.3f}")
        assert abs(a - b) < 0.05, (name, a, b)
