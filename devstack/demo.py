"""``fraudstream demo``: the whole system on one machine, in about two minutes.

Brings up the local dev stack (real Kafka and Redis), runs the service (scorer
and learner) in this process, feeds it a simulated card network with delayed
labels at accelerated event time, and prints alerts as they are published and
a status line every few seconds (throughput, alerts, dead letters, model
version). Metrics are on ``/metrics`` while it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click
import orjson
from kafka import TopicPartition

from fraudstream.devstack.stack import DevStack
from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import SimulationConfig
from fraudstream.producers.stream import StreamStats, stream_simulation
from fraudstream.service.app import Application
from fraudstream.service.kafka import make_consumer
from fraudstream.service.settings import DecisionMode, Settings


@dataclass(frozen=True)
class DemoPlan:
    """How big and how fast the demo is."""

    customers: int = 1000
    terminals: int = 2000
    days: int = 21
    speed: float = 20_000.0
    seed: int = 0
    label_delay_days: float = 7.0
    max_alert_lines: int = 40


def _value(metric: object) -> float:
    """Sum of a prometheus-client metric's samples (all label sets)."""
    total = 0.0
    for family in metric.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name.endswith("_total") or sample.name == family.name:
                total += sample.value
    return total


def _alert_line(raw: bytes) -> str:
    alert = orjson.loads(raw)
    reasons = ", ".join(f"{r['feature']}={r['value']:.4g}" for r in alert.get("reasons", [])[:3])
    return (
        f"ALERT card {alert['card_id']:>8} amount {alert['amount']:>9.2f} at "
        f"{alert['event_time'][:16]}  score {alert['score']:.3f} ({alert['scorer']} "
        f"v{alert['model_version']})  {alert['latency_ms']:.0f} ms  [{reasons}]"
    )


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


def _run(settings: Settings, plan: DemoPlan, echo: Callable[[str], None]) -> None:
    app = Application(settings)
    app.ensure_topics()
    service = threading.Thread(target=app.run, name="service", daemon=True)
    service.start()
    echo(
        f"service running; metrics at http://{settings.metrics_host}:{settings.metrics_port}"
        "/metrics (health: /healthz, /readyz)"
    )

    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= timedelta(days=plan.days)
    simulation = SimulationConfig(
        seed=plan.seed,
        n_customers=plan.customers,
        n_terminals=plan.terminals,
        n_days=plan.days,
        start=start,
    )
    fed: list[StreamStats] = []
    feed_errors: list[BaseException] = []

    def feed() -> None:
        try:
            fed.append(
                stream_simulation(
                    settings,
                    simulation,
                    label_delay=LabelDelay(delay_s=plan.label_delay_days * 86_400),
                    speed=plan.speed,
                    progress=False,
                )
            )
        except BaseException as exc:  # reported by the main thread
            feed_errors.append(exc)

    feeder = threading.Thread(target=feed, name="simulator", daemon=True)
    feeder.start()
    if settings.decision is DecisionMode.BUDGET:
        echo(
            f"alerts: budget mode, about {settings.alert_budget_per_day} a day of "
            f"~{settings.expected_tx_per_day:,} transactions "
            "(FRAUDSTREAM_DECISION=threshold for a fixed threshold)"
        )
    else:
        echo(f"alerts: score >= {settings.alert_threshold} (threshold mode)")
    echo(
        f"simulating {plan.customers} cards at {plan.terminals} terminals over {plan.days} "
        f"days at {plan.speed:,.0f}x event time (labels {plan.label_delay_days:g} days later)"
    )

    alerts = make_consumer(settings.bootstrap_servers, client_id="demo-alerts", group_id=None)
    partitions = alerts.partitions_for_topic(settings.topic_alerts) or {0}
    alerts.assign([TopicPartition(settings.topic_alerts, p) for p in sorted(partitions)])
    alerts.seek_to_end()
    shown = 0
    next_status = time.monotonic() + 5
    idle_since: float | None = None
    m = app.metrics
    try:
        while service.is_alive():
            for batch in alerts.poll(timeout_ms=500).values():
                for record in batch:
                    if shown < plan.max_alert_lines:
                        echo(_alert_line(record.value))
                    elif shown == plan.max_alert_lines:
                        echo("... (further alerts counted in the status line)")
                    shown += 1
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + 5
                echo(
                    f"status: {_value(m.processed):,.0f} scored, {_value(m.alerts):,.0f} alerts, "
                    f"{_value(m.dead_lettered):,.0f} dead letters, {_value(m.labels_learnt):,.0f}"
                    f" labels learnt, model version {_value(m.model_version):.0f}"
                )
            if feed_errors:
                raise feed_errors[0]
            if fed and _value(m.processed) >= fed[0].transactions:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 5:
                    break
    except KeyboardInterrupt:
        echo("interrupted")
    finally:
        alerts.close()
        app.stop()
        service.join(timeout=60)
    stats = fed[0] if fed else None
    if stats:
        echo(
            f"done: {stats.transactions:,} transactions ({stats.frauds:,} frauds planted) and "
            f"{stats.labels:,} labels fed; {_value(m.processed):,.0f} scored, "
            f"{_value(m.alerts):,.0f} alerts, model version {_value(m.model_version):.0f}"
        )
