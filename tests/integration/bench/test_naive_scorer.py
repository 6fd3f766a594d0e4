"""The benchmark's naive scorer against the in-memory reference store, on a real Redis.

The naive loop is the baseline of ``speedup_vs_naive``: it must compute the
service's features. Where the semantics are the same (an event-time-ordered
stream, no labels) its features match the reference; where they differ on
purpose (replays, see :mod:`fraudstream.bench.naive`) the test says so.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import redis

from fraudstream.bench.naive import NaiveScorer
from fraudstream.service.features.definitions import FeatureConfig, no_previous_s
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.schemas import Transaction

START_MS = 1_522_540_800_000  # 2018-04-01 00:00 UTC
#: Short windows so that a few hundred events cross every window boundary; the
#: retention (longest window + lateness) outlasts the 4-day stream, as the default
#: 31 days outlast the benchmark's 30 days (see the differences in bench/naive.py).
WINDOWS: dict[str, Any] = {"windows_s": (600, 3600, 6 * 3600), "terminal_window_days": (1, 2)}
LATENESS_S = 4 * 86_400


def _stream(seed: int, events: int) -> list[Transaction]:
    """Transactions in event-time order over 4 days, distinct times, some without location."""
    rng = random.Random(seed)
    stamps = sorted(rng.sample(range(4 * 24 * 3600), events))
    out = []
    for i, second in enumerate(stamps):
        located = rng.random() < 0.8
        out.append(
            Transaction(
                transaction_id=f"n{seed}-{i}",
                card_id=f"card{rng.randrange(12)}",
                terminal_id=f"term{rng.randrange(8)}",
                amount=round(rng.lognormvariate(3.5, 1.0), 2),
                timestamp=START_MS + second * 1000 + rng.randrange(1000),
                lat=rng.uniform(40, 50) if located else None,
                lon=rng.uniform(-5, 10) if located else None,
            )
        )
    return out


@pytest.fixture
def config(redis_prefix: str) -> FeatureConfig:
    return FeatureConfig(prefix=redis_prefix, allowed_lateness_s=LATENESS_S, **WINDOWS)


def test_naive_features_match_the_reference_store(
    redis_client: redis.Redis, config: FeatureConfig
) -> None:
    stream = _stream(seed=5, events=600)
    naive = NaiveScorer(redis_client, config)
    reference = ReferenceFeatureStore(config)
    want = reference.update_and_compute(stream)
    got = []
    for tx in stream:
        x = naive.features_one(tx)
        assert x is not None
        assert set(x) == set(naive.names), "the naive loop must produce every feature"
        got.append([x[name] for name in reference.names])
    assert naive.names == reference.names
    # Stores keep amounts and locations as float32 (~7 digits, ~1 m), the naive loop
    # as float64: amounts agree to ~1e-6 relative, distances and speeds to ~1e-5.
    column = {name: i for i, name in enumerate(reference.names)}
    located = [column["card_distance_km_prev"], column["card_speed_kmh_prev"]]
    rest = [i for i in range(len(reference.names)) if i not in located]
    got_values = np.array(got)
    np.testing.assert_allclose(got_values[:, rest], want.values[:, rest], rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got_values[:, located], want.values[:, located], rtol=2e-5)
    # The stream crosses every rule: windows expire, cards repeat terminals, locations move.
    values = want.values
    assert (values[:, column["card_seconds_since_prev"]] == no_previous_s(config)).any()
    assert (values[:, column["card_tx_count_600s"]] < values[:, column["card_tx_count_6h"]]).any()
    assert (values[:, column["card_new_terminal"]] == 0).any()
    assert (values[:, column["card_speed_kmh_prev"]] > 0).any()
    assert (values[:, column["card_amount_zscore"]] != 0).any()
    terminal_1d, terminal_2d = column["terminal_tx_count_1d"], column["terminal_tx_count_2d"]
    assert (values[:, terminal_2d] > values[:, terminal_1d]).any()


def test_documented_differences_replays_and_terminals_beyond_the_retention(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """Where the naive loop and the store differ, on purpose.

    The naive loop drops a replay (the store re-scores it as a duplicate), and it remembers a
    card's terminals forever (the store only within the retention).
    """
    config = FeatureConfig(prefix=redis_prefix, allowed_lateness_s=0, **WINDOWS)
    stream = _stream(seed=6, events=50)
    back_at = stream[-1].event_time_ms + 1
    again = Transaction.model_validate(
        {**stream[0].model_dump(), "transaction_id": "back", "timestamp": back_at}
    )
    replayed = [*stream, stream[-1], stream[-2], again]
    naive = NaiveScorer(redis_client, config)
    reference = ReferenceFeatureStore(config)
    want = reference.update_and_compute(replayed)
    got = [naive.features_one(tx) for tx in replayed]
    assert [x is None for x in got] == want.is_duplicate.tolist()
    assert want.is_duplicate.tolist()[-3:] == [True, True, False]
    # `again` returns to stream[0]'s terminal days later, past the 6 h retention.
    assert again.event_time_ms - stream[0].event_time_ms > config.retention_s * 1000
    new_terminal = reference.names.index("card_new_terminal")
    last = got[-1]
    assert last is not None
    assert (last["card_new_terminal"], want.values[-1, new_terminal]) == (0.0, 1.0)
