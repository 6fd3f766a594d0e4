"""The scorer benchmark: throughput, latency and memory of one scorer process, in one run.

``fraudstream bench pipeline`` (see :mod:`fraudstream.bench.cli` and ``bench/README.md``)
calls :func:`run_pipeline_bench`, which

1. starts a real Kafka broker and Redis server on free ports in a temporary folder
   (unless running ones are given);
2. simulates handbook-style transactions (about 60 per card over 30 days, so card
   histories hold full 30-day windows), trains the default model on the first
   rows and publishes it, signed, in the run's Redis prefix, so the scorer uses
   the learnt model and not the rules prior;
3. pre-loads ``events`` transactions (JSON, key = card id) into a topic;
4. measures, each on the same topic, one after the other so they never share
   the CPU:

   * **raw consume**: a plain kafka-python loop that only counts records (the
     ceiling any Python consumer has here);
   * **scorer**: the real :class:`~fraudstream.service.app.Application` scorer loop
     (consumer group, :class:`~fraudstream.service.pipeline.Pipeline`, Redis feature store,
     snapshots, alerts produced and flushed, offsets committed) in its own
     process, from its first processed batch to the last record; the process's
     peak RSS (``VmHWM``) and CPU time are reported, and so are the CPU of Redis
     and of the broker over the same span (:mod:`fraudstream.bench.cpu`); with
     ``scorers=(1, 2)`` the same again with two processes in one group;
   * **peer** (``peer="quix"``): the same job as a Quix Streams application
     (:mod:`fraudstream.bench.peer_quix`) in its own process, timed the same way;
   * **naive**: a per-event loop on fewer events (auto-commit, one Redis call per
     feature, River ``predict_proba_one``, one produce and flush per event);
   * **latency**: a fresh topic fed at a fixed offered rate (2,000 tx/s) with a
     scorer publishing every decision; latency is the score record's broker
     append time (``LogAppendTime`` on the scores topic) minus the time the
     transaction was sent (its producer lingers up to 5 ms), and, the
     service's own, minus the transaction's append time (``LogAppendTime`` on
     its topic too);

5. reads ``MEMORY USAGE`` of a sample of card, terminal and snapshot keys.

Throughput is measured between the end of the first batch and the end of the
last one, so client start-up and the consumer-group join are not counted.

The scorer runs as ``python -m fraudstream.bench.pipeline <spec.json>``: a child process
whose last stdout line is a JSON result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from pydantic import SecretStr

from fraudstream.bench.cpu import CpuSampler
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import (
    DeliveryTracker,
    KafkaConnection,
    check_reachable,
    ensure_topics,
    make_consumer,
    make_producer,
)
from fraudstream.service.kafka.clients import KafkaTarget
from fraudstream.service.kafka.protocols import Consumer, TopicPartition
from fraudstream.service.redis_client import redis_client
from fraudstream.service.settings import Settings

log = logging.getLogger(__name__)

#: Offered rate of the latency measurement (the design target is stated at 2,000 tx/s).
LATENCY_RATE_PER_S = 2_000
#: Targets of DESIGN.md, shown next to the measured values.
TARGETS: dict[str, tuple[str, float]] = {
    "scorer_tx_per_s": (">=", 50_000.0),
    "speedup_vs_naive": (">=", 20.0),
    "scorer_vs_peer": (">=", 1.5),
    "latency_p50_ms": ("<=", 5.0),
    "latency_p99_ms": ("<=", 25.0),
    "redis_bytes_per_card": ("<=", 2048.0),
    "snapshot_bytes_per_tx": ("<=", 300.0),
    "scorer_rss_mb": ("<=", 300.0),
}
#: Least share of the events a scorer-group span must cover for its rate to count.
MIN_TIMED_SHARE = 0.25
_TX_PER_CARD_DAY = 2.0  # the handbook's mean of U(0, 4) transactions per customer and day
_SIM_DAYS = 30


# -- pure helpers ------------------------------------------------------------------


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float]) -> list[float]:
    """Percentiles ``qs`` (0-100) of ``values`` (linear interpolation); NaN when empty.

    Examples
    --------
    >>> percentiles([1.0, 2.0, 3.0, 4.0, 5.0], [50, 100])
    [3.0, 5.0]
    >>> percentiles([], [50])
    [nan]
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return [math.nan for _ in qs]
    return [float(v) for v in np.percentile(data, list(qs))]


def rate_per_s(count: int, seconds: float) -> float:
    """``count / seconds``, NaN when no time was measured.

    >>> rate_per_s(1000, 0.5), rate_per_s(10, 0.0)
    (2000.0, nan)
    """
    return count / seconds if seconds > 0 else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is 0 or NaN.

    >>> ratio(50.0, 2.0), ratio(1.0, 0.0)
    (25.0, nan)
    """
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def meets(name: str, value: float) -> str:
    """``"yes"``/``"no"`` against the design target of ``name``, ``""`` without one.

    >>> meets("latency_p99_ms", 12.0), meets("scorer_tx_per_s", 1000.0), meets("events", 1.0)
    ('yes', 'no', '')
    """
    if name not in TARGETS or value is None or math.isnan(value):
        return ""
    op, target = TARGETS[name]
    ok = value >= target if op == ">=" else value <= target
    return "yes" if ok else "no"


def _fmt(value: Any) -> str:
    """A number for the summary table.

    >>> _fmt(51234.567), _fmt(3.14159), _fmt(0.01234), _fmt(float("nan")), _fmt(None)
    ('51,235', '3.14', '0.0123', 'n/a', 'n/a')
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


#: "times", as the README writes ratios.
_X = "\N{MULTIPLICATION SIGN}"

#: Rows of the summary table: key, label, unit.
_ROWS: tuple[tuple[str, str, str], ...] = (
    ("scorer_tx_per_s", "scorer throughput (real Application loop)", "tx/s"),
    ("peer_tx_per_s", "Quix Streams peer (same topic, same run)", "tx/s"),
    ("scorer_vs_peer", "scorer / peer", "x"),
    ("naive_tx_per_s", "naive per-event loop", "tx/s"),
    ("speedup_vs_naive", "scorer / naive", "x"),
    ("raw_consume_tx_per_s", "raw consume loop (kafka-python, the scorer's decoding)", "tx/s"),
    ("scorer_vs_raw_consume", "scorer / raw consume", "x"),
    ("latency_p50_ms", "latency p50 at offered rate", "ms"),
    ("latency_p99_ms", "latency p99 at offered rate", "ms"),
    ("latency_max_ms", "latency max at offered rate", "ms"),
    ("latency_kafka_p50_ms", "latency p50, transaction appended → decision appended", "ms"),
    ("latency_kafka_p99_ms", "latency p99, transaction appended → decision appended", "ms"),
    ("latency_floor_p50_ms", "latency p50 of a consume → produce loop doing nothing else", "ms"),
    ("latency_floor_p99_ms", "latency p99 of a consume → produce loop doing nothing else", "ms"),
    ("latency_achieved_tx_per_s", "offered rate achieved", "tx/s"),
    ("redis_bytes_per_card", "Redis MEMORY USAGE per card key", "bytes"),
    ("redis_card_records_mean", "transactions held per card key", "records"),
    ("redis_bytes_per_terminal", "Redis MEMORY USAGE per terminal key", "bytes"),
    ("snapshot_bytes_per_tx", "Redis MEMORY USAGE per snapshot key", "bytes"),
    ("snapshot_payload_bytes", "snapshot value length", "bytes"),
    ("scorer_rss_mb", "scorer peak RSS (VmHWM)", "MB"),
    ("scorer_cpu_us_per_tx", "scorer process CPU per transaction", "µs"),
    ("redis_cpu_us_per_tx", "Redis server CPU per transaction (scorer run)", "µs"),
    ("broker_cpu_us_per_tx", "Kafka broker CPU per transaction (scorer run)", "µs"),
    ("peer_rss_mb", "peer peak RSS (VmHWM)", "MB"),
    ("peer_cpu_us_per_tx", "peer process CPU per transaction", "µs"),
    ("peer_broker_cpu_us_per_tx", "Kafka broker CPU per transaction (peer run)", "µs"),
    ("scorer_alert_share", "share of transactions alerted", ""),
)


#: Rows of the Redis Cluster run (``--redis-cluster``).
_CLUSTER_ROWS: tuple[tuple[str, str, str], ...] = (
    (
        "cluster_scorer_tx_per_s",
        "scorer on a 3-master Redis Cluster (same topic, same run)",
        "tx/s",
    ),
    ("cluster_vs_single", "cluster / single Redis node", "x"),
    ("cluster_scorer_cpu_us_per_tx", "scorer process CPU per transaction (cluster run)", "µs"),
    ("cluster_redis_cpu_us_per_tx", "Redis CPU per transaction, 6 cluster nodes", "µs"),
    ("cluster_redis_masters_cpu_us_per_tx", "Redis CPU per transaction, the 3 masters", "µs"),
)


