"""``fraudstream dev`` (local Kafka and Redis) and ``fraudstream demo``.

Development tooling beside the service: nothing in :mod:`fraudstream.service`
imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fraudstream.devstack.stack import DevStack
from fraudstream.service.cli_options import FloatRange
from fraudstream.service.settings import DecisionMode, Settings

#: A decorated command function (click options return it unchanged in type).
_F = TypeVar("_F", bound=Callable[..., Any])


def _folder_option(name: str, default: str, help_text: str) -> Callable[[_F], _F]:
    return click.option(
        name,
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
        help=help_text,
    )


#: A TCP port a server can listen on.
_PORT = click.IntRange(1, 65535)

_cache_option = _folder_option("--cache-dir", ".cache", "Where the Kafka jars go.")
_dev_options = [
    _folder_option("--home", ".cache/dev", "Folder for the servers' data, logs and pid files."),
    _cache_option,
    click.option("--kafka-port", type=_PORT, default=9092, show_default=True),
    click.option("--controller-port", type=_PORT, default=9093, show_default=True),
    click.option("--redis-port", type=_PORT, default=6379, show_default=True),
]


def _with_dev_options(func: _F) -> _F:
    for option in reversed(_dev_options):
        func = option(func)
    return func


def _stack(
    home: Path, cache_dir: Path, kafka_port: int, controller_port: int, redis_port: int
) -> DevStack:
    return DevStack(
        home=home.resolve(),
        cache_dir=cache_dir.resolve(),
        kafka_port=kafka_port,
        controller_port=controller_port,
        redis_port=redis_port,
    )


def _print_status(stack: DevStack) -> bool:
    status = stack.status()
    kafka, redis_status = status["kafka"], status["redis"]
    ok = bool(kafka["healthy"]) and bool(redis_status["healthy"])
    if kafka["healthy"]:
        click.echo(
            f"kafka  UP    Apache Kafka {kafka['version']} (KRaft) at "
            f"{kafka['bootstrap_servers']}, cluster {kafka.get('cluster_id')}, "
            f"{kafka.get('brokers')} broker(s), pid {kafka['pid']}"
        )
    else:
        state = "NOT ANSWERING" if kafka["running"] else "DOWN"
        click.echo(f"kafka  {state}  ({kafka['bootstrap_servers']}; log {kafka['log']})")
    if redis_status["healthy"]:
        click.echo(
            f"redis  UP    Redis {redis_status['version']} at {redis_status['url']}, "
            f"pid {redis_status['pid']}"
        )
    else:
        state = "NOT ANSWERING" if redis_status["running"] else "DOWN"
        click.echo(f"redis  {state}  ({redis_status['url']}; log {redis_status['log']})")
    return ok


@click.group()
def dev() -> None:
    """Local Kafka (KRaft, from Maven jars) and Redis (redis-server) for development."""


@dev.command("up")
@_with_dev_options
def dev_up(**options: Any) -> None:
    """Install what is missing, start Kafka and Redis, and show that they answer."""
    stack = _stack(**options)
    stack.up()
    if not _print_status(stack):
        raise click.ClickException("the dev stack started but is not healthy; see the logs above")


@dev.command("down")
@_with_dev_options
def dev_down(**options: Any) -> None:
    """Stop Kafka and Redis (data stays in --home; delete it to start afresh)."""
    stack = _stack(**options)
    stack.down()
    click.echo("kafka and redis stopped")


@dev.command("status")
@_with_dev_options
def dev_status(**options: Any) -> None:
    """Show whether Kafka and Redis run and answer (exit 1 when not)."""
    if not _print_status(_stack(**options)):
        sys.exit(1)


@dev.command("fetch")
@_cache_option
def dev_fetch(cache_dir: Path) -> None:
    """Fetch the Kafka jars with Maven and install redis-server if missing (no start)."""
    from fraudstream.devstack import ensure_redis_installed, fetch_kafka_jars
    from fraudstream.devstack.kafka import find_java

    find_java()
    libs = fetch_kafka_jars(cache_dir, progress=lambda line: click.echo(line, err=True))
    click.echo(f"kafka jars: {libs} ({len(list(libs.glob('*.jar')))} jars)")
    click.echo(f"redis-server: {ensure_redis_installed()}")


@click.command()
@_with_dev_options
@click.option("--customers", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--terminals", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option(
    "--days", type=click.IntRange(min=1), default=21, show_default=True, help="Simulated days."
)
@click.option(
    "--speed",
    type=FloatRange(min=0, allow_inf=True),
    default=20_000,
    show_default=True,
    help="Event seconds per wall second (20,000: a day in ~4 s).",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, help="Simulation seed (default: random)."
)
@click.option(
    "--record-metrics",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Record the service's metrics every 2 s to this JSON Lines file "
    "(input of `fraudstream dev dashboard-picture`).",
)
@click.pass_obj
def demo(
    settings: Settings,
    /,
    customers: int,
    terminals: int,
    days: int,
    speed: float,
    seed: int | None,
    record_metrics: Path | None,
    **dev_options: Any,
) -> None:
    """Bring up Kafka and Redis, run the service on a simulated stream, show alerts."""
    import random

    from fraudstream.devstack.demo import DemoPlan, run_demo
    from fraudstream.producers.cli import simulation_config

    # Refused (naming the option) before any server starts.
    simulation_config(n_customers=customers, n_terminals=terminals, n_days=days)
    stack = _stack(**dev_options)
    # The simulator's cards make ~2 transactions a day. A fraud team reviews a
    # fixed number of cards a day, so the demo runs in budget mode sized to 1 %.
    # An explicit FRAUDSTREAM_DECISION (or budget settings) wins.
    per_day = 2 * customers
    demo_decision: dict[str, object] = {
        "decision": DecisionMode.BUDGET,
        "expected_tx_per_day": per_day,
        "alert_budget_per_day": max(1, per_day // 100),
    }
    # The dev stack's own servers: plain, whatever security settings are around.
    settings = settings.with_local_servers(
        bootstrap_servers=stack.kafka.bootstrap_servers, redis_url=stack.redis.url
    ).model_copy(
        update={k: v for k, v in demo_decision.items() if k not in settings.model_fields_set}
    )
    plan = DemoPlan(
        customers=customers,
        terminals=terminals,
        days=days,
        speed=speed,
        seed=random.randrange(1_000_000) if seed is None else seed,
        metrics_out=record_metrics,
    )
    run_demo(settings, stack, plan)


@dev.command("dashboard-picture")
@click.option(
    "--metrics",
    "metrics_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="Metrics recorded by `fraudstream demo --record-metrics FILE` (-: standard input).",
)
@click.option(
    "--dashboard",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Grafana dashboard JSON (default: deploy/grafana/dashboards/fraudstream.json).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("docs/dashboard.png"),
    show_default=True,
)
def dashboard_picture(metrics_file: Path, dashboard: Path | None, output: Path) -> None:
    """Draw the Grafana dashboard's panels from recorded metrics into a PNG."""
    import json

    from fraudstream.devstack.dashboard import DASHBOARD, Recording, render

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "matplotlib is needed to draw the picture: pip install 'fraudstream[dev]'"
        ) from None
    from fraudstream.producers.files import StreamClosedError, check_stdio

    board_file = dashboard or DASHBOARD
    try:
        board = json.loads(board_file.read_text())
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{board_file}: not a Grafana dashboard (JSON: {exc})") from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"{board_file}: not a Grafana dashboard (not text: {exc.reason})"
        ) from exc
    except OSError as exc:
        where = exc.filename or board_file
        raise click.ClickException(f"{where}: {exc.strerror or exc}") from exc
    try:
        if str(metrics_file) == "-":
            check_stdio(metrics_file, output=False)
            recording = Recording.parse(sys.stdin.read(), "<stdin>")
        else:
            recording = Recording.load(metrics_file)
    except StreamClosedError as exc:
        raise click.ClickException(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{metrics_file}: not text ({exc.reason})") from exc
    except ValueError as exc:  # a line that is not a scrape
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = exc.filename or metrics_file
        raise click.ClickException(f"{where}: {exc.strerror or exc}") from exc
    if not isinstance(board, dict) or not isinstance(board.get("panels"), list):
        raise click.ClickException(f"{board_file}: not a Grafana dashboard (no panels list)")
    if len(recording.times) < 2:
        raise click.ClickException(f"{metrics_file}: fewer than two scrapes recorded")
    click.echo(f"wrote {render(board, recording, output)}")


#: The dev-stack commands, mounted by :mod:`fraudstream.cli`.
COMMANDS: list[click.Command] = [dev, demo]
