"""``fraudstream demo``: the whole system on one machine, in about two minutes.

Brings up the local dev stack (real Kafka and Redis), runs the service (scorer
and learner) in this process, feeds it a simulated card network with delayed
labels at accelerated event time, and prints a sample of the alerts spread over
the run (the first alert of the learnt model is always shown), a status line
every few seconds (throughput, alerts, dead letters, model version), and at the
end a quality summary: frauds planted and caught, precision of the alerts,
alerts per day against the budget. Metrics are on ``/metrics`` while it runs,
and can be recorded for the dashboard picture (``--record-metrics``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson

from fraudstream.devstack.stack import DevStack
from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import Simulation, SimulationConfig, simulate
from fraudstream.producers.stream import StreamStats, stream_simulation
from fraudstream.service.app import Application
from fraudstream.service.errors import ConfigurationError
from fraudstream.service.kafka import make_admin, make_consumer
from fraudstream.service.kafka.protocols import TopicPartition
from fraudstream.service.redis_client import redis_client
from fraudstream.service.settings import DecisionMode, Settings


@dataclass(frozen=True)
class DemoPlan:
    """How big and how fast the demo is, and what it shows."""

    customers: int = 1000
    terminals: int = 2000
    days: int = 21
    speed: float = 20_000.0
    seed: int = 0
    label_delay_days: float = 7.0
    #: Alert lines are sampled: at most one per this many wall seconds (the
    #: first alert of each scorer is always shown), so the whole run is covered.
    alert_every_s: float = 1.5
    #: Where to record the metrics every ``record_every_s`` (for the dashboard picture).
    metrics_out: Path | None = None
    record_every_s: float = 2.0


def _value(metric: object) -> float:
    """Sum of a prometheus-client metric's samples (all label sets)."""
    total = 0.0
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith("_total") or sample.name == family.name:
                total += sample.value
    return total


def _alert_line(alert: dict[str, Any]) -> str:
    reasons = ", ".join(f"{r['feature']}={r['value']:.4g}" for r in alert.get("reasons", [])[:3])
    scorer = f"model v{alert['model_version']}" if alert["scorer"] == "model" else "rules"
    return (
        f"ALERT card {alert['card_id']:>8} amount {float(alert['amount']):>9.2f} at "
        f"{str(alert['event_time'])[:16]}  score {float(alert['score']):.3f} "
        f"({scorer})  {float(alert['latency_ms']):.0f} ms  [{reasons}]"
    )


@dataclass
class _Seen:
    """Every alert of the run (for the summary) and what was printed."""

    by_scorer: dict[str, list[str]] = field(default_factory=dict)  # scorer -> transaction ids
    shown: int = 0
    last_shown_s: float = 0.0
    model_announced: bool = False


def _quality_summary(simulation: Simulation, seen: _Seen, days: int, budget: str) -> list[str]:
    """Frauds planted and caught, precision of alerts and alerts per day, by scorer."""
    fraud_rows = np.flatnonzero(simulation.is_fraud)
    fraud_ids = {simulation.transaction_id(int(i)) for i in fraud_rows}
    card_of = {simulation.transaction_id(int(i)): int(simulation.customer[i]) for i in fraud_rows}
    fraud_cards = set(card_of.values())
    alerted = {tx for txs in seen.by_scorer.values() for tx in txs}
    caught = alerted & fraud_ids
    cards_caught = {card_of[tx] for tx in caught}
    total = sum(len(txs) for txs in seen.by_scorer.values())
    precision = len(caught) / len(alerted) if alerted else float("nan")
    share = len(fraud_ids) / max(1, len(simulation))
    lines = [
        f"quality: {len(fraud_ids):,} frauds planted ({share:.2%}"
        f" of {len(simulation):,} transactions, on {len(fraud_cards):,} cards); "
        f"{len(caught):,} caught ({len(caught) / max(1, len(fraud_ids)):.0%}), "
        f"{len(cards_caught):,} of the cards flagged",
        f"alerts: {total:,} in {days} days = {total / days:.1f} a day ({budget}); "
        f"precision {precision:.0%} ({len(caught):,} of {len(alerted):,} alerted transactions "
        "were fraud)",
    ]
    parts = []
    for scorer, txs in sorted(seen.by_scorer.items()):
        hits = len(set(txs) & fraud_ids)
        parts.append(f"{scorer} {len(txs):,} alerts, precision {hits / max(1, len(set(txs))):.0%}")
    if parts:
        lines.append("by scorer: " + "; ".join(parts))
    return lines


def demo_topics(settings: Settings) -> list[str]:
    """Every topic the demo's service reads or writes."""
    s = settings
    return [
        s.topic_transactions,
        s.topic_labels,
        s.topic_alerts,
        s.topic_scores,
        s.topic_transactions_dlq,
        s.topic_labels_dlq,
    ]