def _scaling_rows(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for every scorer count measured after the first, and its ratio to the first.

    >>> for row in _scaling_rows({"scorer_runs": [{"scorers": 1}, {"scorers": 2}]}):
    ...     print(row)
    ('scorers_2_tx_per_s', '2 scorer processes, one group (aggregate)', 'tx/s')
    ('scorers_2_vs_1', '2 scorers / 1 scorer', 'x')
    """
    runs = result.get("scorer_runs") or []
    rows: list[tuple[str, str, str]] = []
    for run in runs[1:]:
        n, first = run["scorers"], runs[0]["scorers"]
        rows.append(
            (f"scorers_{n}_tx_per_s", f"{n} scorer processes, one group (aggregate)", "tx/s")
        )
        rows.append(
            (
                f"scorers_{n}_vs_{first}",
                f"{n} scorers / {first} scorer{'s' if first > 1 else ''}",
                "x",
            )
        )
    return rows


def format_summary(result: Mapping[str, Any], profile_lines: int = 60) -> str:
    """The Markdown report of a run: table of figures with targets, then the profile top.

    Examples
    --------
    >>> text = format_summary({"events": 1000, "naive_events": 100, "scorer_tx_per_s": 60000.0,
    ...                        "naive_tx_per_s": 1000.0, "speedup_vs_naive": 60.0})
    >>> "| scorer throughput (real Application loop) | 60,000 tx/s | >= 50,000 | yes |" in text
    True
    >>> "naive per-event loop" in text and "100 events" in text
    True
    """
    out = [
        "# fraudstream pipeline benchmark",
        "",
        f"Run at {result.get('started_at', '?')} on {result.get('host', '?')} "
        f"({result.get('cpus', '?')} CPUs, shared): {_fmt(result.get('events'))} events "
        f"pre-loaded in {result.get('partitions', '?')} partitions; naive loop on the first "
        f"{_fmt(result.get('naive_events'))} events; latency at "
        f"{_fmt(result.get('latency_offered_tx_per_s'))} tx/s offered for "
        f"{_fmt(result.get('latency_seconds'))} s. The scorer scored with: "
        f"{result.get('scorer_kind', '?')!s} (version {result.get('model_version', '?')}), "
        f"batch size {result.get('max_batch_size', '?')}, "
        f"{result.get('scorer_processes', 1)} scorer process(es) for the headline figure.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
    ]
    for key, label, unit in (
        *_ROWS[:1],
        *_scaling_rows(result),
        *(_CLUSTER_ROWS if "cluster_scorer_tx_per_s" in result else ()),
        *_ROWS[1:],
    ):
        if key not in result:
            continue
        value = result[key]
        target = ""
        if key in TARGETS:
            op, goal = TARGETS[key]
            target = f"{op} {_fmt(goal)}"
        shown = f"{_fmt(value)} {unit}".strip()
        if key == "naive_tx_per_s":
            shown += f" (on {_fmt(result.get('naive_events'))} events)"
        out.append(f"| {label} | {shown} | {target} | {meets(key, value)} |")
    notes = result.get("notes") or []
    if notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    if capacity_model(result):
        out += [
            "",
            "## Capacity model (from this run's CPU per transaction, each unit at 60 %)",
            "",
            format_capacity_table(result).rstrip("\n"),
        ]
    profile = result.get("profile_text")
    if profile:
        lines = profile.splitlines()
        out += [
            "",
            f"## Profile of the scorer process (pyinstrument, top {profile_lines} lines)",
            "",
            "```",
            *lines[:profile_lines],
            "```",
        ]
    flat = result.get("profile_flat_text")
    if flat:
        out += ["", "## Self time by function (top 25)", "", "```", *flat.splitlines()[:30], "```"]
    return "\n".join(out) + "\n"


def format_readme_table(result: Mapping[str, Any]) -> str:
    """The README's benchmark table (measure, result, target, met) from one run's result.

    Examples
    --------
    >>> table = format_readme_table({"scorer_tx_per_s": 30000.0, "peer_tx_per_s": 20000.0,
    ...                              "scorer_vs_peer": 1.5})
    >>> print(table.splitlines()[3].replace("per-card windows in RocksDB, ", ""))
    | Quix Streams 3.28 peer (River score, alerts) | 20,000 tx/s |  |  |
    >>> table.splitlines()[4].startswith("| scorer / peer | **1.50")
    True
    """

    def verdict(key: str) -> str:
        return {"yes": "met", "no": "not met", "": ""}[meets(key, result.get(key, math.nan))]

    def get(key: str) -> Any:
        return result.get(key, math.nan)

    rows = [
        (
            "scorer throughput",
            f"**{_fmt(get('scorer_tx_per_s'))} tx/s**",
            "≥ 50,000",
            verdict("scorer_tx_per_s"),
        ),
    ]
    if "peer_tx_per_s" in result:
        rows += [
            (
                "Quix Streams 3.28 peer (per-card windows in RocksDB, River score, alerts)",
                f"{_fmt(get('peer_tx_per_s'))} tx/s",
                "",
                "",
            ),
            (
                "scorer / peer",
                f"**{_fmt(get('scorer_vs_peer'))}{_X}**",
                f"≥ 1.5{_X}",
                verdict("scorer_vs_peer"),
            ),
        ]
    for key, label, _ in _scaling_rows(result):
        unit = " tx/s" if key.endswith("tx_per_s") else _X
        rows.append((label, f"{_fmt(get(key))}{unit}", "", ""))
    if "naive_tx_per_s" in result:
        rows += [
            (
                "naive per-event loop (per-feature Redis calls, produce+flush per event, "
                "auto-commit)",
                f"{_fmt(get('naive_tx_per_s'))} tx/s",
                "",
                "",
            ),
            (
                "scorer / naive",
                f"**{_fmt(get('speedup_vs_naive'))}{_X}**",
                f"≥ 20{_X}",
                verdict("speedup_vs_naive"),
            ),
        ]
    if "raw_consume_tx_per_s" in result:
        rows.append(
            (
                "raw kafka-python consume loop (crc32c, the scorer's record decoding)",
                f"{_fmt(get('raw_consume_tx_per_s'))} tx/s (scorer = "
                f"{_fmt(get('scorer_vs_raw_consume'))}{_X})",
                "",
                "",
            )
        )
    rows += _latency_rows(result, verdict, get)
    for key, label, target in (
        ("redis_bytes_per_card", "Redis per active card", "≤ 2 KB"),
        ("snapshot_bytes_per_tx", "feature snapshot per transaction (in Redis)", "≤ 300 B"),
    ):
        if key in result:
            rows.append((label, f"**{_fmt(get(key))} B**", target, verdict(key)))
    if "scorer_rss_mb" in result:
        rows.append(
            (
                "scorer peak RSS",
                f"**{_fmt(get('scorer_rss_mb'))} MB**",
                "≤ 300 MB",
                verdict("scorer_rss_mb"),
            )
        )
    cpu = [
        f"{name} {_fmt(get(key))} µs"
        for key, name in (
            ("scorer_cpu_us_per_tx", "scorer"),
            ("redis_cpu_us_per_tx", "Redis"),
            ("broker_cpu_us_per_tx", "broker"),
            ("peer_cpu_us_per_tx", "peer"),
        )
        if key in result
    ]
    if cpu:
        rows.append(("CPU per transaction", ", ".join(cpu), "", ""))
    out = ["| measure | result | target | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out) + "\n"


#: Rates the capacity model is worked out for (tx/s): a mid-size issuer, a
#: global card network's stated peak, and a million.
CAPACITY_RATES = (10_000, 65_000, 1_000_000)


def _latency_rows(
    result: Mapping[str, Any], verdict: Callable[[str], str], get: Callable[[str], Any]
) -> list[tuple[str, str, str, str]]:
    """The README table's latency rows: from the send (the target's), and Kafka to Kafka."""
    rows: list[tuple[str, str, str, str]] = []
    if "latency_p50_ms" in result:
        ok = verdict("latency_p50_ms") == verdict("latency_p99_ms") == "met"
        rows.append(
            (
                f"latency event-in → decision-out at "
                f"{_fmt(get('latency_offered_tx_per_s'))} tx/s offered (from the producer's "
                "send, its 5 ms linger included)",
                f"p50 **{_fmt(get('latency_p50_ms'))} ms**, p99 "
                f"**{_fmt(get('latency_p99_ms'))} ms**",
                "p50 ≤ 5, p99 ≤ 25",
                "met" if ok else "not met",
            )
        )
    if "latency_kafka_p50_ms" in result:
        rows.append(
            (
                "the same, from the transaction's append to the decision's (the service's own)",
                f"p50 {_fmt(get('latency_kafka_p50_ms'))} ms, p99 "
                f"{_fmt(get('latency_kafka_p99_ms'))} ms",
                "",
                "",
            )
        )
    if "latency_floor_p50_ms" in result:
        rows.append(
            (
                "the floor: a kafka-python loop that only consumes and produces, same rate "
                "(from the send; from the append)",
                f"p50 {_fmt(get('latency_floor_p50_ms'))} ms, p99 "
                f"{_fmt(get('latency_floor_p99_ms'))} ms; p50 "
                f"{_fmt(get('latency_floor_kafka_p50_ms'))} ms, p99 "
                f"{_fmt(get('latency_floor_kafka_p99_ms'))} ms",
                "",
                "",
            )
        )
    return rows


def capacity_model(
    result: Mapping[str, Any], rates: Sequence[int] = CAPACITY_RATES, utilisation: float = 0.6
) -> list[dict[str, Any]]:
    """Cores, scorer processes, partitions and Redis shards for each rate.

    From one run's CPU per transaction (scorer, Redis, broker).
    Each resource is planned at ``utilisation`` of a core (head room for bursts, a
    rebalance, a failed node's load). A scorer process uses about one core (one
    Python interpreter), a Redis shard one core (one thread runs the scripts);
    partitions are twice the scorer processes (a partition feeds one scorer at a
    time; twice leaves room to add scorers without repartitioning), at least 6.
    ``bound`` names what runs out first on one unit: a scorer process or a
    Redis shard (``per_scorer_tx_per_s``, ``per_shard_tx_per_s``).

    Examples
    --------
    >>> rows = capacity_model({"scorer_cpu_us_per_tx": 30.0, "redis_cpu_us_per_tx": 20.0,
    ...                        "broker_cpu_us_per_tx": 10.0}, rates=[10_000, 65_000])
    >>> [(r["scorers"], r["partitions"], r["redis_shards"], r["broker_cores"]) for r in rows]
    [(1, 6, 1, 0.17), (4, 8, 3, 1.08)]
    >>> rows[0]["per_scorer_tx_per_s"], rows[0]["per_shard_tx_per_s"]
    (20000, 30000)

    A run that timed too few events has no CPU per transaction, and no model:

    >>> capacity_model({"scorer_cpu_us_per_tx": math.nan, "redis_cpu_us_per_tx": 20.0})
    []
    """
    scorer_us = float(result.get("scorer_cpu_us_per_tx") or math.nan)
    redis_us = float(result.get("redis_cpu_us_per_tx") or math.nan)
    broker_us = result.get("broker_cpu_us_per_tx")
    broker_us = float(broker_us) if broker_us is not None else math.nan
    if not (math.isfinite(scorer_us) and math.isfinite(redis_us)):
        return []
    per_scorer = utilisation * 1e6 / scorer_us
    per_shard = utilisation * 1e6 / redis_us
    rows = []
    for rate in rates:
        scorers = max(1, math.ceil(rate / per_scorer))
        shards = max(1, math.ceil(rate / per_shard))
        broker = rate * broker_us / 1e6 / utilisation
        rows.append(
            {
                "tx_per_s": rate,
                "scorer_cores": round(rate * scorer_us / 1e6 / utilisation, 2),
                "scorers": scorers,
                "partitions": max(6, 2 * scorers),
                "redis_cores": round(rate * redis_us / 1e6 / utilisation, 2),
                "redis_shards": shards,
                "broker_cores": round(broker, 2) if math.isfinite(broker) else None,
                "per_scorer_tx_per_s": round(per_scorer),
                "per_shard_tx_per_s": round(per_shard),
                "bound": "Redis shard" if per_shard < per_scorer else "scorer process",
            }
        )
    return rows


def format_capacity_table(result: Mapping[str, Any], utilisation: float = 0.6) -> str:
    """The capacity model of :func:`capacity_model` as a Markdown table.

    >>> print(format_capacity_table({"scorer_cpu_us_per_tx": 30.0, "redis_cpu_us_per_tx": 20.0,
    ...                              "broker_cpu_us_per_tx": None}).splitlines()[2])
    | 10,000 tx/s | 0.5 | 1 | 6 | 0.33 | 1 | ? |
    """
    out = [
        "| rate | scorer cores | scorer processes | partitions | Redis cores "
        "| Redis shards | broker cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in capacity_model(result, utilisation=utilisation):
        broker = "?" if row["broker_cores"] is None else _fmt(row["broker_cores"])
        out.append(
            f"| {_fmt(row['tx_per_s'])} tx/s | {_fmt(row['scorer_cores'])} | {row['scorers']} "
            f"| {row['partitions']} | {_fmt(row['redis_cores'])} | {row['redis_shards']} "
            f"| {broker} |"
        )
    return "\n".join(out) + "\n"


def flat_without_self_rows(flat: str) -> str:
    r"""Pyinstrument's flat view minus its synthetic ``[self]`` rows.

    In flat mode pyinstrument merges the ``[self]`` pseudo-frames of many files
    under one file name, which reads as a hot spot that is not one.

    >>> flat_without_self_rows("1.0 [self]  kafka/admin/client.py\n0.5 f  a.py:1")
    '0.5 f  a.py:1'
    """
    return "\n".join(line for line in flat.splitlines() if "[self]" not in line)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (``VmHWM``, else ``ru_maxrss``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- configuration -----------------------------------------------------------------


@dataclass(frozen=True)
class PipelineBenchConfig:
    """Options of ``fraudstream bench pipeline``.

    Parameters
    ----------
    events
        Transactions pre-loaded and scored (default 200,000).
    naive_events
        Transactions the naive loop processes (default 10,000: it is slow).
    latency_seconds
        Length of the offered-load phase (default 20).
    latency_rate
        Offered rate in tx/s (default 2,000).
    partitions
        Partitions of the benchmark topics (default 6).
    bootstrap_servers, redis_url
        Running servers to use; ``None`` starts them on free ports.
    profile
        Run the scorer a second time under pyinstrument and keep its profile.
    profile_events
        Events of the profiled run (default: ``events``).
    seed
        Simulation seed.
    cache_dir
        Where the Kafka jars are cached.
    results_dir
        Where the results go.
    scorers
        Scorer process counts measured one after the other, each in one consumer
        group on the same topic (default ``(1,)``); the first is the headline figure.
    peer
        ``"quix"``: also run the Quix Streams peer on the same topic; ``None``: no peer.
    redis_cluster
        Also run the first scorer count on a local Redis Cluster started for the run.
    """

    events: int = 200_000
    naive_events: int = 10_000
    latency_seconds: float = 20.0
    latency_rate: int = LATENCY_RATE_PER_S
    partitions: int = 6
    bootstrap_servers: str | None = None
    redis_url: str | None = None
    profile: bool = True
    profile_events: int | None = None
    seed: int = 0
    cache_dir: Path = Path(".cache")
    results_dir: Path = Path("bench/results")
    scorers: tuple[int, ...] = (1,)
    peer: str | None = None
    redis_cluster: bool = False


@dataclass
class _Run:
    """Names of one benchmark run (unique, so runs against shared servers never mix)."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def name(self, base: str) -> str:
        return f"bench-{self.run_id}-{base}"

    @property
    def prefix(self) -> str:
        return f"bench{self.run_id}"


