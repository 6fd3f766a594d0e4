"""The ``fraudstream`` command.

Settings are built once here, from the environment (``FRAUDSTREAM_*``) and
``.env``, and handed to every sub-command through the click context.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr, ValidationError

from producers.cli import COMMANDS as PRODUCER_COMMANDS
from service.cli_bench import bench as bench_group
from service.cli_model import model as model_group
from service.devstack.stack import DevStack
from service.errors import FraudstreamError
from service.schemas import json_schemas
from service.settings import DecisionMode, Role, Settings


def _settings_error(exc: ValidationError) -> click.ClickException:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return click.ClickException(
        f"invalid setting FRAUDSTREAM_{field.upper()}: {first['msg']} "
        f"(got {first.get('input')!r}); see `fraudstream config`"
    )


class _Group(click.Group):
    """Turns fraudstream's own errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FraudstreamError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="fraudstream")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fraudstream: streaming card-fraud detection on Kafka, Redis and River."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise _settings_error(exc) from exc
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python 3 warns whenever another thread holds the GIL for >100 ms;
    # with a scorer and a learner in one process that is expected, not a fault.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    ctx.obj = settings


def settings_table() -> str:
    """Markdown table of every setting, its default and meaning (the README's table)."""
    defaults = Settings.model_construct().masked()
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = defaults[name]
        shown = getattr(default, "value", default)
        rows.append(f"| `FRAUDSTREAM_{name.upper()}` | `{shown}` | {field.description} |")
    return "\n".join(rows)


@main.command()
@click.option("--markdown", is_flag=True, help="Print the documentation table instead.")
@click.pass_obj
def config(settings: Settings, markdown: bool) -> None:
    """Print every setting with its current value (secrets masked) and meaning."""
    if markdown:
        click.echo(settings_table())
        return
    for name, field in Settings.model_fields.items():
        value = settings.masked()[name]
        click.echo(f"FRAUDSTREAM_{name.upper()}={getattr(value, 'value', value)}")
        click.echo(f"    {field.description}")


@main.command()
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
    help="Folder for <name>.schema.json files.",
)
def schemas(output_dir: Path) -> None:
    """Write the JSON Schemas of every message (transaction, label, alert, score)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = output_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        click.echo(f"wrote {path}")


# --- dev stack --------------------------------------------------------------


def _folder_option(name: str, default: str, help_text: str) -> Any:
    return click.option(
        name,
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
        help=help_text,
    )


_cache_option = _folder_option("--cache-dir", ".cache", "Where the Kafka jars go.")
_dev_options = [
    _folder_option("--home", ".cache/dev", "Folder for the servers' data, logs and pid files."),
    _cache_option,
    click.option("--kafka-port", type=int, default=9092, show_default=True),
    click.option("--controller-port", type=int, default=9093, show_default=True),
    click.option("--redis-port", type=int, default=6379, show_default=True),
]


def _with_dev_options(func: Any) -> Any:
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


@main.group()
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
    from service.devstack import ensure_redis_installed, fetch_kafka_jars
    from service.devstack.kafka import find_java

    find_java()
    libs = fetch_kafka_jars(cache_dir)
    click.echo(f"kafka jars: {libs} ({len(list(libs.glob('*.jar')))} jars)")
    click.echo(f"redis-server: {ensure_redis_installed()}")


@main.command()
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=None,
    help="Override FRAUDSTREAM_ROLE: all (default), scorer or learner.",
)
@click.pass_obj
def serve(settings: Settings, role: str | None) -> None:
    """Run the service: score transactions, publish alerts, learn from labels."""
    from service.app import Application

    if role is not None:
        settings = settings.model_copy(update={"role": Role(role)})
    app = Application(settings)
    app.install_signal_handlers()
    click.echo(
        f"fraudstream serving (role {settings.role.value}) on {settings.bootstrap_servers};"
        f" metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics",
        err=True,
    )
    app.run()


@main.command()
@_with_dev_options
@click.option("--customers", type=int, default=1000, show_default=True)
@click.option("--terminals", type=int, default=2000, show_default=True)
@click.option("--days", type=int, default=21, show_default=True, help="Simulated days.")
@click.option(
    "--speed",
    type=float,
    default=20_000,
    show_default=True,
    help="Event seconds per wall second (20,000: a day in ~4 s).",
)
@click.option("--seed", type=int, default=None, help="Simulation seed (default: random).")
@click.pass_obj
def demo(
    settings: Settings,
    customers: int,
    terminals: int,
    days: int,
    speed: float,
    seed: int | None,
    **dev_options: Any,
) -> None:
    """Bring up Kafka and Redis, run the service on a simulated stream, show alerts."""
    import random

    from service.demo import DemoPlan, run_demo

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
    settings = settings.model_copy(
        update={
            "bootstrap_servers": stack.kafka.bootstrap_servers,
            "redis_url": SecretStr(stack.redis.url),
            **{k: v for k, v in demo_decision.items() if k not in settings.model_fields_set},
        }
    )
    plan = DemoPlan(
        customers=customers,
        terminals=terminals,
        days=days,
        speed=speed,
        seed=random.randrange(1_000_000) if seed is None else seed,
    )
    run_demo(settings, stack, plan)


main.add_command(model_group)
main.add_command(bench_group)
for _command in PRODUCER_COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
