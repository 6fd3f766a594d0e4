"""Semantics of the features, on hand-made examples, with the reference store."""

from __future__ import annotations

import pytest

from fraudstream.service.features.definitions import FeatureConfig, feature_names, haversine_km
from fraudstream.service.features.reference import ReferenceFeatureStore
from fraudstream.service.features.store import LabelFact
from fraudstream.service.schemas import Transaction

T0 = 1_522_540_800_000  # 2018-04-01 00:00 UTC, a Sunday
MIN = 60_000
CONFIG = FeatureConfig(
    windows_s=(3600, 86400), terminal_window_days=(1, 7), allowed_lateness_s=3600
)


def tx(i: str, at_ms: int, amount: float = 10.0, card: str = "c", terminal: str = "m",
       lat: float | None = None, lon: float | None = None) -> Transaction:  # fmt: skip
    return Transaction(transaction_id=i, card_id=card, terminal_id=terminal, amount=amount,
                       timestamp=at_ms, lat=lat, lon=lon)  # fmt: skip


def rows(store: ReferenceFeatureStore, *batch: Transaction) -> list[dict[str, float]]:
    result = store.update_and_compute(list(batch))
    return [dict(zip(result.names, r, strict=True)) for r in result.values.tolist()]


@pytest.fixture
def store() -> ReferenceFeatureStore:
    return ReferenceFeatureStore(CONFIG)


def test_names_match_columns(store: ReferenceFeatureStore) -> None:
    assert store.names == feature_names(CONFIG)
    assert store.update_and_compute([tx("a", T0)]).values.shape == (1, len(store.names))


def test_windows_include_the_current_transaction(store: ReferenceFeatureStore) -> None:
    a, b, c = rows(store, tx("a", T0, 10), tx("b", T0 + 30 * MIN, 20), tx("c", T0 + 61 * MIN, 40))
    assert (a["card_tx_count_1h"], a["card_amount_sum_1h"]) == (1, 10)
    assert (b["card_tx_count_1h"], b["card_amount_mean_1h"]) == (2, 15)
    assert (c["card_tx_count_1h"], c["card_amount_sum_1h"]) == (2, 60)  # a left the hour
    assert (c["card_tx_count_1d"], c["card_amount_sum_1d"]) == (3, 70)


def test_out_of_order_event_sees_only_earlier_timestamps(store: ReferenceFeatureStore) -> None:
    rows(store, tx("a", T0), tx("c", T0 + 20 * MIN))
    (late,) = rows(store, tx("b", T0 + 10 * MIN))
    assert late["card_tx_count_1h"] == 2  # a and itself, not c (later, arrived first)
    assert late["card_seconds_since_prev"] == 600
    (after,) = rows(store, tx("d", T0 + 30 * MIN))
    assert after["card_tx_count_1h"] == 4
    assert after["card_seconds_since_prev"] == 600  # c is the latest earlier event


def test_duplicates_are_flagged_and_never_counted_twice(store: ReferenceFeatureStore) -> None:
    rows(store, tx("a", T0), tx("b", T0 + MIN))
    result = store.update_and_compute([tx("a", T0), tx("b", T0 + MIN), tx("c", T0 + 2 * MIN)])
    assert result.is_duplicate.tolist() == [True, True, False]
    counts = result.values[:, result.names.index("card_tx_count_1h")].tolist()
    assert counts == [1, 2, 3]  # as of each one's own time
    assert store.counters.duplicates == 2
    assert store.counters.inserted == 3
    terminal = result.values[:, result.names.index("terminal_tx_count_1d")].tolist()
    assert terminal == [2, 2, 3]


def test_previous_event_features(store: ReferenceFeatureStore) -> None:
    (first,) = rows(store, tx("a", T0, lat=48.8566, lon=2.3522))
    assert first["card_seconds_since_prev"] == CONFIG.retention_s
    assert first["card_new_terminal"] == 1
    assert (first["card_distance_km_prev"], first["card_speed_kmh_prev"]) == (0, 0)
    (second,) = rows(store, tx("b", T0 + 2 * 3_600_000, terminal="m2", lat=51.5074, lon=-0.1278))
    assert second["card_distance_km_prev"] == pytest.approx(343.5, abs=0.2)
    assert second["card_speed_kmh_prev"] == pytest.approx(second["card_distance_km_prev"] / 2)
    assert second["card_new_terminal"] == 1
    (third,) = rows(store, tx("c", T0 + 3 * 3_600_000, terminal="m"))
    assert third["card_new_terminal"] == 0  # a was at m
    assert third["card_distance_km_prev"] == 0  # no location on c


def test_speed_floors_the_time_at_one_minute(store: ReferenceFeatureStore) -> None:
    rows(store, tx("a", T0, lat=0.0, lon=0.0))
    (b,) = rows(store, tx("b", T0 + 1000, lat=0.0, lon=1.0))
    assert b["card_speed_kmh_prev"] == pytest.approx(haversine_km(0, 0, 0, 1) * 60, rel=1e-4)


def test_zscore_uses_earlier_events_only(store: ReferenceFeatureStore) -> None:
    a, b, c = rows(store, tx("a", T0, 10), tx("b", T0 + MIN, 30), tx("c", T0 + 2 * MIN, 40))
    assert a["card_amount_zscore"] == 0 and b["card_amount_zscore"] == 0  # < 2 earlier
    assert c["card_amount_zscore"] == pytest.approx((40 - 20) / 10)


def test_calendar_features(store: ReferenceFeatureStore) -> None:
    night, noon = rows(store, tx("a", T0 + 3 * 3_600_000), tx("b", T0 + 36 * 3_600_000))
    calendar = ("hour_of_day", "is_night", "is_weekend")
    assert [night[k] for k in calendar] == [3, 1, 1]  # Sunday 03:00
    assert [noon[k] for k in calendar] == [12, 0, 0]  # Monday 12:00
    assert noon["amount"] == 10


def test_labels_feed_card_and_terminal_features(store: ReferenceFeatureStore) -> None:
    rows(store, tx("a", T0), tx("b", T0 + MIN, card="other"))
    fraud = LabelFact("a", "c", "m", T0, True)
    store.record_labels([fraud, LabelFact("b", "other", "m", T0 + MIN, False)])
    store.record_labels([fraud])  # the same label again is not counted twice
    (c,) = rows(store, tx("c", T0 + 2 * MIN))
    assert c["card_fraud_labels_30d"] == 1
    assert (c["terminal_tx_count_1d"], c["terminal_fraud_labels_1d"]) == (3, 1)
    assert c["terminal_fraud_rate_1d"] == pytest.approx(1 / 3)
    (d,) = rows(store, tx("d", T0 + 2 * MIN, card="other"))
    assert d["card_fraud_labels_30d"] == 0


def test_terminal_windows_are_utc_days(store: ReferenceFeatureStore) -> None:
    rows(store, tx("a", T0 - MIN, card="x"))  # the day before
    (b,) = rows(store, tx("b", T0, card="y"))
    assert (b["terminal_tx_count_1d"], b["terminal_tx_count_7d"]) == (1, 2)


def test_too_late_events_are_not_stored(store: ReferenceFeatureStore) -> None:
    rows(store, tx("a", T0 + CONFIG.retention_s * 1000))
    (late,) = rows(store, tx("b", T0))
    assert late["card_tx_count_1d"] == 1  # only itself
    assert store.counters.too_late == 1
    (again,) = rows(store, tx("b", T0))
    assert store.counters.too_late == 2 and store.counters.inserted == 1
    assert again["card_tx_count_1d"] == 1
