"""The simulator: reproducible, handbook-like fraud, contract-valid output."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import Simulation, SimulationConfig, simulate
from fraudstream.producers.stream import label_rows, label_simulation, simulation_events
from fraudstream.service.schemas import Label, Transaction

SMALL = SimulationConfig(seed=7, n_customers=300, n_terminals=600, n_days=20)


def _digest(config: SimulationConfig) -> str:
    h = hashlib.sha256()
    for line in simulate(config).to_json_lines():
        h.update(line + b"\n")
    return h.hexdigest()


def test_same_seed_gives_byte_identical_stream() -> None:
    assert _digest(SMALL) == _digest(SMALL)


def test_other_seed_gives_other_stream_and_other_ids() -> None:
    other = SimulationConfig(seed=8, n_customers=300, n_terminals=600, n_days=20)
    assert _digest(SMALL) != _digest(other)
    ids_a = {r["transaction_id"] for r in simulate(SMALL).to_transactions()}
    ids_b = {r["transaction_id"] for r in simulate(other).to_transactions()}
    assert not ids_a & ids_b


@pytest.fixture(scope="module")
def handbook_sim() -> Simulation:
    """Default population over 90 days (about 0.9 M transactions, ~1 s)."""
    return simulate(SimulationConfig(seed=0, n_days=90))


def test_volume_fraud_rate_and_scenario_shares(handbook_sim: Simulation) -> None:
    sim = handbook_sim
    # Handbook: ~9,600 transactions per day for 5,000 customers, ~0.8% fraud.
    assert 9_000 < len(sim) / 90 < 10_200
    assert 0.005 < sim.fraud_rate < 0.012
    counts = sim.scenario_counts()
    frauds = int(sim.is_fraud.sum())
    assert 0.03 < counts["high-amount"] / frauds < 0.15
    assert 0.40 < counts["compromised-terminal"] / frauds < 0.75
    assert 0.20 < counts["compromised-customer"] / frauds < 0.45
    assert counts["card-testing"] == counts["impossible-travel"] == 0


def test_scenario_rules_hold(handbook_sim: Simulation) -> None:
    sim = handbook_sim
    assert (sim.is_fraud == (sim.scenario > 0)).all()
    # Scenario 1 is exactly "amount > 220" among rows no later scenario claimed.
    assert (sim.amount[sim.scenario == 1] > 220).all()
    assert not (sim.amount[sim.scenario == 0] > 220).any()
    # Transactions cluster around noon and stay within the simulated days.
    start = SimulationConfig().start_ms
    seconds_of_day = ((sim.time_ms - start) % 86_400_000) / 1000
    assert abs(np.median(seconds_of_day) - 43_200) < 600
    assert sim.time_ms.min() >= start and sim.time_ms.max() < start + 90 * 86_400_000
    assert (sim.amount >= 0.01).all()


def test_rows_follow_the_transaction_contract() -> None:
    sim = simulate(SMALL)
    rows = list(sim.to_transactions())
    assert len({r["transaction_id"] for r in rows}) == len(rows)
    for row in rows[:2000]:
        tx = Transaction.model_validate_json(orjson.dumps(row))
        assert tx.card_id.startswith("C") and tx.terminal_id.startswith("T")
        assert tx.lat is not None and 50.7 < tx.lat < 51.8
        assert tx.model_extra is not None and set(tx.model_extra) == {"is_fraud", "fraud_scenario"}
    sent = next(sim.to_transactions(ground_truth=False))
    assert "is_fraud" not in sent and "fraud_scenario" not in sent


def test_start_option_moves_event_time() -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    sim = simulate(SimulationConfig(seed=1, n_customers=50, n_terminals=100, n_days=2, start=start))
    first = Transaction.model_validate(next(sim.to_transactions()))
    assert start <= first.timestamp < start + timedelta(days=2)
    assert first.transaction_id.startswith("sim1-20240501T000000-")


def test_extras_add_their_scenarios_without_changing_the_base() -> None:
    base = simulate(SMALL)
    config = SimulationConfig(
        seed=7,
        n_customers=300,
        n_terminals=600,
        n_days=20,
        extras=frozenset({"card-testing", "impossible-travel"}),
    )
    extra = simulate(config)
    counts = extra.scenario_counts()
    assert counts["card-testing"] > 20 * 2 * 3 - 1  # >= 3 per burst, 2 bursts a day
    assert counts["impossible-travel"] == 40
    for name in ("genuine", "high-amount", "compromised-terminal", "compromised-customer"):
        assert counts[name] == base.scenario_counts()[name]
    # Remote terminals are far away (> 400 km) from the 100 km grid.
    remote = extra.terminal[extra.scenario == 5]
    assert (
        np.abs(extra.terminal_lat[remote] - 51.25) * 111
        + np.abs(extra.terminal_lon[remote] - 5.0) * 70
        > 400
    ).all()


def test_account_takeover_moves_amounts_and_terminals() -> None:
    config = SimulationConfig(
        seed=3, n_customers=300, n_terminals=600, n_days=30, extras=frozenset({"account-takeover"})
    )
    counts = simulate(config).scenario_counts()
    assert counts["account-takeover"] > 0


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown extra"):
        SimulationConfig(extras=frozenset({"bogus"}))
    with pytest.raises(ValueError, match="timezone"):
        SimulationConfig(start=datetime(2018, 4, 1))


def test_labels_follow_their_transaction_and_respect_the_delay() -> None:
    sim = simulate(SMALL)
    delay = LabelDelay(delay_s=7 * 86_400, early_fraud_prob=0.5, early_min_s=3_600)
    labels = label_simulation(sim, delay)
    lag = labels.labeled_ms - sim.time_ms
    assert (lag >= 3_600_000).all() and (lag <= 7 * 86_400_000).all()
    assert (lag[~sim.is_fraud] == 7 * 86_400_000).all()
    early_share = (lag[sim.is_fraud] < 7 * 86_400_000).mean()
    assert 0.35 < early_share < 0.65
    rows = list(label_rows(sim, labels, np.arange(len(sim))))
    for row, stamp in zip(rows[:500], sim.time_ms[:500].tolist(), strict=True):
        label = Label.model_validate(row)
        assert label.labeled_at.timestamp() * 1000 > stamp
    assert {r["source"] for r in rows} == {"cleared", "chargeback", "analyst"}


def test_event_stream_interleaves_labels_after_their_transactions() -> None:
    sim = simulate(SimulationConfig(seed=2, n_customers=100, n_terminals=200, n_days=10))
    labels = label_simulation(sim, LabelDelay(delay_s=2 * 86_400))
    seen: dict[str, int] = {}
    last = -1
    n_labels = 0
    for event_ms, is_label, key, value in simulation_events(sim, labels, chunk=97):
        assert event_ms >= last
        last = event_ms
        record = orjson.loads(value)
        assert record["card_id"].encode() == key
        if is_label:
            n_labels += 1
            assert seen[record["transaction_id"]] < event_ms  # never before its transaction
        else:
            assert "is_fraud" not in record and "fraud_scenario" not in record
            seen[record["transaction_id"]] = event_ms
    assert n_labels == len(seen) == len(sim)