def clear_earlier_demo(settings: Settings) -> bool:
    """Forget what an earlier demo left in the dev stack; ``True`` when there was something.

    The simulated stream of a demo started the same day has the same transaction
    ids: against the earlier run's Redis state they would all be replays, and the
    earlier run's events would be scored again. So the demo's topics are emptied
    (records deleted up to their end, the topics kept), its consumer groups
    deleted and its Redis keys (``<prefix>:*``, model versions and the state
    marker included) removed. Only ever called on the local dev stack.
    """
    cleared = False
    admin = make_admin(settings, client_id="fraudstream-demo")
    try:
        present = set(admin.list_topics()) & set(demo_topics(settings))
        if present:
            reader = make_consumer(settings, client_id="fraudstream-demo", group_id=None)
            try:
                partitions = [
                    TopicPartition(topic, p)
                    for topic in sorted(present)
                    for p in sorted(reader.partitions_for_topic(topic) or ())
                ]
                ends = reader.end_offsets(partitions)
                starts = reader.beginning_offsets(partitions)
            finally:
                reader.close()
            to_delete = {tp: end for tp, end in ends.items() if end > starts[tp]}
            if to_delete:
                admin.delete_records(to_delete, timeout_ms=30_000)
                cleared = True
        known = {group["group_id"] for group in admin.list_groups()}
        groups = [g for g in (settings.consumer_group, settings.learner_group) if g in known]
        for group, result in (admin.delete_groups(groups) if groups else {}).items():
            if result == "OK":
                cleared = True
            elif result != "GroupIdNotFoundError":
                raise ConfigurationError(
                    f"cannot clear the earlier demo's consumer group {group!r} ({result}): "
                    "is a service still running against the dev stack? Stop it, or run "
                    "`fraudstream dev down` first"
                )
    finally:
        admin.close()
    client = redis_client(settings)
    try:
        keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
        cleared = cleared or bool(keys)
    finally:
        client.close()
    return cleared


def run_demo(
    settings: Settings, stack: DevStack, plan: DemoPlan, echo: Callable[[str], None] = click.echo
) -> None:
    """Run the demo; returns when the simulated stream has been scored (or on Ctrl-C)."""
    started_stack = stack.status()["kafka"]["running"] is False
    stack.up()
    try:
        _run(settings, plan, echo)
    finally:
        if started_stack:
            echo("stopping the dev stack this demo started (`fraudstream dev up` keeps one)")
            stack.down()


def _record(out: Any, app: Application) -> None:
    samples = [
        [s.name, s.labels, None if math.isnan(s.value) else s.value]
        for family in app.metrics.registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]
    out.write(orjson.dumps({"t": time.time(), "samples": samples}) + b"\n")


def _run(settings: Settings, plan: DemoPlan, echo: Callable[[str], None]) -> None:
    """Serve, feed the simulation, watch the alerts until it is scored, then summarise."""
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        # The demo tells the story itself (model switch, status lines): the service's
        # own lifecycle lines would interleave with it; warnings still show.
        logging.getLogger("fraudstream.service").setLevel(logging.WARNING)
    if clear_earlier_demo(settings):
        echo("cleared what an earlier demo left in the dev stack (topics, groups, Redis state)")
    app = Application(settings)
    app.ensure_topics()
    service = threading.Thread(target=app.run, name="service", daemon=True)
    service.start()
    echo(
        f"service running; metrics at http://{settings.metrics_host}:{settings.metrics_port}"
        "/metrics (health: /healthz, /readyz); `fraudstream status` summarises them"
    )
    simulation = _simulation_config(plan)
    feed = _Feed(settings, simulation, plan)
    feed.start()
    budget = _announce(settings, plan, echo)
    seen = _Seen()
    m = app.metrics
    recording = open(plan.metrics_out, "wb") if plan.metrics_out else None  # noqa: SIM115
    try:
        _watch_alerts(settings, plan, app, service, feed, seen, recording, echo)
    except KeyboardInterrupt:
        echo("interrupted")
    finally:
        app.stop()
        service.join(timeout=60)
        if recording is not None:
            _record(recording, app)
            recording.close()
    stats = feed.stats
    if stats:
        echo(
            f"done: {stats.transactions:,} transactions ({stats.frauds:,} frauds planted) and "
            f"{stats.labels:,} labels fed; {_value(m.processed):,.0f} scored, "
            f"{_value(m.alerts):,.0f} alerts, model version {_value(m.model_version):.0f}"
        )
        for line in _quality_summary(simulate(simulation), seen, plan.days, budget):
            echo(line)
    if plan.metrics_out:
        echo(f"metrics recorded to {plan.metrics_out}")