# -- servers -----------------------------------------------------------------------


@contextlib.contextmanager
def bench_servers(
    bootstrap_servers: str | None, redis_url: str | None, cache_dir: Path
) -> Iterator[tuple[str, str]]:
    """``(bootstrap_servers, redis_url)``: the given ones, or fresh servers stopped on exit."""
    from fraudstream.devstack import kafka_given_or_started, redis_given_or_started

    with (
        redis_given_or_started(redis_url) as redis_address,
        kafka_given_or_started(bootstrap_servers, cache_dir=cache_dir, heap_mb=768) as bootstrap,
    ):
        yield bootstrap, redis_address


# -- data --------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchData:
    """Simulated transactions as Kafka records, plus what training needs."""

    keys: list[bytes]
    values: list[bytes]
    is_fraud: np.ndarray
    n_cards: int


def simulate_records(count: int, seed: int = 0) -> BenchData:
    """``count`` handbook-style transactions in event-time order, as (key, JSON) records.

    The population is sized so that ``count`` transactions span about 30 days
    (about 60 per card): card histories then hold full 30-day windows.
    """
    from fraudstream.producers.simulator import SimulationConfig, simulate

    n_customers = max(20, math.ceil(1.15 * count / (_TX_PER_CARD_DAY * _SIM_DAYS)))
    days = _SIM_DAYS
    while True:
        sim = simulate(
            SimulationConfig(
                seed=seed,
                n_customers=n_customers,
                n_terminals=max(100, 2 * n_customers),
                n_days=days,
                id_prefix=f"b{seed}-",
            )
        )
        if len(sim) >= count:
            break
        days += 10
    index = np.arange(count)
    keys: list[bytes] = []
    values: list[bytes] = []
    dumps = orjson.dumps
    for row in sim.rows(index):
        keys.append(row["card_id"].encode())
        values.append(dumps(row))
    return BenchData(keys, values, sim.is_fraud[:count].copy(), n_customers)


