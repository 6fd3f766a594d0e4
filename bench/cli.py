"""``fraudstream bench``: benchmarks of the service, run against real Kafka and Redis.

Mounted in :mod:`fraudstream.service.cli` with ``main.add_command(bench)``; also runnable on
its own: ``python -m fraudstream.bench.cli pipeline --events 20000``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from fraudstream.bench.pipeline import (
    PipelineBenchConfig,
    public_result,
    run_pipeline_bench,
    write_results,
)
from fraudstream.service.settings import Settings


@click.group()
def bench() -> None:
    """Benchmarks (results go to bench/results/)."""


@bench.command()
@click.option(
    "--events",
    type=click.IntRange(min=1000),
    default=200_000,
    show_default=True,
    help="Transactions pre-loaded and scored.",
)
@click.option(
    "--naive-events",
    type=click.IntRange(min=100),
    default=10_000,
    show_default=True,
    help="Transactions the (slow) naive loop processes.",
)
@click.option(
    "--latency-seconds",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Length of the offered-load latency phase (0: skip).",
)
@click.option(
    "--latency-rate",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Offered rate of the latency phase, tx/s.",
)
@click.option("--partitions", type=click.IntRange(min=1), default=6, show_default=True)
@click.option(
    "--bootstrap-servers", default=None, help="Use this running Kafka instead of starting one."
)
@click.option("--redis-url", default=None, help="Use this running Redis instead of starting one.")
@click.option(
    "--profile/--no-profile",
    default=True,
    show_default=True,
    help="Profile a second scorer run with pyinstrument (bench/results/).",
)
@click.option(
    "--profile-events",
    type=click.IntRange(min=1000),
    default=None,
    help="Events of the profiled run (default: --events).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench/results/pipeline.json"),
    show_default=True,
    help="Results JSON; the Markdown summary goes next to it (.md).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the results as one JSON object on the last line."
)
@click.pass_context
def pipeline(
    ctx: click.Context,
    events: int,
    naive_events: int,
    latency_seconds: float,
    latency_rate: int,
    partitions: int,
    bootstrap_servers: str | None,
    redis_url: str | None,
    profile: bool,
    profile_events: int | None,
    seed: int,
    output: Path,
    as_json: bool,
) -> None:
    """Throughput, latency and memory of one scorer process vs a naive per-event loop.

    Starts its own Kafka and Redis (unless given), pre-loads simulated
    transactions and measures, in one run: a raw consume loop, the real scorer,
    a naive per-event loop, latency at a fixed offered rate, and Redis memory.
    """
    settings = ctx.find_object(Settings)
    if settings is None:
        settings = Settings()
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("kafka").setLevel(logging.WARNING)
    config = PipelineBenchConfig(
        events=events,
        naive_events=naive_events,
        latency_seconds=latency_seconds,
        latency_rate=latency_rate,
        partitions=partitions,
        bootstrap_servers=bootstrap_servers,
        redis_url=redis_url,
        profile=profile,
        profile_events=profile_events,
        seed=seed,
        results_dir=output.parent,
    )
    result = run_pipeline_bench(
        config, settings, progress=lambda message: click.echo(f"bench: {message}", err=True)
    )
    summary = write_results(result, output.parent, output)
    click.echo(summary)
    click.echo(f"wrote {output} and {output.with_suffix('.md')}")
    if as_json:
        click.echo(json.dumps(public_result(result), default=str))


if __name__ == "__main__":
    bench()