def _simulation_config(plan: DemoPlan) -> SimulationConfig:
    """The simulated card network of the plan, ending today at midnight (UTC)."""
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= timedelta(days=plan.days)
    return SimulationConfig(
        seed=plan.seed,
        n_customers=plan.customers,
        n_terminals=plan.terminals,
        n_days=plan.days,
        start=start,
    )


class _Feed:
    """The simulated stream fed to Kafka in a thread; its stats or its error once done."""

    def __init__(self, settings: Settings, simulation: SimulationConfig, plan: DemoPlan) -> None:
        self.settings = settings
        self.simulation = simulation
        self.plan = plan
        self.stats: StreamStats | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._feed, name="simulator", daemon=True)

    def start(self) -> None:
        """Start feeding in the background."""
        self._thread.start()

    def _feed(self) -> None:
        try:
            self.stats = stream_simulation(
                self.settings,
                self.simulation,
                label_delay=LabelDelay(delay_s=self.plan.label_delay_days * 86_400),
                speed=self.plan.speed,
                progress=False,
            )
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def _announce(settings: Settings, plan: DemoPlan, echo: Callable[[str], None]) -> str:
    """Say how alerts are decided and what is simulated; the decision rule in short."""
    if settings.decision is DecisionMode.BUDGET:
        budget = f"budget {settings.alert_budget_per_day} a day"
        echo(
            f"alerts: budget mode, about {settings.alert_budget_per_day} a day of "
            f"~{settings.expected_tx_per_day:,} transactions "
            "(FRAUDSTREAM_DECISION=threshold for a fixed threshold)"
        )
    else:
        budget = f"threshold {settings.alert_threshold}"
        echo(f"alerts: score >= {settings.alert_threshold} (threshold mode)")
    echo(
        f"simulating {plan.customers} cards at {plan.terminals} terminals over {plan.days} "
        f"days at {plan.speed:,.0f}x event time (labels {plan.label_delay_days:g} days later); "
        f"showing about one alert every {plan.alert_every_s:g} s"
    )
    return budget


def _watch_alerts(
    settings: Settings,
    plan: DemoPlan,
    app: Application,
    service: threading.Thread,
    feed: _Feed,
    seen: _Seen,
    recording: Any,
    echo: Callable[[str], None],
) -> None:
    """Show alerts, status lines and record metrics until the fed stream is all scored.

    Returns 5 s after the last fed transaction was scored, or when the service stops;
    raises what the feed raised.
    """
    alerts = make_consumer(settings, client_id="demo-alerts", group_id=None, read_committed=True)
    try:
        partitions = alerts.partitions_for_topic(settings.topic_alerts) or {0}
        alerts.assign([TopicPartition(settings.topic_alerts, p) for p in sorted(partitions)])
        alerts.seek_to_end()
        next_status = time.monotonic() + 5
        next_record = 0.0
        idle_since: float | None = None
        m = app.metrics
        while service.is_alive():
            for batch in alerts.poll(timeout_ms=500).values():
                for record in batch:
                    if record.value is not None:  # no tombstones on the alerts topic
                        _show(orjson.loads(record.value), seen, plan, echo)
            now = time.monotonic()
            if recording is not None and now >= next_record:
                next_record = now + plan.record_every_s
                _record(recording, app)
            if now >= next_status:
                next_status = now + 5
                echo(_status_line(app))
            if feed.error is not None:
                raise feed.error
            if feed.stats and _value(m.processed) >= feed.stats.transactions:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5:
                    break
    finally:
        alerts.close()


def _status_line(app: Application) -> str:
    """Throughput, alerts, dead letters, labels and model version so far."""
    m = app.metrics
    return (
        f"status: {_value(m.processed):,.0f} scored, {_value(m.alerts):,.0f} alerts, "
        f"{_value(m.dead_lettered):,.0f} dead letters, {_value(m.labels_learnt):,.0f}"
        f" labels learnt, model version {_value(m.model_version):.0f}"
    )


def _show(alert: dict[str, Any], seen: _Seen, plan: DemoPlan, echo: Callable[[str], None]) -> None:
    """Remember every alert; print a sample spread over the run."""
    scorer = str(alert.get("scorer"))
    seen.by_scorer.setdefault(scorer, []).append(str(alert.get("transaction_id")))
    now = time.monotonic()
    first_of_model = scorer == "model" and not seen.model_announced
    if first_of_model:
        seen.model_announced = True
        echo(
            f"--- the learnt model (version {alert.get('model_version')}) now scores; "
            "alerts below come from it ---"
        )
    if first_of_model or seen.shown == 0 or now - seen.last_shown_s >= plan.alert_every_s:
        echo(_alert_line(alert))
        seen.shown += 1
        seen.last_shown_s = now