def preload(
    kafka: KafkaTarget, topic: str, keys: Sequence[bytes], values: Sequence[bytes]
) -> float:
    """Produce every record (delivery confirmed); returns the produce rate in records/s."""
    producer = make_producer(kafka, client_id="fraudstream-bench-load", linger_ms=20)
    try:
        tracker = DeliveryTracker(producer)
        started = time.perf_counter()
        for key, value in zip(keys, values, strict=True):
            tracker.send(topic, value, key=key)
            if tracker.pending >= 50_000:
                tracker.flush(timeout_s=120)
        tracker.flush(timeout_s=120)
        return rate_per_s(len(values), time.perf_counter() - started)
    finally:
        producer.close(timeout=30)


def train_and_publish(
    redis_client: redis.Redis,
    settings_values: Mapping[str, Any],
    data: BenchData,
    rows: int,
) -> tuple[int, int, int]:
    """Train the default model on the first ``rows`` transactions and publish it signed.

    Features come from a scratch Redis prefix, so the scorer's state is untouched.
    Returns ``(version, labels, frauds)``.
    """
    from fraudstream.service.features.definitions import FeatureConfig
    from fraudstream.service.features.redis_store import RedisFeatureStore
    from fraudstream.service.model import FraudModel
    from fraudstream.service.registry import ModelRegistry
    from fraudstream.service.rules import RulesPrior
    from fraudstream.service.schemas import TRANSACTION_BATCH
    from fraudstream.service.serving import learn_labelled
    from fraudstream.service.settings import Settings

    settings = Settings(
        _env_file=None,
        **{**settings_values, "redis_prefix": settings_values["redis_prefix"] + "train"},
    )
    store = RedisFeatureStore(redis_client, FeatureConfig.from_settings(settings))
    model = FraudModel(settings.model, store.names)
    prior = RulesPrior(store.names)
    for lo in range(0, rows, 2000):
        hi = min(rows, lo + 2000)
        txs = TRANSACTION_BATCH.validate_json(b"[" + b",".join(data.values[lo:hi]) + b"]")
        batch = store.update_and_compute(txs)
        # As the learner learns a batch of labels (recording its recent quality first).
        learn_labelled(model, prior, batch.values, np.asarray(data.is_fraud[lo:hi], dtype=bool))
    registry = ModelRegistry(
        redis_client,
        settings_values["redis_prefix"],
        SecretStr(str(settings_values["model_signing_key"])),
    )
    version = registry.publish(model, extra={"trained_by": "fraudstream bench"})
    _delete_prefix(redis_client, settings.redis_prefix)
    return version, model.labels_learnt, model.frauds_learnt


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


# -- raw consume -------------------------------------------------------------------


def _assign_all(consumer: Consumer, topic: str) -> None:
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)


def measure_raw_consume(
    kafka: KafkaTarget, topic: str, expected: int, max_records: int, batch_decoding: bool
) -> dict[str, float]:
    """A plain consumer loop that only counts records: Kafka + kafka-python's ceiling.

    Its records are decoded as the scorer's are (``batch_decoding``, the
    ``kafka_batch_decoding`` setting).
    """
    consumer = make_consumer(
        kafka,
        client_id="fraudstream-bench-raw",
        group_id=None,
        max_poll_records=max_records,
        batch_decoding=batch_decoding,
    )
    try:
        _assign_all(consumer, topic)
        count = 0
        first_at = 0.0
        first_count = 0
        deadline = time.monotonic() + 300
        while count < expected and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=200, max_records=max_records)
            got = sum(len(b) for b in batches.values())
            if got and not first_count:
                first_at, first_count = time.perf_counter(), got
            count += got
        seconds = time.perf_counter() - first_at
        return {
            "raw_consume_tx_per_s": rate_per_s(count - first_count, seconds),
            "raw_consume_records": count,
        }
    finally:
        consumer.close()


# -- the scorer process ------------------------------------------------------------


def settings_values(settings: Any) -> dict[str, Any]:
    """Every field of a :class:`~fraudstream.service.settings.Settings`, secrets in clear."""
    from fraudstream.service.supervisor import settings_payload

    values: dict[str, Any] = json.loads(settings_payload(settings))
    return values


