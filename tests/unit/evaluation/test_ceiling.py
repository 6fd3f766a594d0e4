"""The ceiling's reference scorers: what is visible at scoring time, and card activity so far."""

from __future__ import annotations

import numpy as np
import pytest

from fraudstream.evaluation.ceiling import (
    activity_so_far,
    ceiling_scores,
    terminal_label_released,
    visible_frauds,
)
from fraudstream.evaluation.stream import LabelledStream
from fraudstream.producers.simulator import SCENARIO_NAMES, SimulationConfig, simulate
from fraudstream.service.features.definitions import DAY_MS

HOUR_MS = 3_600_000
TERMINAL = next(c for c, n in SCENARIO_NAMES.items() if n == "compromised-terminal")


@pytest.fixture(scope="module")
def stream() -> LabelledStream:
    return LabelledStream.from_simulation(
        simulate(SimulationConfig(n_customers=300, n_terminals=300, n_days=40, seed=5))
    )


def test_a_terminal_label_counts_only_once_arrived_before_the_batch_and_for_its_terminal() -> None:
    # Terminal 1: frauds at 0 h and 30 h; terminal 2: a fraud at 31 h. Labels 24 h late.
    t = np.array([0, 30, 31]) * HOUR_MS
    term = np.array([1, 1, 2])
    flagged = np.ones(3, dtype=bool)
    labeled = t + 24 * HOUR_MS
    # Scored at 30 h: the label of 0 h arrived at 24 h, before; terminal 2 has none of its own.
    assert terminal_label_released(
        t, term, flagged, labeled, t, window_ms=DAY_MS * 28
    ).tolist() == [
        False,
        True,
        False,
    ]
    # A label arriving exactly when the batch starts is not delivered yet.
    scored = np.array([0, 24, 31]) * HOUR_MS
    assert not terminal_label_released(t, term, flagged, labeled, scored, DAY_MS * 28)[1]
    # Rows not flagged are neither marked nor used.
    assert terminal_label_released(
        t, term, np.array([False, True, True]), labeled, t, DAY_MS * 28
    ).tolist() == [False, False, False]


def test_activity_so_far_equals_counting_each_card_day_by_hand() -> None:
    rng = np.random.default_rng(4)
    n = 400
    time_ms = np.sort(rng.integers(0, 3 * DAY_MS, n))
    card, terminal = rng.integers(0, 12, n), rng.integers(0, 6, n)
    count, distinct = activity_so_far(time_ms, card, terminal)
    day = time_ms // DAY_MS
    for i in range(n):
        same = (card[: i + 1] == card[i]) & (day[: i + 1] == day[i])
        assert count[i] == same.sum()
        assert distinct[i] == np.unique(terminal[: i + 1][same]).shape[0]


def test_visible_frauds_are_the_scenarios_seen_in_the_transaction_and_released_terminals(
    stream: LabelledStream,
) -> None:
    assert stream.scenario is not None
    labeled = stream.time_ms + 7 * DAY_MS
    visible = visible_frauds(stream, labeled)
    fraud = stream.is_fraud
    at_terminal = fraud & (stream.scenario == TERMINAL)
    assert not visible[~fraud].any()
    assert visible[fraud & ~at_terminal].all()
    # A compromised-terminal fraud is visible iff a fraud of its terminal from the last
    # 28 days had its label in before the fraud's hour started (brute force).
    rows = np.flatnonzero(at_terminal)
    assert 0 < visible[rows].sum() < rows.shape[0]
    for i in rows.tolist():
        batch = stream.time_ms[i] // HOUR_MS * HOUR_MS
        same = at_terminal & (stream.terminal == stream.terminal[i])
        recent = same & (stream.time_ms >= stream.time_ms[i] - 28 * DAY_MS)
        assert visible[i] == bool((labeled[recent] < batch).any()), i


def test_the_ceilings_score_visible_frauds_first_the_rest_below(stream: LabelledStream) -> None:
    labeled = stream.time_ms + 7 * DAY_MS
    scores = ceiling_scores(stream, labeled)
    again = ceiling_scores(stream, labeled)
    visible = visible_frauds(stream, labeled)
    for name, s in scores.items():
        assert np.array_equal(s, again[name]), name
        assert (s[visible] == 1.0).all() and (s[~visible] < 1.0).all(), name
        assert (s >= 0.0).all(), name
    # The activity ceiling ranks the others by distinct terminals used that day so far.
    _, distinct = activity_so_far(stream.time_ms, stream.card, stream.terminal)
    rest = np.flatnonzero(~visible)
    more = distinct[rest][:, None] > distinct[rest][None, :100]
    higher = scores["oracle_activity"][rest][:, None] > scores["oracle_activity"][rest][None, :100]
    assert (higher[more]).all()


def test_a_stream_without_scenarios_has_no_ceiling(stream: LabelledStream) -> None:
    import dataclasses

    blind = dataclasses.replace(stream, scenario=None)
    with pytest.raises(ValueError, match="scenarios"):
        visible_frauds(blind, stream.time_ms)
