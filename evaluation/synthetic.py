"""A short synthetic stream of feature rows, for quick model tests.

Not an evaluation: ``fraudstream evaluate`` measures detection quality on real
(or simulated) transactions through the service's own features. This is a
cheap matrix with planted fraud patterns for unit and integration tests.
"""

from __future__ import annotations

import numpy as np

#: Feature names of :func:`synthetic_stream`, the reference store's names.
SYNTHETIC_FEATURES: tuple[str, ...] = (
    "amount",
    "card_amount_mean_30d",
    "card_amount_zscore",
    "card_tx_count_1h",
    "card_seconds_since_prev",
    "card_new_terminal",
    "card_distance_km_prev",
    "card_speed_kmh_prev",
    "card_fraud_labels_30d",
    "terminal_tx_count_1d",
    "terminal_fraud_rate_14d",
    "hour_of_day",
    "is_night",
    "is_weekend",
)


def synthetic_stream(
    n: int, seed: int = 7, fraud_rate: float = 0.015
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """A stream of feature rows with planted fraud patterns.

    Four fraud scenarios, each overlapping with some genuine behaviour so that
    no single rule is perfect: a large amount for the card, a burst of
    transactions, a compromised terminal (high recent fraud rate, new to the
    card), impossible travel.

    Returns
    -------
    names, X, y
        Feature names, a ``float64`` matrix ``(n, len(names))`` and ``bool`` labels.

    Examples
    --------
    >>> names, X, y = synthetic_stream(1000, seed=1)
    >>> X.shape == (1000, len(names)), bool(0 < y.sum() < 60)
    (True, True)
    """
    rng = np.random.default_rng(seed)
    y = rng.random(n) < fraud_rate
    mean30 = rng.lognormal(3.5, 0.6, n)
    zscore = rng.normal(0.0, 1.0, n)
    count1h = rng.poisson(0.3, n).astype(float)
    new_terminal = (rng.random(n) < 0.15).astype(float)
    term_rate = rng.beta(0.5, 60.0, n)
    speed = rng.exponential(20.0, n)
    hour = rng.integers(0, 24, n).astype(float)
    fraud_labels = (rng.random(n) < 0.01).astype(float)
    # Genuine outliers so the patterns overlap.
    zscore += np.where(rng.random(n) < 0.03, rng.uniform(2.0, 5.0, n), 0.0)
    count1h += np.where(rng.random(n) < 0.02, rng.integers(3, 8, n), 0)
    speed += np.where(rng.random(n) < 0.01, rng.uniform(300, 1500, n), 0.0)

    scenario = rng.integers(0, 4, n)
    f = y
    zscore = np.where(f & (scenario == 0), rng.uniform(2.5, 7.0, n), zscore)
    count1h = np.where(f & (scenario == 1), rng.integers(3, 12, n), count1h)
    term_rate = np.where(f & (scenario == 2), rng.uniform(0.02, 0.4, n), term_rate)
    new_terminal = np.where(f & (scenario == 2), (rng.random(n) < 0.8), new_terminal)
    speed = np.where(f & (scenario == 3), rng.uniform(200, 2000, n), speed)
    hour = np.where(f & (rng.random(n) < 0.4), rng.integers(0, 6, n), hour)
    fraud_labels = np.where(f & (rng.random(n) < 0.2), 1.0, fraud_labels)

    amount = np.maximum(0.5, mean30 * (1.0 + 0.4 * zscore))
    seconds_prev = np.where(count1h > 0, rng.exponential(3600.0 / (1 + count1h)), 86400.0)
    distance = speed * seconds_prev / 3600.0
    columns = {
        "amount": amount,
        "card_amount_mean_30d": mean30,
        "card_amount_zscore": zscore,
        "card_tx_count_1h": count1h,
        "card_seconds_since_prev": seconds_prev,
        "card_new_terminal": new_terminal.astype(float),
        "card_distance_km_prev": distance,
        "card_speed_kmh_prev": speed,
        "card_fraud_labels_30d": fraud_labels,
        "terminal_tx_count_1d": rng.poisson(40, n).astype(float),
        "terminal_fraud_rate_14d": term_rate,
        "hour_of_day": hour,
        "is_night": (hour < 6).astype(float),
        "is_weekend": (rng.random(n) < 2 / 7).astype(float),
    }
    X = np.column_stack([columns[c] for c in SYNTHETIC_FEATURES]).astype(np.float64)
    return SYNTHETIC_FEATURES, X, y
