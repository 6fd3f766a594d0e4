"""Vectorised card-transaction simulator with known fraud.

A numpy re-implementation of the simulator of the Fraud Detection Handbook
(Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud
Detection*, chapter 3.2), plus opt-in extra scenarios.

The model
---------
- Customers and terminals are placed uniformly on a 100 x 100 grid. One grid
  unit is one kilometre; the grid is mapped onto a lat/lon square whose
  south-west corner is ``origin_lat``/``origin_lon`` (default 50.80 N, 4.30 E,
  near Brussels), so distance and speed features see real-looking coordinates.
- Each customer has a mean amount ``U(5, 100)``, a standard deviation of half
  of it, and a mean number of transactions per day ``U(0, 4)``. A customer
  uses the terminals within ``radius`` (5) of its own position, uniformly.
- Each day a customer makes ``Poisson(mean_tx_per_day)`` transactions at
  ``N(noon, 20000 s)``; times falling outside the day are dropped (as in the
  handbook). Amounts are ``N(mean, std)``; a negative draw is replaced by
  ``U(0, 2 mean)``; amounts are rounded to cents and at least 0.01 (the
  Transaction contract needs ``amount > 0``).

Fraud scenarios (``fraud_scenario`` code, later ones override earlier ones)
---------------------------------------------------------------------------
1. Any amount above ``amount_fraud_threshold`` (220) is fraud.
2. Each day ``compromised_terminals_per_day`` (2) terminals are compromised for
   the next ``terminal_compromise_days`` (28) days: all their transactions are fraud.
3. Each day ``compromised_customers_per_day`` (3) customers are compromised for
   the next ``customer_compromise_days`` (14) days: each of their transactions
   is, with probability ``customer_fraud_fraction`` (1/3), fraud with its
   amount multiplied by 5. (The handbook samples exactly a third per
   compromised group; a Bernoulli draw gives the same share and vectorises.)

Opt-in extras (``extras``), each drawn from its own random stream, so turning
one on never changes the base data:

4. ``card-testing``: each day ``card_testing_per_day`` cards are tested by a
   bot: a burst of 3 + Poisson(7) tiny amounts (0.50-3.00) at one terminal
   anywhere on the grid, about 20 s apart, at any hour. All fraud.
5. ``impossible-travel``: each day ``impossible_travel_per_day`` genuine
   transactions are followed 2-60 minutes later by a fraudulent one with the
   same card at a *remote* terminal, 500-1000 km away (remote terminals get ids
   after the grid's and exist only when this scenario is on).
6. ``account-takeover``: each day ``account_takeover_per_day`` customers are
   taken over for ``account_takeover_days`` (2) days: each of their remaining
   genuine transactions is, with probability 1/2, moved to a random terminal
   anywhere on the grid with its amount multiplied by U(2, 4). Fraud.

Reproducibility: everything derives from ``seed`` through
:class:`numpy.random.SeedSequence` children, one per component, and the
result is sorted with a stable sort, so the same configuration gives a
byte-identical stream.

Examples
--------
>>> sim = simulate(SimulationConfig(seed=1, n_customers=50, n_terminals=100, n_days=3))
>>> len(sim) == len(simulate(SimulationConfig(seed=1, n_customers=50, n_terminals=100,
...                                            n_days=3)))
True
>>> bool((sim.time_ms[1:] >= sim.time_ms[:-1]).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

DAY_MS = 86_400_000
KM_PER_DEG_LAT = 111.32

#: Names of the opt-in extra scenarios and their ``fraud_scenario`` codes.
EXTRA_SCENARIOS: dict[str, int] = {
    "card-testing": 4,
    "impossible-travel": 5,
    "account-takeover": 6,
}
SCENARIO_NAMES: dict[int, str] = {
    0: "genuine",
    1: "high-amount",
    2: "compromised-terminal",
    3: "compromised-customer",
    **{code: name for name, code in EXTRA_SCENARIOS.items()},
}

# Index of each component's child in the SeedSequence: fixed forever, so that
# adding a component never shifts the others' streams.
_STREAM_CUSTOMERS, _STREAM_TERMINALS, _STREAM_TX, _STREAM_S2, _STREAM_S3 = range(5)
_STREAM_S4, _STREAM_S5, _STREAM_S6, _STREAM_MS = range(5, 9)
_N_STREAMS = 12


@dataclass(frozen=True)
class SimulationConfig:
    """Every knob of the simulator; defaults are the handbook's.

    Parameters
    ----------
    seed
        Seed of every random draw (default 0).
    n_customers, n_terminals, n_days
        Population and length (default 5,000, 10,000, 183).
    start
        Midnight (UTC) of day 0 (default 2018-04-01). Transactions cluster
        around ``start + 12 h`` each day.
    radius
        Grid distance within which a customer uses terminals (default 5).
    extras
        Names from :data:`EXTRA_SCENARIOS` to turn on (default none).
    id_prefix
        Prefix of transaction ids; by default ``sim<seed>-<start>-`` so that
        runs with other seeds or start times never collide in the service's
        dedupe.
    """

    seed: int = 0
    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 183
    start: datetime = datetime(2018, 4, 1, tzinfo=UTC)
    radius: float = 5.0
    amount_fraud_threshold: float = 220.0
    compromised_terminals_per_day: int = 2
    terminal_compromise_days: int = 28
    compromised_customers_per_day: int = 3
    customer_compromise_days: int = 14
    customer_fraud_fraction: float = 1 / 3
    extras: frozenset[str] = field(default_factory=frozenset)
    card_testing_per_day: int = 2
    impossible_travel_per_day: int = 2
    n_remote_terminals: int = 100
    account_takeover_per_day: int = 1
    account_takeover_days: int = 2
    currency: str = "EUR"
    origin_lat: float = 50.80
    origin_lon: float = 4.30
    id_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_terminals < 1 or self.n_days < 1:
            raise ValueError("customers, terminals and days must be at least 1")
        if self.start.tzinfo is None:
            raise ValueError("start must carry a timezone (e.g. 2018-04-01T00:00:00Z)")
        if self.radius <= 0:
            raise ValueError("radius must be positive")
        if not 0 <= self.customer_fraud_fraction <= 1:
            raise ValueError("customer_fraud_fraction must be within [0, 1]")
        unknown = set(self.extras) - set(EXTRA_SCENARIOS)
        if unknown:
            raise ValueError(
                f"unknown extra scenario(s) {sorted(unknown)}; "
                f"choose from {sorted(EXTRA_SCENARIOS)}"
            )
        if self.compromised_terminals_per_day > self.n_terminals:
            raise ValueError("more compromised terminals per day than terminals")
        if self.compromised_customers_per_day > self.n_customers:
            raise ValueError("more compromised customers per day than customers")

    @property
    def start_ms(self) -> int:
        """``start`` in epoch milliseconds."""
        return round(self.start.timestamp() * 1000)

    @property
    def transaction_id_prefix(self) -> str:
        """Prefix of transaction ids (see ``id_prefix``)."""
        if self.id_prefix is not None:
            return self.id_prefix
        return f"sim{self.seed}-{self.start.astimezone(UTC):%Y%m%dT%H%M%S}-"


@dataclass(frozen=True)
class Simulation:
    """Columnar result of :func:`simulate`, sorted by event time.

    Row ``i`` is one transaction. Terminal columns are indexed by terminal
    number (``terminal`` values).
    """

    config: SimulationConfig
    time_ms: np.ndarray  # int64 epoch ms
    customer: np.ndarray  # int64 customer number
    terminal: np.ndarray  # int64 terminal number
    amount: np.ndarray  # float64, cents
    is_fraud: np.ndarray  # bool
    scenario: np.ndarray  # int8, see SCENARIO_NAMES
    terminal_lat: np.ndarray
    terminal_lon: np.ndarray
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.time_ms.shape[0])

    @property
    def fraud_rate(self) -> float:
        """Share of fraudulent transactions."""
        return float(self.is_fraud.mean()) if len(self) else 0.0

    def scenario_counts(self) -> dict[str, int]:
        """Number of transactions per scenario name."""
        counts = np.bincount(self.scenario, minlength=len(SCENARIO_NAMES))
        return {SCENARIO_NAMES[i]: int(c) for i, c in enumerate(counts) if i in SCENARIO_NAMES}

    def card_names(self) -> list[str]:
        """Card id of every customer number (``C000123``)."""
        width = max(6, len(str(self.config.n_customers - 1)))
        return [f"C{i:0{width}d}" for i in range(self.config.n_customers)]

    def terminal_names(self) -> list[str]:
        """Terminal id of every terminal number (``T004567``)."""
        n = self.terminal_lat.shape[0]
        width = max(6, len(str(n - 1)))
        return [f"T{i:0{width}d}" for i in range(n)]

    def transaction_id(self, row: int) -> str:
        """Transaction id of a row: prefix + zero-padded row number."""
        width = max(8, len(str(len(self) - 1)))
        return f"{self.config.transaction_id_prefix}{row:0{width}d}"

    def to_transactions(
        self, *, ground_truth: bool = True, chunk: int = 100_000
    ) -> Iterator[dict[str, Any]]:
        """Rows as Transaction-contract dicts, in event-time order.

        Parameters
        ----------
        ground_truth
            Add the simulator's ``is_fraud`` and ``fraud_scenario`` fields (for
            files evaluated offline). Never set it for records sent to the
            ``transactions`` topic.
        chunk
            Rows formatted at a time (bounds memory on big runs).
        """
        for lo in range(0, len(self), chunk):
            yield from self.rows(
                np.arange(lo, min(lo + chunk, len(self))), ground_truth=ground_truth
            )

    def rows(self, index: np.ndarray, *, ground_truth: bool = False) -> Iterator[dict[str, Any]]:
        """Transaction dicts of the rows in ``index`` (any order)."""
        cards, terms = self._names()
        prefix = self.config.transaction_id_prefix
        width = max(8, len(str(len(self) - 1)))
        currency = self.config.currency
        terminal = self.terminal[index]
        columns = zip(
            index.tolist(),
            format_times_ms(self.time_ms[index]),
            self.customer[index].tolist(),
            terminal.tolist(),
            self.amount[index].tolist(),
            self.terminal_lat[terminal].tolist(),
            self.terminal_lon[terminal].tolist(),
            self.is_fraud[index].tolist(),
            self.scenario[index].tolist(),
            strict=True,
        )
        for row, stamp, cust, term, amount, lat, lon, fraud, scen in columns:
            out: dict[str, Any] = {
                "transaction_id": f"{prefix}{row:0{width}d}",
                "timestamp": stamp,
                "card_id": cards[cust],
                "terminal_id": terms[term],
                "amount": amount,
                "currency": currency,
                "lat": lat,
                "lon": lon,
            }
            if ground_truth:
                out["is_fraud"] = fraud
                out["fraud_scenario"] = scen
            yield out

    def _names(self) -> tuple[list[str], list[str]]:
        cached = self._cache.get("names")
        if cached is None:
            cached = self._cache["names"] = (self.card_names(), self.terminal_names())
        return cached

    def to_json_lines(self, *, ground_truth: bool = True) -> Iterator[bytes]:
        """:meth:`to_transactions` encoded as JSON, one ``bytes`` per row (no newline)."""
        dumps = orjson.dumps
        for row in self.to_transactions(ground_truth=ground_truth):
            yield dumps(row)


def format_times_ms(time_ms: np.ndarray) -> list[str]:
    """RFC 3339 UTC strings with millisecond precision, vectorised.

    >>> format_times_ms(np.array([1522540800123]))
    ['2018-04-01T00:00:00.123Z']
    """
    text = np.datetime_as_string(time_ms.astype("datetime64[ms]"), unit="ms")
    return [s + "Z" for s in text.tolist()]


def simulate(config: SimulationConfig) -> Simulation:
    """Generate the transactions of ``config``; see the module docstring for the model."""
    streams = [
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(_N_STREAMS)
    ]
    n_days = config.n_days

    # Profiles. Customer columns: x, y, mean amount, std amount, mean tx/day.
    rng = streams[_STREAM_CUSTOMERS]
    cust_xy = rng.uniform(0, 100, size=(config.n_customers, 2))
    mean_amount = rng.uniform(5, 100, size=config.n_customers)
    std_amount = mean_amount / 2
    mean_tx_per_day = rng.uniform(0, 4, size=config.n_customers)
    term_xy = streams[_STREAM_TERMINALS].uniform(0, 100, size=(config.n_terminals, 2))
    offsets, neighbours = _terminals_within_radius(cust_xy, term_xy, config.radius)

    # Genuine transactions: counts per (customer, day), then one row each.
    rng = streams[_STREAM_TX]
    counts = rng.poisson(np.repeat(mean_tx_per_day[:, None], n_days, axis=1))
    n_terminals_near = np.diff(offsets)
    counts[n_terminals_near == 0] = 0  # a customer with no terminal nearby cannot pay
    flat = counts.ravel()
    customer = np.repeat(np.repeat(np.arange(config.n_customers), n_days), flat)
    day = np.repeat(np.tile(np.arange(n_days), config.n_customers), flat)
    n = customer.shape[0]
    seconds = rng.normal(43_200, 20_000, size=n).astype(np.int64)  # int() truncates like the book
    amount = rng.normal(mean_amount[customer], std_amount[customer])
    fallback = rng.uniform(0, 2 * mean_amount[customer])
    amount = np.where(amount < 0, fallback, amount)
    pick = np.floor(rng.random(n) * n_terminals_near[customer]).astype(np.int64)
    terminal = neighbours[offsets[customer] + pick]
    keep = (seconds > 0) & (seconds < 86_400)
    customer, day, seconds = customer[keep], day[keep], seconds[keep]
    amount, terminal = _cents(amount[keep]), terminal[keep]
    millis = streams[_STREAM_MS].integers(0, 1000, size=customer.shape[0])
    time_ms = config.start_ms + day * DAY_MS + seconds * 1000 + millis

    scenario = np.zeros(customer.shape[0], dtype=np.int8)
    scenario[amount > config.amount_fraud_threshold] = 1

    # Scenario 2: (terminal, day) pairs under compromise.
    rng = streams[_STREAM_S2]
    chosen = [
        rng.choice(config.n_terminals, config.compromised_terminals_per_day, replace=False)
        for _ in range(n_days)
    ]
    hit = _in_windows(terminal, day, chosen, config.terminal_compromise_days, n_days)
    scenario[hit] = 2

    # Scenario 3: a share of the compromised customers' transactions, amount x5.
    rng = streams[_STREAM_S3]
    chosen = [
        rng.choice(config.n_customers, config.compromised_customers_per_day, replace=False)
        for _ in range(n_days)
    ]
    window = np.flatnonzero(
        _in_windows(customer, day, chosen, config.customer_compromise_days, n_days)
    )
    stolen = window[rng.random(window.shape[0]) < config.customer_fraud_fraction]
    amount[stolen] = _cents(amount[stolen] * 5)
    scenario[stolen] = 3

    n_terminals_total = config.n_terminals
    term_lat, term_lon = _grid_to_latlon(config, term_xy)
    extra_rows: list[tuple[np.ndarray, ...]] = []

    if "account-takeover" in config.extras:
        rng = streams[_STREAM_S6]
        chosen = [
            rng.choice(config.n_customers, config.account_takeover_per_day, replace=False)
            for _ in range(n_days)
        ]
        window = np.flatnonzero(
            _in_windows(customer, day, chosen, config.account_takeover_days, n_days)
            & (scenario == 0)
        )
        taken = window[rng.random(window.shape[0]) < 0.5]
        terminal[taken] = rng.integers(0, config.n_terminals, size=taken.shape[0])
        amount[taken] = _cents(amount[taken] * rng.uniform(2, 4, size=taken.shape[0]))
        scenario[taken] = 6

    if "card-testing" in config.extras:
        rng = streams[_STREAM_S4]
        k = config.card_testing_per_day * n_days
        cards = rng.integers(0, config.n_customers, size=k)
        burst_day = np.repeat(np.arange(n_days), config.card_testing_per_day)
        sizes = 3 + rng.poisson(7, size=k)
        first_ms = config.start_ms + burst_day * DAY_MS + rng.integers(0, DAY_MS, size=k)
        where = rng.integers(0, config.n_terminals, size=k)
        rows = int(sizes.sum())
        burst = np.repeat(np.arange(k), sizes)
        gaps = np.round(rng.exponential(20_000, size=rows)).astype(np.int64)
        # Each burst's first gap is dropped so the burst starts at first_ms.
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        gaps[starts] = 0
        elapsed = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts], sizes)
        extra_rows.append(
            (
                first_ms[burst] + elapsed,
                cards[burst],
                where[burst],
                _cents(rng.uniform(0.5, 3.0, size=rows)),
                np.full(rows, 4, dtype=np.int8),
            )
        )

    if "impossible-travel" in config.extras:
        rng = streams[_STREAM_S5]
        remote_xy = _remote_positions(rng, config.n_remote_terminals)
        r_lat, r_lon = _grid_to_latlon(config, remote_xy)
        term_lat = np.concatenate([term_lat, r_lat])
        term_lon = np.concatenate([term_lon, r_lon])
        genuine = np.flatnonzero(scenario == 0)
        if genuine.shape[0]:
            k = min(config.impossible_travel_per_day * n_days, genuine.shape[0])
            base = np.sort(rng.choice(genuine, size=k, replace=False))
            after_ms = rng.integers(2 * 60_000, 60 * 60_000, size=k)
            remote = n_terminals_total + rng.integers(0, config.n_remote_terminals, size=k)
            extra_amount = _cents(mean_amount[customer[base]] * rng.uniform(1, 4, size=k))
            extra_rows.append(
                (
                    time_ms[base] + after_ms,
                    customer[base],
                    remote,
                    extra_amount,
                    np.full(k, 5, dtype=np.int8),
                )
            )

    if extra_rows:
        end_ms = config.start_ms + n_days * DAY_MS - 1
        time_ms = np.concatenate([time_ms] + [np.minimum(r[0], end_ms) for r in extra_rows])
        customer = np.concatenate([customer] + [r[1] for r in extra_rows])
        terminal = np.concatenate([terminal] + [r[2] for r in extra_rows])
        amount = np.concatenate([amount] + [r[3] for r in extra_rows])
        scenario = np.concatenate([scenario] + [r[4] for r in extra_rows])

    order = np.argsort(time_ms, kind="stable")
    return Simulation(
        config=config,
        time_ms=time_ms[order].astype(np.int64),
        customer=customer[order].astype(np.int64),
        terminal=terminal[order].astype(np.int64),
        amount=amount[order],
        is_fraud=scenario[order] > 0,
        scenario=scenario[order],
        terminal_lat=term_lat,
        terminal_lon=term_lon,
    )


def _cents(amount: np.ndarray) -> np.ndarray:
    """Round to cents, at least 0.01 (the contract refuses a zero amount)."""
    return np.maximum(np.round(amount, 2), 0.01)


def _terminals_within_radius(
    cust_xy: np.ndarray, term_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Terminals within ``radius`` of each customer, as CSR (offsets, indices).

    Customers are processed in chunks to bound the distance matrix to a few
    million entries whatever the population.
    """
    r2 = radius * radius
    chunk = max(1, 4_000_000 // max(1, term_xy.shape[0]))
    indices: list[np.ndarray] = []
    per_customer: list[np.ndarray] = []
    for lo in range(0, cust_xy.shape[0], chunk):
        block = cust_xy[lo : lo + chunk]
        d2 = ((block[:, None, :] - term_xy[None, :, :]) ** 2).sum(axis=2)
        rows, cols = np.nonzero(d2 < r2)  # row-major: grouped by customer, terminals ascending
        indices.append(cols)
        per_customer.append(np.bincount(rows, minlength=block.shape[0]))
    counts = np.concatenate(per_customer)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, np.concatenate(indices).astype(np.int64)


def _in_windows(
    entity: np.ndarray, day: np.ndarray, chosen: list[np.ndarray], length_days: int, n_days: int
) -> np.ndarray:
    """Rows whose (entity, day) falls in a window after the entity was chosen.

    The window is ``length_days`` long and starts on the day each entity of ``chosen[d]`` was
    chosen.
    """
    if not chosen or length_days <= 0:
        return np.zeros(entity.shape[0], dtype=bool)
    starts = np.repeat(np.arange(len(chosen)), [c.shape[0] for c in chosen])
    ids = np.concatenate(chosen).astype(np.int64)
    offsets = np.arange(length_days)
    days = (starts[:, None] + offsets[None, :]).ravel()
    keys = (np.repeat(ids, length_days) * n_days + days)[days < n_days]
    return np.isin(entity.astype(np.int64) * n_days + day, np.unique(keys))


def _grid_to_latlon(config: SimulationConfig, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid kilometres to degrees (x east, y north), rounded to ~1 m."""
    lat = config.origin_lat + xy[:, 1] / KM_PER_DEG_LAT
    km_per_deg_lon = KM_PER_DEG_LAT * math.cos(math.radians(config.origin_lat))
    lon = config.origin_lon + xy[:, 0] / km_per_deg_lon
    return np.round(lat, 5), np.round(lon, 5)


def _remote_positions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Grid positions 500-1000 km from the grid's centre, in any direction."""
    angle = rng.uniform(0, 2 * math.pi, size=n)
    dist = rng.uniform(500, 1000, size=n)
    return np.column_stack([50 + dist * np.cos(angle), 50 + dist * np.sin(angle)])
