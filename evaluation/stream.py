"""A labelled transaction stream to evaluate on: simulated, or read from a file.

:class:`LabelledStream` holds the stream as columns, sorted by event time: what
the scorer sees (transaction id, card, terminal, amount, time, location), the
ground truth (``is_fraud``, and the fraud scenario when the source knows it)
and integer codes of cards and terminals for the metrics. Transactions are
built (and validated) batch by batch with :meth:`LabelledStream.transactions`.

When each label *arrives* is not in the stream: :meth:`LabelledStream.label_times`
draws it from a :class:`~fraudstream.producers.labels.LabelDelay`, seeded, so
the same stream and seed always give the same arrivals.

Examples
--------
>>> from fraudstream.producers.simulator import SimulationConfig, simulate
>>> stream = LabelledStream.from_simulation(
...     simulate(SimulationConfig(n_customers=50, n_terminals=100, n_days=2)))
>>> tx = stream.transactions(0, 2)
>>> tx[0].transaction_id, tx[0].card_id == stream.card_names[stream.card[0]]
('sim0-20180401T000000-00000000', True)
>>> arrive = stream.label_times(LabelDelay(early_fraud_prob=0.0))
>>> bool(((arrive - stream.time_ms) == 7 * 86_400_000).all())
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from fraudstream.producers.files import (
    HANDBOOK_MAPPING,
    BadRowError,
    FileFormatError,
    RowParser,
    detect_format,
    display_name,
    is_stdio,
    read_rows,
)
from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import SCENARIO_NAMES, Simulation
from fraudstream.service.schemas import Transaction

#: Column presets of :meth:`LabelledStream.from_file` (``--preset``).
PRESETS: dict[str, dict[str, str]] = {"handbook": HANDBOOK_MAPPING}


@dataclass(frozen=True)
class LabelledStream:
    """Columns of a labelled stream, sorted by event time (ties keep the source's order).

    ``card`` and ``terminal`` are codes into ``card_names`` / ``terminal_names``;
    ``lat``/``lon`` are NaN where unknown; ``scenario`` is 0 for genuine
    transactions and a code of ``scenario_names`` for frauds (``None`` when the
    source does not say).
    """

    source: str
    time_ms: np.ndarray
    card: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    is_fraud: np.ndarray
    card_names: list[str]
    terminal_names: list[str]
    transaction_ids: Callable[[np.ndarray], list[str]] = field(repr=False)
    scenario: np.ndarray | None = None
    scenario_names: dict[int, str] = field(default_factory=dict)
    seed: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.time_ms.shape[0])

    @property
    def day(self) -> np.ndarray:
        """UTC day (days since 1970-01-01) of each transaction."""
        return self.time_ms // 86_400_000

    def transactions(self, lo: int, hi: int) -> list[Transaction]:
        """Validated transactions of rows ``[lo, hi)``, without ground truth."""
        rows = np.arange(lo, hi)
        ids = self.transaction_ids(rows)
        out = []
        for i, tx_id in zip(rows.tolist(), ids, strict=True):
            lat, lon = float(self.lat[i]), float(self.lon[i])
            located = lat == lat and lon == lon  # not NaN
            out.append(
                Transaction.model_validate(
                    {
                        "transaction_id": tx_id,
                        "card_id": self.card_names[self.card[i]],
                        "terminal_id": self.terminal_names[self.terminal[i]],
                        "amount": float(self.amount[i]),
                        "timestamp": int(self.time_ms[i]),
                        "lat": lat if located else None,
                        "lon": lon if located else None,
                    }
                )
            )
        return out

    def label_times(self, delay: LabelDelay) -> np.ndarray:
        """When each transaction's label arrives (epoch ms), drawn with the stream's seed.

        For a simulation this is exactly what ``fraudstream simulate`` writes.
        """
        rng = np.random.default_rng([self.seed, 0x1ABE1])
        delay_ms, _ = delay.sample(rng, self.is_fraud)
        labeled: np.ndarray = self.time_ms + delay_ms
        return labeled

    # -- sources ----------------------------------------------------------------------

    @classmethod
    def from_simulation(cls, sim: Simulation) -> LabelledStream:
        """The simulator's stream (its ids, cards, terminals, locations and scenarios)."""
        width = max(8, len(str(len(sim) - 1)))
        prefix = sim.config.transaction_id_prefix

        def ids(rows: np.ndarray) -> list[str]:
            return [f"{prefix}{r:0{width}d}" for r in rows.tolist()]

        c = sim.config
        extras = f", extras {', '.join(sorted(c.extras))}" if c.extras else ""
        return cls(
            source=(
                f"simulator (seed {c.seed}, {c.n_customers:,} customers, {c.n_terminals:,} "
                f"terminals, {c.n_days} days from {c.start:%Y-%m-%d}{extras})"
            ),
            time_ms=sim.time_ms,
            card=sim.customer,
            terminal=sim.terminal,
            amount=sim.amount,
            lat=sim.terminal_lat[sim.terminal],
            lon=sim.terminal_lon[sim.terminal],
            is_fraud=sim.is_fraud,
            card_names=sim.card_names(),
            terminal_names=sim.terminal_names(),
            transaction_ids=ids,
            scenario=sim.scenario,
            scenario_names=dict(SCENARIO_NAMES),
            seed=c.seed,
        )

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        fmt: str | None = None,
        preset: str | None = None,
        mapping: dict[str, str] | None = None,
        assume_utc: bool | None = None,
        seed: int = 0,
    ) -> LabelledStream:
        """Read a labelled file (JSON Lines or CSV, optionally gzipped; ``-``: standard input).

        Every row needs the Transaction fields and a fraud label (``is_fraud``
        after the column mapping); ``fraud_scenario``, when present, names the
        scenario codes. The ``handbook`` preset reads the Fraud Detection
        Handbook's CSV as it is (``TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID,
        TERMINAL_ID, TX_AMOUNT, TX_FRAUD``, naive UTC datetimes).

        Raises
        ------
        FileFormatError
            A row cannot be read, or has no label (the message names its line).
        """
        path = Path(path)
        name = display_name(path)
        if fmt is None:  # standard input has no name to tell it: a preset's files are CSV
            fmt = "csv" if preset is not None and is_stdio(path) else detect_format(path)
        if preset is not None:
            if preset not in PRESETS:
                raise FileFormatError(f"unknown preset {preset!r}: choose {', '.join(PRESETS)}")
            mapping = {**PRESETS[preset], **(mapping or {})}
            assume_utc = True if assume_utc is None else assume_utc
        parser = RowParser(assume_utc=bool(assume_utc))
        ids: list[str] = []
        cards: list[str] = []
        terminals: list[str] = []
        times: list[int] = []
        amounts: list[float] = []
        lats: list[float] = []
        lons: list[float] = []
        frauds: list[bool] = []
        scenarios: list[int] = []
        has_scenarios = False
        for line, raw in read_rows(path, fmt, mapping=mapping, keep_unmapped=mapping is None):
            if isinstance(raw, BadRowError):
                raise FileFormatError(f"{name}: {raw}")
            try:
                row = parser.parse(line, raw)
            except BadRowError as exc:
                raise FileFormatError(f"{name}: {exc}") from None
            if row.is_fraud is None:
                raise FileFormatError(f"{name}: line {line}: no fraud label (is_fraud)")
            tx = orjson.loads(row.value)
            ids.append(row.transaction_id)
            cards.append(tx["card_id"])
            terminals.append(tx["terminal_id"])
            times.append(row.event_ms)
            amounts.append(float(tx["amount"]))
            lats.append(float(tx.get("lat", float("nan"))))
            lons.append(float(tx.get("lon", float("nan"))))
            frauds.append(row.is_fraud)
            scenario = raw.get("fraud_scenario")
            if scenario is None or scenario == "":
                scenarios.append(int(row.is_fraud))
            else:
                has_scenarios = True
                scenarios.append(int(scenario))
        if not times:
            raise FileFormatError(f"{name}: no transactions")
        order = np.argsort(np.array(times, dtype=np.int64), kind="stable")
        card_names, card = np.unique(np.array(cards, dtype=object), return_inverse=True)
        terminal_names, terminal = np.unique(np.array(terminals, dtype=object), return_inverse=True)
        id_array = np.array(ids, dtype=object)[order]
        scenario_arr = np.array(scenarios, dtype=np.int8)[order]
        fraud_arr = np.array(frauds, dtype=bool)[order]
        return cls(
            source=f"{Path(name).name} ({len(times):,} transactions)",
            time_ms=np.array(times, dtype=np.int64)[order],
            card=card.astype(np.int64)[order],
            terminal=terminal.astype(np.int64)[order],
            amount=np.array(amounts)[order],
            lat=np.array(lats)[order],
            lon=np.array(lons)[order],
            is_fraud=fraud_arr,
            card_names=[str(c) for c in card_names],
            terminal_names=[str(t) for t in terminal_names],
            transaction_ids=lambda rows: id_array[rows].tolist(),
            scenario=scenario_arr if has_scenarios else None,
            scenario_names=dict(SCENARIO_NAMES) if has_scenarios else {},
            seed=seed,
        )
