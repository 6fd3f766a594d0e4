"""The metrics themselves: one latency observation per transaction, split gauges, lag."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.registry import Collector

from fraudstream.service.metrics import LATENCY_BUCKETS_S, BatchHistogram, Metrics


def _samples(metric: Collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metric.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_matches_one_observe_per_value() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [rng.exponential(0.01, 5000), np.array(LATENCY_BUCKETS_S), [0.0, 1e6, np.nan]]
    )
    buckets = LATENCY_BUCKETS_S
    batch = BatchHistogram("a_seconds", "a", buckets=buckets, registry=CollectorRegistry())
    single = Histogram("a_seconds", "a", buckets=buckets, registry=CollectorRegistry())
    batch.observe_many(values[:2000])
    batch.observe_many(values[2000:])
    batch.observe_many(np.array([]))
    for value in values[np.isfinite(values)]:
        single.observe(float(value))
    got, want = _samples(batch), _samples(single)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert np.isclose(got[key], value), key
    assert got[("a_seconds_count", ())] == len(values) - 1  # NaN ignored


def test_latency_count_is_the_number_of_transactions() -> None:
    m = Metrics()
    for _ in range(5):
        m.observe_latencies_ms(np.full(711, 3.0))
    samples = _samples(m.end_to_end_s)
    assert samples[("fraudstream_end_to_end_latency_seconds_count", ())] == 3555
    assert np.isclose(samples[("fraudstream_end_to_end_latency_seconds_sum", ())], 3555 * 0.003)
    # 3 ms falls in the 5 ms bucket, not the 2 ms one
    assert samples[("fraudstream_end_to_end_latency_seconds_bucket", (("le", "0.002"),))] == 0
    assert samples[("fraudstream_end_to_end_latency_seconds_bucket", (("le", "0.005"),))] == 3555


def test_progressive_metrics_are_separate_gauges_nan_until_published() -> None:
    m = Metrics()
    text = m.exposition().decode()
    assert "fraudstream_progressive_roc_auc NaN" in text
    assert "fraudstream_progressive_metric" not in text
    m.model_published(
        7,
        {"n": 900, "seen": 1200, "positives": 12, "alerts": 20, "roc_auc": 0.91,
         "average_precision": 0.5, "precision": float("nan"), "recall": 0.75, "threshold": 0.5},
    )  # fmt: skip
    text = m.exposition().decode()
    assert "fraudstream_progressive_roc_auc 0.91" in text
    assert "fraudstream_progressive_window_labels 900.0" in text
    assert "fraudstream_progressive_window_frauds 12.0" in text
    assert "fraudstream_progressive_precision NaN" in text
    assert "fraudstream_learner_model_version 7.0" in text


def test_known_label_values_exist_at_zero() -> None:
    text = Metrics().exposition().decode()
    assert 'fraudstream_alerts_total{scorer="model"} 0.0' in text
    assert 'fraudstream_dependency_errors_total{dependency="redis"} 0.0' in text


def test_lag_of_lost_partitions_is_forgotten() -> None:
    m = Metrics()
    m.report_lag("scorer", {("tx", 0): 5, ("tx", 1): 7})
    m.report_lag("learner", {("labels", 0): 2})
    m.report_lag("scorer", {("tx", 1): 3})
    lags = {
        (labels["role"], labels["topic"], labels["partition"]): value
        for (_, pairs), value in _samples(m.lag).items()
        for labels in [dict(pairs)]
    }
    assert lags == {("scorer", "tx", "1"): 3, ("learner", "labels", "0"): 2}


def test_dependency_error_remembers_when() -> None:
    m = Metrics()
    m.dependency_error("kafka")
    assert m.errors.labels("kafka")._value.get() == 1
    assert m.last_error_s.labels("kafka")._value.get() > 0


def test_dead_letters_are_counted_per_topic_and_error_class() -> None:
    metrics = Metrics()
    metrics.count_dead_letters("dlq", ["DecodeError", "ValidationFailedError", "DecodeError"])
    metrics.count_dead_letters("dlq", [])
    metrics.count_dead_letters("labels.dlq", ["DecodeError"])

    def sample(topic: str, error: str) -> float | None:
        return metrics.registry.get_sample_value(
            "fraudstream_dead_letters_total", {"topic": topic, "error": error}
        )

    assert sample("dlq", "DecodeError") == 2
    assert sample("dlq", "ValidationFailedError") == 1
    assert sample("labels.dlq", "DecodeError") == 1