def run_child(
    module: str,
    spec: Mapping[str, Any],
    *,
    what: str,
    timeout_s: float = 600.0,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run ``python -m <module> <spec.json>`` and return the JSON of its last stdout line.

    The child is sent SIGTERM when ``stop`` is set, killed after ``timeout_s``.
    """
    with tempfile.TemporaryDirectory(prefix="fraudstream-bench-child-") as tmp:
        spec_path, out_path, err_path = (Path(tmp) / n for n in ("spec.json", "out", "err"))
        spec_path.write_text(json.dumps(spec))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            child = subprocess.Popen(
                [sys.executable, "-m", module, str(spec_path)],
                stdout=out,
                stderr=err,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            deadline = time.monotonic() + timeout_s
            while child.poll() is None:
                if stop is not None and stop.is_set():
                    child.terminate()
                    break
                if time.monotonic() > deadline:
                    child.kill()
                    break
                time.sleep(0.05)
            child.wait(timeout=120)
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if child.returncode not in (0, -15) or not lines:
        raise RuntimeError(f"{what} process failed (exit {child.returncode}):\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_scorer_process(
    settings: Mapping[str, Any],
    *,
    target: int | None,
    profile_path: Path | None = None,
    ready_file: Path | None = None,
    status_file: Path | None = None,
    barrier: tuple[Path, int] | None = None,
    timeout_s: float = 600.0,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run the real scorer in a child process until ``target`` transactions are scored.

    Without ``target`` it runs until ``stop`` is set (it is then sent SIGTERM).
    With ``status_file`` the child keeps its processed count there (every 20 ms);
    with ``barrier`` (folder, count) it starts consuming only once ``count``
    children have arrived there.
    Returns the child's JSON result, whose ``timeline`` lists
    ``[monotonic time, processed, CPU seconds]`` each time the count grew.
    """
    spec = {
        "settings": dict(settings),
        "target": target,
        "profile_path": str(profile_path) if profile_path else None,
        "ready_file": str(ready_file) if ready_file else None,
        "status_file": str(status_file) if status_file else None,
        "barrier": {"dir": str(barrier[0]), "count": barrier[1]} if barrier else None,
    }
    return run_child(
        "fraudstream.bench.pipeline", spec, what="scorer", timeout_s=timeout_s, stop=stop
    )


def aggregate_timelines(
    timelines: Sequence[Sequence[Sequence[float]]], target: int
) -> dict[str, float]:
    """Aggregate rate and CPU of scorers that shared one topic, from their timelines.

    Each timeline lists ``[time, processed, cpu_s]`` samples of one process (its
    counts are cumulative). The span starts when **every** process that took part
    has finished its first batch (so the group join and the rebalances it causes
    are not counted, as for one scorer) and ends when the processes together
    reached ``target`` (or at the last sample). Empty timelines (a process that
    got no partition) are ignored. When the span covers less than
    :data:`MIN_TIMED_SHARE` of ``target``, the rate is NaN (too few batches).

    Examples
    --------
    >>> one = [[1.0, 100, 0.5], [2.0, 1100, 1.0], [3.0, 2100, 1.5]]
    >>> r = aggregate_timelines([one], 2100)
    >>> r["start"], r["end"], r["counted"], r["tx_per_s"], r["cpu_s"], r["processes"]
    (1.0, 3.0, 2000.0, 1000.0, 1.0, 1)
    >>> two = [[1.5, 50, 0.2], [2.5, 1050, 0.7]]
    >>> r = aggregate_timelines([one, two], 3000)  # both busy from 1.5; 3,150 done at 3.0
    >>> r["start"], r["end"], r["counted"], r["tx_per_s"], r["processes"]
    (1.5, 3.0, 3000.0, 2000.0, 2)
    >>> late = [[3.0, 10, 0.1], [3.1, 20, 0.2]]  # joined when the work was done
    >>> aggregate_timelines([one, late], 2120)["tx_per_s"]
    nan
    """
    used = [sorted((float(t), float(n), float(c)) for t, n, c in tl) for tl in timelines if tl]
    if not used:
        return {"tx_per_s": math.nan, "processes": 0}
    start = max(tl[0][0] for tl in used)
    events = sorted((t, i, n, c) for i, tl in enumerate(used) for t, n, c in tl)
    latest = [0.0] * len(used)
    end = events[-1][0]
    for t, i, n, _ in events:
        latest[i] = n
        if t >= start and sum(latest) >= target:
            end = t
            break

    def at(tl: list[tuple[float, float, float]], when: float) -> tuple[float, float]:
        before = [(n, c) for t, n, c in tl if t <= when]
        return before[-1] if before else (0.0, tl[0][2])

    counted = sum(at(tl, end)[0] - at(tl, start)[0] for tl in used)
    cpu_s = sum(at(tl, end)[1] - at(tl, start)[1] for tl in used)
    timed_share = counted / target if target else math.nan
    return {
        "start": start,
        "end": end,
        "counted": counted,
        # A span that covers too little of the run (one process joined late) is
        # a handful of batches: no rate is better than a wrong one.
        "tx_per_s": rate_per_s(int(counted), end - start)
        if timed_share >= MIN_TIMED_SHARE
        else math.nan,
        "cpu_s": cpu_s,
        "processes": len(used),
        "timed_share": timed_share,
    }


def run_scorer_group(
    settings: Mapping[str, Any], *, scorers: int, target: int, timeout_s: float = 600.0
) -> dict[str, Any]:
    """``scorers`` scorer processes in one consumer group until together they scored ``target``.

    One process stops by itself at ``target``; several keep a status file each,
    and are sent SIGTERM once their counts add up to ``target``. Returns the
    aggregate (:func:`aggregate_timelines`) with each process's peak RSS and the
    scorer kind and model version they scored with.
    """
    if scorers == 1:
        children = [run_scorer_process(settings, target=target, timeout_s=timeout_s)]
    else:
        stop = threading.Event()
        outcomes: list[dict[str, Any]] = [{} for _ in range(scorers)]
        with tempfile.TemporaryDirectory(prefix="fraudstream-bench-group-") as tmp:
            status = [Path(tmp) / f"scorer-{i}.count" for i in range(scorers)]

            def one(i: int) -> None:
                try:
                    outcomes[i]["result"] = run_scorer_process(
                        {**settings, "client_id": f"{settings['client_id']}-{i + 1}"},
                        target=None,
                        status_file=status[i],
                        barrier=(Path(tmp) / "barrier", scorers),
                        timeout_s=timeout_s,
                        stop=stop,
                    )
                except BaseException as exc:
                    outcomes[i]["error"] = exc
                    stop.set()

            threads = [
                threading.Thread(target=one, args=(i,), name=f"bench-scorer-{i + 1}")
                for i in range(scorers)
            ]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                done = 0
                for path in status:
                    with contextlib.suppress(OSError, ValueError):
                        done += int(path.read_text() or 0)
                if done >= target:
                    break
                time.sleep(0.02)
            stop.set()
            for thread in threads:
                thread.join(timeout=180)
        errors = [o["error"] for o in outcomes if "error" in o]
        if errors:
            raise errors[0]
        children = [o["result"] for o in outcomes]
    aggregate = aggregate_timelines([c.get("timeline", []) for c in children], target)
    return {
        **aggregate,
        "scorers": scorers,
        "processed": sum(c.get("processed", 0.0) for c in children),
        "rss_mb": max(c["rss_mb"] for c in children),
        "cpu_us_per_tx": 1e6
        * aggregate.get("cpu_s", math.nan)
        / max(aggregate.get("counted", 0), 1),
        "alerts": sum(c.get("alerts", 0.0) for c in children),
        "scorer_kind": children[0].get("scorer_kind"),
        "model_version": children[0].get("model_version"),
    }


def _meet(folder: Path, count: int, timeout_s: float = 120.0) -> None:
    """Wait until ``count`` processes have arrived in ``folder`` (a start line for the group).

    Every scorer of a group starts its consumer at about the same moment, so they
    join the group together rather than one taking every partition first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def _scorer_main(spec_path: str) -> None:  # noqa: C901 - bench owner to split (issue 9)
    """Entry of the scorer child process (``python -m fraudstream.bench.pipeline spec.json``)."""
    from fraudstream.service.app import Application
    from fraudstream.service.settings import Settings

    spec = json.loads(Path(spec_path).read_text())
    settings = Settings(_env_file=None, **spec["settings"])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app = Application(settings)
    app.install_signal_handlers()
    target: int | None = spec["target"]
    marks: dict[str, Any] = {}

    def processed() -> float:
        return (
            app.metrics.registry.get_sample_value("fraudstream_transactions_processed_total") or 0.0
        )

    timeline: list[list[float]] = []  # [monotonic time, processed, CPU s] when the count grew

    def watch() -> None:
        ready_file = spec.get("ready_file")
        status_file = Path(spec["status_file"]) if spec.get("status_file") else None
        reported_at = 0.0
        while not app.stopping.is_set():
            n = processed()
            now = time.monotonic()
            if n and (not timeline or n > timeline[-1][1]):
                timeline.append([now, n, _cpu_s()])
            if n and "first_at" not in marks:
                marks.update(first_at=now, first_count=n, first_cpu=_cpu_s())
                if ready_file:
                    Path(ready_file).write_text("ready")
            if status_file is not None and now - reported_at >= 0.02:
                status_file.with_suffix(".tmp").write_text(str(int(n)))
                status_file.with_suffix(".tmp").replace(status_file)
                reported_at = now
            if target is not None and n >= target:
                marks.update(last_at=now, last_count=n, last_cpu=_cpu_s())
                app.stop()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, name="bench-watch", daemon=True)
    profiler = None
    if spec.get("profile_path"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    if spec.get("barrier"):
        _meet(Path(spec["barrier"]["dir"]), int(spec["barrier"]["count"]))
    started = time.perf_counter()
    watcher.start()
    app.run()
    ended = time.perf_counter()
    watcher.join(timeout=5)
    result: dict[str, Any] = {
        "processed": processed(),
        "rss_mb": peak_rss_mb(),
        "cpu_s": _cpu_s(),
        "wall_s": ended - started,
        "alerts": sum(
            app.metrics.registry.get_sample_value("fraudstream_alerts_total", {"scorer": kind})
            or 0.0
            for kind in ("model", "rules")
        ),
        "alerts_by_model": app.metrics.registry.get_sample_value(
            "fraudstream_alerts_total", {"scorer": "model"}
        )
        or 0.0,
        "model_version": app._watcher.active.version if app._watcher else None,
        "scorer_kind": app._watcher.active.kind if app._watcher else None,
        "timeline": timeline,
    }
    if "last_at" in marks:
        seconds = marks["last_at"] - marks["first_at"]
        count = marks["last_count"] - marks["first_count"]
        result.update(
            seconds=seconds,
            counted=count,
            tx_per_s=rate_per_s(int(count), seconds),
            cpu_us_per_tx=1e6 * (marks["last_cpu"] - marks["first_cpu"]) / max(count, 1),
        )
    if profiler is not None:
        profiler.stop()
        from pyinstrument.renderers import ConsoleRenderer

        session = profiler.last_session
        assert session is not None
        tree = ConsoleRenderer(unicode=False, color=False, short_mode=False).render(session)
        flat = ConsoleRenderer(unicode=False, color=False, flat=True, show_all=True).render(session)
        Path(spec["profile_path"]).write_text(tree + "\n\n# flat (self time)\n\n" + flat)
        result["profile_text"] = tree
        result["profile_flat_text"] = flat_without_self_rows(flat)
    print(json.dumps(result), flush=True)


# -- latency -----------------------------------------------------------------------


def measure_latency(
    kafka: KafkaTarget,
    settings: Mapping[str, Any],
    keys: Sequence[bytes],
    values: Sequence[bytes],
    *,
    rate: int,
    seconds: float,
    run: _Run,
    partitions: int,
) -> dict[str, Any]:
    """Offer ``rate`` tx/s for ``seconds`` to a running scorer; percentiles of latency.

    Then the same to a pass-through loop (:mod:`fraudstream.bench.passthrough`):
    the floor that Kafka and kafka-python set on this machine.
    """

    def scorer(topic_in: str, topic_out: str, ready: Path, stop: threading.Event) -> Any:
        scorer_settings = {
            **settings,
            "topic_transactions": topic_in,
            "topic_scores": topic_out,
            "publish_scores": True,
            "consumer_group": run.name("latency-scorer"),
        }
        return run_scorer_process(scorer_settings, target=None, ready_file=ready, stop=stop)

    kwargs: dict[str, Any] = {"rate": rate, "seconds": seconds, "partitions": partitions}
    offered = _offer(kafka, keys, values, run.name("latency"), scorer, **kwargs)
    sent, latencies, scorer_ms, in_kafka_ms = offered.latencies
    p50, p90, p99, p999 = percentiles(latencies, [50, 90, 99, 99.9])
    k50, k90, k99 = percentiles(in_kafka_ms, [50, 90, 99])
    floor = measure_latency_floor(kafka, settings, keys, values, run=run, **kwargs)
    return {
        "latency_offered_tx_per_s": rate,
        "latency_seconds": seconds,
        "latency_achieved_tx_per_s": offered.achieved_tx_per_s,
        "latency_samples": len(latencies),
        "latency_expected": offered.expected,
        "latency_p50_ms": p50,
        "latency_p90_ms": p90,
        "latency_p99_ms": p99,
        "latency_p999_ms": p999,
        "latency_max_ms": float(np.max(latencies)) if len(latencies) else math.nan,
        "latency_kafka_p50_ms": k50,
        "latency_kafka_p90_ms": k90,
        "latency_kafka_p99_ms": k99,
        "latency_in_scorer_p50_ms": percentiles(scorer_ms, [50])[0],
        "latency_in_scorer_p99_ms": percentiles(scorer_ms, [99])[0],
        "latency_p99_by_second_ms": by_second(sent, latencies),
        "latency_scorer_rss_mb": offered.child.get("rss_mb", math.nan),
        **floor,
    }


def measure_latency_floor(
    kafka: KafkaTarget,
    settings: Mapping[str, Any],
    keys: Sequence[bytes],
    values: Sequence[bytes],
    *,
    rate: int,
    seconds: float,
    run: _Run,
    partitions: int,
) -> dict[str, Any]:
    """The latency measure on a loop that only consumes and produces (the floor).

    See :mod:`fraudstream.bench.passthrough` (it connects with ``settings``):
    what Kafka and kafka-python take on this machine at this rate, before the
    service does any work.
    """

    def passthrough(topic_in: str, topic_out: str, ready: Path, stop: threading.Event) -> Any:
        spec = {
            "settings": dict(settings),
            "group": run.name("latency-passthrough"),
            "topic_in": topic_in,
            "topic_out": topic_out,
            "ready_file": str(ready),
        }
        return run_child("fraudstream.bench.passthrough", spec, what="pass-through", stop=stop)

    floor = _offer(
        kafka,
        keys,
        values,
        run.name("latency-floor"),
        passthrough,
        rate=rate,
        seconds=seconds,
        partitions=partitions,
    )
    _, latencies, _, in_kafka_ms = floor.latencies
    f50, f99 = percentiles(latencies, [50, 99])
    k50, k99 = percentiles(in_kafka_ms, [50, 99])
    return {
        "latency_floor_p50_ms": f50,
        "latency_floor_p99_ms": f99,
        "latency_floor_kafka_p50_ms": k50,
        "latency_floor_kafka_p99_ms": k99,
        "latency_floor_samples": len(latencies),
        "latency_floor_expected": floor.expected,
    }


@dataclass
class _Offered:
    """What :func:`_offer` measured: per transaction (sent, end to end, scorer, Kafka to Kafka)."""

    latencies: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    expected: int
    achieved_tx_per_s: float
    child: dict[str, Any]


def _offer(
    kafka: KafkaTarget,
    keys: Sequence[bytes],
    values: Sequence[bytes],
    prefix: str,
    child: Callable[[str, str, Path, threading.Event], Any],
    *,
    rate: int,
    seconds: float,
    partitions: int,
) -> _Offered:
    """Feed ``rate`` tx/s for ``seconds`` to ``child`` (topics ``prefix``-tx and -out).

    ``child(topic_in, topic_out, ready_file, stop)`` runs the loop under test until
    ``stop``; it is warmed up until it writes ``ready_file``.
    """
    topic_in, topic_out = f"{prefix}-tx", f"{prefix}-out"
    ensure_topics(
        kafka,
        {topic_in: partitions, topic_out: partitions},
        # Append times on both, read back after the run: each transaction's and each
        # decision's (the loop's own latency is between the two).
        configs={t: {"message.timestamp.type": "LogAppendTime"} for t in (topic_in, topic_out)},
    )
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"

        def run_child_loop() -> None:
            try:
                outcome["child"] = child(topic_in, topic_out, ready, stop)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=run_child_loop, name="bench-latency-child")
        thread.start()
        producer = make_producer(kafka, client_id="fraudstream-bench-latency", linger_ms=5)
        sent_ms: dict[bytes, int] = {}
        warmup = 0
        total = int(rate * seconds)
        try:
            # Warm up until the loop has joined its group and handled something.
            deadline = time.monotonic() + 90
            while not ready.exists():
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError(f"latency loop did not start: {outcome.get('error')}")
                producer.send(topic_in, value=values[warmup], key=keys[warmup])
                warmup += 1
                time.sleep(0.05)
            time.sleep(1.0)
            tx_ids = [
                orjson.loads(v)["transaction_id"].encode() for v in values[warmup : warmup + total]
            ]
            started = time.perf_counter()
            for i in range(total):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                j = warmup + i
                sent_ms[tx_ids[i]] = int(time.time() * 1000)
                producer.send(topic_in, value=values[j], key=keys[j])
            offered_s = time.perf_counter() - started
            producer.flush(timeout=60)
            latencies = _collect_latencies(kafka, topic_in, topic_out, sent_ms, timeout_s=60)
        finally:
            producer.close(timeout=30)
            stop.set()
            thread.join(timeout=120)
    return _Offered(latencies, total, rate_per_s(total, offered_s), outcome.get("child", {}))


def _collect_latencies(
    kafka: KafkaTarget,
    topic_in: str,
    topic_out: str,
    sent_ms: Mapping[bytes, int],
    timeout_s: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per transaction sent: ``(sent, end to end, scorer, Kafka to Kafka)``, from both topics.

    End to end is the output record's append time minus the send time (the
    sending producer's linger included); Kafka to Kafka is the output record's
    append time minus the transaction's, read back from ``topic_in`` after the
    run (the service's own latency). The scorer's own figure is the
    ``latency_ms`` it wrote: scored time minus the record's timestamp, here its
    append time, before producing.
    """
    appended = _first_records(kafka, topic_in, sent_ms, timeout_s)
    out = _first_records(kafka, topic_out, sent_ms, timeout_s)
    rows = [
        (
            float(sent_ms[tx]),
            float(out_ms - sent_ms[tx]),
            float(orjson.loads(value).get("latency_ms", math.nan)),
            float(out_ms - appended[tx][0]) if tx in appended else math.nan,
        )
        for tx, (out_ms, value) in out.items()
    ]
    table = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return table[:, 0], table[:, 1], table[:, 2], table[:, 3]


def _first_records(
    kafka: KafkaTarget, topic: str, wanted: Mapping[bytes, Any], timeout_s: float
) -> dict[bytes, tuple[int, bytes]]:
    """Timestamp and value of the first record of ``topic`` per transaction id in ``wanted``."""
    consumer = make_consumer(kafka, client_id="fraudstream-bench-lat", group_id=None)
    found: dict[bytes, tuple[int, bytes]] = {}
    try:
        _assign_all(consumer, topic)
        deadline = time.monotonic() + timeout_s
        needle = b'"transaction_id":"'
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in batch:
                    value = record.value or b""
                    start = value.find(needle) + len(needle)
                    tx_id = value[start : value.find(b'"', start)]
                    if tx_id in wanted and tx_id not in found:
                        found[tx_id] = (record.timestamp, value)
    finally:
        consumer.close()
    return found


def by_second(sent_ms: np.ndarray, latency_ms: np.ndarray, q: float = 99.0) -> list[float]:
    """Percentile ``q`` of latency per second of sending (to see backlog build up or drain).

    >>> by_second(np.array([0.0, 10.0, 1000.0, 1500.0]), np.array([1.0, 3.0, 5.0, 7.0]), 50)
    [2.0, 6.0]
    """
    if len(sent_ms) == 0:
        return []
    second = ((sent_ms - sent_ms.min()) // 1000).astype(np.int64)
    return [
        round(percentiles(latency_ms[second == s], [q])[0], 1) if (second == s).any() else math.nan
        for s in range(int(second.max()) + 1)
    ]


# -- memory ------------------------------------------------------------------------


def measure_memory(client: redis.Redis, prefix: str, sample: int = 500) -> dict[str, float]:
    """Mean ``MEMORY USAGE`` (and value length) of sampled card, terminal and snapshot keys."""
    out: dict[str, float] = {}
    for kind, tag in (("card", "c"), ("terminal", "t"), ("snapshot", "x")):
        keys: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:{{{tag}:*", count=2000):
            if not key.endswith(b":claim"):
                keys.append(key)
            if len(keys) >= sample:
                break
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
            pipe.strlen(key)
        replies = pipe.execute() if keys else []
        usage = [float(v or 0) for v in replies[0::2]]
        length = [float(v or 0) for v in replies[1::2]]
        out[f"{kind}_keys_sampled"] = len(keys)
        out[f"{kind}_memory_mean"] = float(np.mean(usage)) if usage else math.nan
        out[f"{kind}_strlen_mean"] = float(np.mean(length)) if length else math.nan
    return {
        "redis_bytes_per_card": out["card_memory_mean"],
        "redis_card_records_mean": out["card_strlen_mean"] / 28.0,
        "redis_bytes_per_terminal": out["terminal_memory_mean"],
        "snapshot_bytes_per_tx": out["snapshot_memory_mean"],
        "snapshot_payload_bytes": out["snapshot_strlen_mean"],
        "memory_keys_sampled": out["card_keys_sampled"],
    }


# -- per-transaction CPU and the peer ---------------------------------------------


def scorer_figures(group: Mapping[str, Any], sampler: CpuSampler) -> dict[str, float]:
    """Rate and CPU per transaction (scorers, Redis, broker) of one scorer-group run."""
    counted = max(float(group.get("counted", 0.0)), 1.0)
    spent = (
        sampler.seconds_between(group["start"], group["end"])
        if "start" in group
        else {"redis": math.nan, "broker": math.nan}
    )
    return {
        "tx_per_s": float(group.get("tx_per_s", math.nan)),
        "cpu_us_per_tx": float(group.get("cpu_us_per_tx", math.nan)),
        "redis_cpu_us_per_tx": 1e6 * spent["redis"] / counted,
        "broker_cpu_us_per_tx": 1e6 * spent["broker"] / counted,
        "rss_mb": float(group.get("rss_mb", math.nan)),
        "processes_timed": float(group.get("processes", 0)),
        "timed_share": float(group.get("timed_share", math.nan)),
    }


def _cluster_phase(
    config: PipelineBenchConfig,
    values: Mapping[str, Any],
    model: Any,
    run: _Run,
    sampler: CpuSampler,
    result: dict[str, Any],
    progress: Callable[[str], None],
) -> None:
    """``--redis-cluster``: the first scorer count again, on a local cluster (into ``result``)."""
    if not config.redis_cluster:
        return
    progress(
        f"{config.scorers[0]} scorer process(es) on a local Redis Cluster "
        "(3 masters, 3 replicas, same topic, fresh group)"
    )
    result.update(measure_on_cluster(values, model, run, config.scorers[0], config.events, sampler))
    result["cluster_vs_single"] = ratio(
        result["cluster_scorer_tx_per_s"], result["scorer_tx_per_s"]
    )
    result["notes"].append(
        "The cluster run's Redis CPU is summed over its 6 nodes (replicas included: they "
        "apply every write); its scorers wait for one replica per master "
        "(FRAUDSTREAM_REDIS_CLUSTER_WAIT_REPLICAS=1, the default)."
    )


def _await_replicas(client: Any, nodes: int = 6, timeout_s: float = 60.0) -> None:
    """Reload the slot map until it lists every node, replicas too (their CPU is sampled).

    A cluster just created lists its replicas in ``CLUSTER SLOTS`` a little
    after they are linked.
    """
    deadline = time.monotonic() + timeout_s
    while len(client.get_nodes()) < nodes and time.monotonic() < deadline:
        time.sleep(0.5)
        client.nodes_manager.initialize()
    if len(client.get_nodes()) < nodes:
        raise RuntimeError(f"the cluster lists {len(client.get_nodes())} of {nodes} nodes")


def measure_on_cluster(
    values: Mapping[str, Any],
    model: Any,
    run: _Run,
    scorers: int,
    target: int,
    single: CpuSampler,
) -> dict[str, Any]:
    """The scorer group on a local Redis Cluster started here, on the same topic.

    ``single`` is the single-node run's sampler (for the broker's pid).
    """
    from fraudstream.devstack import redis_cluster_given_or_started
    from fraudstream.service.registry import ModelRegistry

    with redis_cluster_given_or_started(None) as url:
        prefix = f"{run.prefix}c"
        settings = {
            **values,
            "redis_url": url,
            "redis_cluster": True,
            "redis_prefix": prefix,
            "consumer_group": run.name("scorer-cluster"),
        }
        client = redis_client(Settings(_env_file=None, **settings))
        try:
            _await_replicas(client)
            ModelRegistry(client, prefix, SecretStr(str(values["model_signing_key"]))).publish(
                model, extra={"trained_by": "fraudstream bench"}
            )
            sampler = CpuSampler(client, single.broker_pid)
            masters = CpuSampler(client, None, masters_only=True)
            with sampler.running(), masters.running():
                group = run_scorer_group(settings, scorers=scorers, target=target)
            figures = scorer_figures(group, sampler)
            on_masters = scorer_figures(group, masters)["redis_cpu_us_per_tx"]
        finally:
            client.close()
    return {
        "cluster_scorer_tx_per_s": figures["tx_per_s"],
        "cluster_scorer_cpu_us_per_tx": figures["cpu_us_per_tx"],
        "cluster_redis_cpu_us_per_tx": figures["redis_cpu_us_per_tx"],
        "cluster_redis_masters_cpu_us_per_tx": on_masters,
        "cluster_broker_cpu_us_per_tx": figures["broker_cpu_us_per_tx"],
        "cluster_scorer_processed": group["processed"],
    }


def measure_peer_quix(
    kafka: KafkaTarget,
    topic: str,
    alerts_topic: str,
    group: str,
    model: Any,
    settings: Mapping[str, Any],
    target: int,
) -> dict[str, Any]:
    """Run the Quix Streams peer (:mod:`fraudstream.bench.peer_quix`) on ``topic`` in a child.

    The peer connects over PLAINTEXT only (it is a benchmark of a local broker).
    """
    import pickle

    connection = KafkaConnection.of(kafka)
    if connection.secured:
        raise ConfigurationError(
            f"the Quix Streams peer connects over PLAINTEXT only, not to {connection.describe()}"
        )

    with tempfile.TemporaryDirectory(prefix="fraudstream-bench-peer-") as tmp:
        model_path = Path(tmp) / "model.pkl"
        model_path.write_bytes(pickle.dumps(model))
        windows = [int(w) for w in str(settings["windows_s"]).split(",")]
        peer = run_child(
            "fraudstream.bench.peer_quix",
            {
                "bootstrap_servers": connection.bootstrap_servers,
                "group": group,
                "topic": topic,
                "alerts_topic": alerts_topic,
                "windows_s": windows,
                "threshold": settings["alert_threshold"],
                "model_path": str(model_path),
                "target": target,
            },
            what="Quix Streams peer",
        )
    return {
        "peer": "quixstreams",
        "peer_tx_per_s": peer.get("tx_per_s", math.nan),
        "peer_processed": peer.get("processed"),
        "peer_cpu_us_per_tx": peer.get("cpu_us_per_tx", math.nan),
        "peer_rss_mb": peer.get("rss_mb", math.nan),
        "window": peer.get("window"),
    }


# -- the whole run -----------------------------------------------------------------


def run_pipeline_bench(
    config: PipelineBenchConfig,
    base_settings: Any,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run every step of the benchmark and return the results (see the module docstring)."""
    import platform

    from fraudstream.bench.naive import measure_naive
    from fraudstream.devstack import started_pid
    from fraudstream.service.model import FraudModel
    from fraudstream.service.registry import ModelRegistry

    run = _Run()
    result: dict[str, Any] = {
        "benchmark": "pipeline",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "events": config.events,
        "partitions": config.partitions,
        "max_batch_size": base_settings.max_batch_size,
        "load_average_1m_start": os.getloadavg()[0],
        "notes": [],
    }
    latency_total = int(config.latency_rate * config.latency_seconds)
    progress(f"simulating {config.events + latency_total + 500:,} transactions")
    data = simulate_records(config.events + latency_total + 2_000, config.seed)
    result["cards"] = data.n_cards
    with bench_servers(config.bootstrap_servers, config.redis_url, config.cache_dir) as (
        bootstrap,
        redis_url,
    ):
        # Servers this run started are plain: the security settings are for given ones.
        values = settings_values(
            base_settings.with_local_servers(
                bootstrap_servers=bootstrap if config.bootstrap_servers is None else None,
                redis_url=redis_url if config.redis_url is None else None,
            )
        )
        topic = run.name("transactions")
        values.update(
            bootstrap_servers=bootstrap,
            redis_url=redis_url,
            redis_prefix=run.prefix,
            topic_transactions=topic,
            topic_alerts=run.name("alerts"),
            topic_scores=run.name("scores"),
            topic_transactions_dlq=run.name("dlq"),
            topic_labels=run.name("labels"),
            topic_labels_dlq=run.name("labels-dlq"),
            consumer_group=run.name("scorer"),
            topic_partitions=config.partitions,
            role="scorer",
            # A speed benchmark: the trained model serves whatever its quality.
            model_margin_over_prior=-1.0,
            metrics_port=0,
            publish_scores=False,
        )
        names = (
            "alerts",
            "scores",
            "dlq",
            "labels",
            "labels-dlq",
            "naive-scores",
            "transactions",
            "peer-alerts",
        )
        bench_settings = Settings(_env_file=None, **values)
        kafka = KafkaConnection.from_settings(bench_settings)
        # A given broker that is down: one line at once, not a 30 s retry.
        check_reachable(kafka, given_by="--bootstrap-servers" if config.bootstrap_servers else None)
        client = redis_client(bench_settings)
        ensure_topics(kafka, {run.name(name): config.partitions for name in names})

        progress("training and publishing the default model")
        version, labels, frauds = train_and_publish(
            client, values, data, min(config.events, 20_000)
        )
        result.update(model_version=version, model_labels=labels, model_frauds=frauds)

        progress(f"pre-loading {config.events:,} transactions into {topic}")
        result["preload_tx_per_s"] = preload(
            kafka, topic, data.keys[: config.events], data.values[: config.events]
        )

        progress("raw consume")
        result.update(
            measure_raw_consume(
                kafka,
                topic,
                config.events,
                base_settings.max_batch_size,
                base_settings.kafka_batch_decoding,
            )
        )

        registry = ModelRegistry(client, run.prefix, SecretStr(str(values["model_signing_key"])))
        model: FraudModel = registry.load(version).model
        sampler = CpuSampler(client, started_pid(bootstrap))
        result["broker_pid_known"] = sampler.broker_pid is not None
        for i, scorers in enumerate(config.scorers):
            progress(
                f"{scorers} scorer process{'es' if scorers > 1 else ''} "
                "(real Application loop, child processes, one consumer group)"
            )
            scorer_values = dict(values)
            if i:  # a fresh group and fresh Redis state (with the model) for every count
                scorer_values.update(
                    consumer_group=run.name(f"scorer-x{scorers}-{i}"),
                    redis_prefix=f"{run.prefix}x{i}",
                )
                ModelRegistry(
                    client,
                    scorer_values["redis_prefix"],
                    SecretStr(str(values["model_signing_key"])),
                ).publish(model, extra={"trained_by": "fraudstream bench"})
            with sampler.running():
                group = run_scorer_group(scorer_values, scorers=scorers, target=config.events)
            figures = scorer_figures(group, sampler)
            if i == 0:
                result.update(
                    scorer_processes=scorers,
                    scorer_tx_per_s=figures["tx_per_s"],
                    scorer_seconds=group.get("end", math.nan) - group.get("start", math.nan),
                    scorer_processed=group["processed"],
                    scorer_rss_mb=group["rss_mb"],
                    scorer_cpu_us_per_tx=figures["cpu_us_per_tx"],
                    redis_cpu_us_per_tx=figures["redis_cpu_us_per_tx"],
                    broker_cpu_us_per_tx=figures["broker_cpu_us_per_tx"],
                    scorer_kind=group.get("scorer_kind"),
                    scorer_alerts=group.get("alerts"),
                    scorer_alert_share=ratio(group.get("alerts", 0.0), group["processed"]),
                )
                result.update(measure_memory(client, run.prefix))
            result.setdefault("scorer_runs", []).append({"scorers": scorers, **figures})
            result[f"scorers_{scorers}_tx_per_s"] = figures["tx_per_s"]
        if len(config.scorers) > 1:
            base = result["scorer_runs"][0]
            for other in result["scorer_runs"][1:]:
                result[f"scorers_{other['scorers']}_vs_{base['scorers']}"] = ratio(
                    other["tx_per_s"], base["tx_per_s"]
                )
        result["notes"].append(
            "CPU per transaction (scorer, Redis, broker) is measured over the timed span of "
            "each scorer run, on one clock; broker CPU is read from /proc when this run "
            "started the broker. With several scorers the span starts once every scorer has "
            "finished its first batch (after the group's rebalances)."
        )

        _cluster_phase(config, values, model, run, sampler, result, progress)

        if config.peer == "quix":
            progress("peer: a Quix Streams application on the same topic (child process)")
            with sampler.running():
                peer = measure_peer_quix(
                    kafka,
                    topic,
                    run.name("peer-alerts"),
                    run.name("peer-quix"),
                    model,
                    values,
                    config.events,
                )
            window = peer.pop("window", None)
            if window:
                spent = sampler.seconds_between(window[0], window[1])
                counted = max(config.events - 1, 1)
                peer["peer_broker_cpu_us_per_tx"] = 1e6 * spent["broker"] / counted
            result.update(peer)
            result["scorer_vs_peer"] = ratio(result["scorer_tx_per_s"], result["peer_tx_per_s"])
            result["notes"].append(
                "The peer (bench/peer_quix.py) is timed from its first processed record to "
                "the last; it computes card windows and time since last in RocksDB state and "
                "a River score, with no terminal, label, z-score, location or new-terminal "
                "features, no dedupe and no snapshots (generous to the peer)."
            )

        progress(f"naive per-event loop on {config.naive_events:,} events")
        result.update(
            measure_naive(
                kafka,
                topic,
                run.name("naive-scores"),
                min(config.naive_events, config.events),
                model,
                bench_settings,
                f"{run.prefix}naive",
                run.name("naive"),
            )
        )
        result["speedup_vs_naive"] = ratio(result["scorer_tx_per_s"], result["naive_tx_per_s"])
        result["scorer_vs_raw_consume"] = ratio(
            result["scorer_tx_per_s"], result["raw_consume_tx_per_s"]
        )
        if result["naive_events"] < config.events:
            result["notes"].append(
                f"The naive loop ran on the first {result['naive_events']:,} events only "
                "(it is slow); its rate is per event, so the ratio stands."
            )
        result["notes"].append(
            "The naive loop produces and flushes a score record for every event; the "
            "scorer (default settings) produces alerts only."
        )

        if config.latency_seconds > 0:
            progress(
                f"latency: {config.latency_rate:,} tx/s offered for {config.latency_seconds:g} s"
            )
            result.update(
                measure_latency(
                    kafka,
                    values,
                    data.keys[config.events :],
                    data.values[config.events :],
                    rate=config.latency_rate,
                    seconds=config.latency_seconds,
                    run=run,
                    partitions=config.partitions,
                )
            )
            result["notes"].append(
                "Latency = broker append time of the score record (LogAppendTime) minus the "
                "time the transaction was sent (linger 5 ms); 'kafka' latency = the same minus "
                "the transaction's broker append time; every decision is published."
            )

        if config.profile:
            events = min(config.profile_events or config.events, config.events)
            progress(f"profiling the scorer on {events:,} events (pyinstrument)")
            config.results_dir.mkdir(parents=True, exist_ok=True)
            profile_path = config.results_dir / "pipeline-profile.txt"
            ModelRegistry(
                client, run.prefix + "p", SecretStr(str(values["model_signing_key"]))
            ).publish(model, extra={"trained_by": "fraudstream bench"})
            profiled = run_scorer_process(
                {
                    **values,
                    "consumer_group": run.name("scorer-profiled"),
                    "redis_prefix": run.prefix + "p",
                    # pyinstrument samples the main thread only: one batch at a
                    # time keeps the whole batch's work in it.
                    "overlap_batches": False,
                },
                target=events,
                profile_path=profile_path,
            )
            result["profiled_scorer_tx_per_s"] = profiled.get("tx_per_s", math.nan)
            result["profile_path"] = str(profile_path)
            result["profile_text"] = profiled.get("profile_text", "")
            result["profile_flat_text"] = profiled.get("profile_flat_text", "")
            result["notes"].append(
                "The profile comes from a second scorer run under pyinstrument (fresh group, "
                "fresh Redis state, same model, one batch at a time: pyinstrument samples "
                "the main thread only) at "
                f"{_fmt(result['profiled_scorer_tx_per_s'])} tx/s; it includes start-up."
            )
        result["load_average_1m_end"] = os.getloadavg()[0]
        result["notes"].append(
            f"1-minute load average {result['load_average_1m_start']:.1f} at the start and "
            f"{result['load_average_1m_end']:.1f} at the end ({result['cpus']} CPUs): other "
            "processes on the machine take CPU from the scorer, Kafka and Redis."
        )
        if config.bootstrap_servers is not None or config.redis_url is not None:
            _delete_prefix(client, run.prefix)
        client.close()
    return result


def write_results(result: Mapping[str, Any], results_dir: Path, output: Path) -> str:
    """Write the JSON (without the profile text) and the Markdown summary; return the summary."""
    summary = format_summary(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(public_result(result), indent=2, default=str) + "\n")
    results_dir.mkdir(parents=True, exist_ok=True)
    (output.with_suffix(".md")).write_text(summary)
    return summary


def public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result without the long profile texts (what ``--json`` prints).

    NaN (a figure that could not be measured) becomes ``None`` so the JSON is strict.

    >>> public_result({"events": 3, "profile_text": "long", "naive_tx_per_s": float("nan")})
    {'events': 3, 'naive_tx_per_s': None}
    """
    return {
        k: None if isinstance(v, float) and math.isnan(v) else v
        for k, v in result.items()
        if k not in ("profile_text", "profile_flat_text")
    }


if __name__ == "__main__":
    _scorer_main(sys.argv[1])
