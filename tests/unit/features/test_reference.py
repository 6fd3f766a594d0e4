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
    windows_s=(3600, 86400),
    terminal_window_days=(1, 7),
    terminal_label_window_days=(1, 7),
    allowed_lateness_s=3600,
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
    # The rate is among labelled transactions (a and b), not all three counted.
    assert c["terminal_fraud_rate_1d"] == pytest.approx(1 / 2)
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


def test_amount_ratio_and_big_amounts() -> None:
    store = ReferenceFeatureStore(FeatureConfig(windows_s=(3600, 14 * 86400)))
    day = 86_400_000
    a, b, c = rows(store, tx("a", T0, 10), tx("b", T0 + MIN, 20), tx("c", T0 + 2 * MIN, 90))
    assert (a["card_amount_ratio"], a["card_big_amounts_7d"]) == (1.0, 0)  # no history
    assert b["card_amount_ratio"] == 2.0  # 20 against a mean of 10
    assert c["card_amount_ratio"] == 6.0  # 90 against 15
    assert c["card_big_amounts_7d"] == 0  # 90 is the current one, not an earlier one
    (d,) = rows(store, tx("d", T0 + 3 * MIN, 10))
    # Earlier mean 40: c (90) is not above 3 x 40.
    assert (d["card_amount_ratio"], d["card_big_amounts_7d"]) == (0.25, 0)
    rows(store, *[tx(f"g{i}", T0 + (4 + i) * MIN, 10) for i in range(6)])
    (e,) = rows(store, tx("e", T0 + 8 * day, 10))
    # Earlier mean (10 + 20 + 90 + 7 x 10) / 10 = 19: c counts in 14 days, not in 7.
    assert (e["card_big_amounts_7d"], e["card_big_amounts_14d"]) == (0, 1)
    assert e["card_amount_ratio"] == pytest.approx(10 / 19)


def test_terminal_label_features_count_known_outcomes_only(store: ReferenceFeatureStore) -> None:
    day = 86_400_000
    rows(store, tx("a", T0 - 3 * day, card="x"), tx("b", T0 - 2 * day, card="y"),
         tx("c", T0 - 2 * day + MIN, card="z"), tx("u", T0 - day, card="u"))  # fmt: skip
    (none,) = rows(store, tx("n", T0, card="n"))
    assert none["terminal_fraud_rate_7d"] == 0 and none["terminal_fraud_episode_days"] == -1
    assert none["terminal_days_since_fraud"] == 8  # longest label window + 1
    store.record_labels([
        LabelFact("a", "x", "m", T0 - 3 * day, False), LabelFact("b", "y", "m", T0 - 2 * day, True),
        LabelFact("c", "z", "m", T0 - 2 * day + MIN, True),
    ])  # fmt: skip
    (now,) = rows(store, tx("d", T0, card="w"))
    # u (day -1) and n, d (today) have no label yet: 2 frauds among 3 labelled.
    assert now["terminal_fraud_labels_7d"] == 2
    assert now["terminal_fraud_rate_7d"] == pytest.approx(2 / 3)
    assert (now["terminal_tx_count_7d"], now["terminal_fraud_labels_1d"]) == (6, 0)
    assert (now["terminal_days_since_fraud"], now["terminal_fraud_episode_days"]) == (2, 2)
    # The episode starts on the first fraud day (-2): b and c, both frauds.
    assert (now["terminal_fraud_rate_episode"], now["terminal_labelled_episode"]) == (1.0, 2)


def test_a_card_keeps_its_newest_records_up_to_its_cap() -> None:
    """Card testing: 6 transactions a minute apart on a card that keeps 3."""
    import dataclasses

    store = ReferenceFeatureStore(dataclasses.replace(CONFIG, card_history_max=3))
    burst = [tx(f"t{i}", T0 + i * MIN, amount=1.0 + i) for i in range(6)]
    counts = [r["card_tx_count_1h"] for r in rows(store, *burst)]
    # The history as found plus the transaction itself: at most 3 + 1.
    assert counts == [1, 2, 3, 4, 4, 4]
    last = rows(store, tx("t7", T0 + 7 * MIN, amount=8.0))[0]
    assert (last["card_tx_count_1h"], last["card_amount_sum_1h"]) == (4, 5 + 6 + 4 + 8)
    # Older than the oldest record kept (t3): too late, whatever the lateness.
    late = store.update_and_compute([tx("t2b", T0 + 2 * MIN + 30_000)])
    assert store.counters.too_late == 1 and not late.is_duplicate.any()
    # A replay of a dropped record is not counted again, nor is one still kept.
    store.update_and_compute([burst[0], burst[5]])
    assert store.counters.too_late == 2 and store.counters.duplicates == 1
    assert store.counters.inserted == 7
