"""Terminal window features of the Redis store against the windows written out in full.

``_terminal_features`` counts a day bucket in a window of ``d`` days from its age
(``day - bucket_day``); the reference here compares the bucket's day with both
ends of the window, as the definition reads. Integers throughout: the features
must be equal to the last bit, labels and fraud episodes included.
"""

from __future__ import annotations

import numpy as np
import pytest
import redis

from fraudstream.service.features.definitions import DAY_MS, FeatureConfig
from fraudstream.service.features.redis_store import RedisFeatureStore


def _written_out(config: FeatureConfig, t: np.ndarray, fields: np.ndarray) -> np.ndarray:
    day = (t // DAY_MS)[:, None]
    bucket_day, bucket_tx, bucket_labels, bucket_fraud = fields
    columns: list[np.ndarray] = []
    for d in config.terminal_window_days:
        inside = (bucket_day > day - d) & (bucket_day <= day)
        columns.append((bucket_tx * inside).sum(axis=1))
    for d in config.terminal_label_window_days:
        inside = (bucket_day > day - d) & (bucket_day <= day)
        labelled = (bucket_labels * inside).sum(axis=1).astype(np.float64)
        frauds = (bucket_fraud * inside).sum(axis=1).astype(np.float64)
        columns += [frauds, np.where(labelled > 0, frauds / np.maximum(labelled, 1.0), 0.0)]
    longest = max(config.terminal_label_window_days)
    fraud_day = (bucket_fraud > 0) & (bucket_day > day - longest) & (bucket_day <= day)
    any_fraud = fraud_day.any(axis=1)
    last = np.where(fraud_day, bucket_day, -1).max(axis=1)
    first = np.where(fraud_day, bucket_day, np.iinfo(np.int64).max).min(axis=1)
    episode = (bucket_day >= first[:, None]) & (bucket_day <= day)
    labelled = (bucket_labels * episode).sum(axis=1).astype(np.float64)
    frauds = (bucket_fraud * episode).sum(axis=1).astype(np.float64)
    today = day[:, 0]
    columns += [
        np.where(any_fraud, today - last, longest + 1),
        np.where(any_fraud, today - first, -1),
        np.where(any_fraud, frauds / np.maximum(labelled, 1.0), 0.0),
        np.where(any_fraud, labelled, 0.0),
    ]
    return np.column_stack(columns).astype(np.float64)


@pytest.mark.parametrize("seed", range(5))
def test_the_terminal_features_are_those_of_the_windows_written_out(seed: int) -> None:
    rng = np.random.default_rng(seed)
    config = FeatureConfig()
    store = RedisFeatureStore(redis.Redis(), config)  # never connects: no script runs
    n, slots = 400, config.terminal_slots
    today = 17_600 + rng.integers(0, 40, n)
    t = today * DAY_MS + rng.integers(0, DAY_MS, n)
    # Bucket days around each transaction's day: the future, today, every window
    # edge, the far past, and empty buckets (day 0).
    offsets = rng.choice([-3, -1, 0, 1, 6, 7, 8, 13, 14, 15, 29, 30, 31, 90], size=(n, slots))
    bucket_day = np.where(rng.random((n, slots)) < 0.1, 0, today[:, None] - offsets)
    bucket_tx = rng.integers(0, 50, (n, slots))
    bucket_labels = rng.integers(0, 5, (n, slots))
    fraud_rows = rng.random(n) < 0.5  # half the terminals saw no fraud
    frauds = np.minimum(bucket_labels, rng.integers(0, 3, (n, slots)))
    bucket_fraud = np.where(fraud_rows[:, None] & (rng.random((n, slots)) < 0.1), frauds, 0)
    fields = np.stack([bucket_day, bucket_tx, bucket_labels, bucket_fraud]).astype(np.int64)
    width = len(config.terminal_window_days) + 2 * len(config.terminal_label_window_days) + 4
    out = np.zeros((n, width))
    expected = _written_out(config, t, fields)
    assert store._terminal_features(out, 0, t, fields) == width == expected.shape[1]
    assert out.tobytes() == expected.tobytes()
    frauds_seen = out[:, -1] > 0  # the data make fraud episodes, and rows without one
    assert frauds_seen.any() and not frauds_seen.all()
