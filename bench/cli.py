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

from fraudstream.bench.peer_quix import INSTALL_HINT, quix_available
from fraudstream.bench.pipeline import (
    PipelineBenchConfig,
    public_result,
    run_pipeline_bench,
    write_results,
)
from fraudstream.service.cli_options import BOOTSTRAP_SERVERS, REDIS_URL, FloatRange
from fraudstream.service.settings import Settings


def _counts(value: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; a clear usage error otherwise.

    >>> _counts("1, 2"), _counts("3")
    ((1, 2), (3,))
    """
    try:
        counts = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        counts = ()
    if not counts or any(n < 1 for n in counts):
        raise click.BadParameter(f"expected positive whole numbers like 1,2; got {value!r}")
    return counts


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
    type=FloatRange(min=0),
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
    "--bootstrap-servers",
    type=BOOTSTRAP_SERVERS,
    default=None,
    help="Use this running Kafka instead of starting one.",
)
@click.option(
    "--redis-url",
    type=REDIS_URL,
    default=None,
    help="Use this running Redis instead of starting one.",
)
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
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--scorers",
    "scorer_counts",
    default="1",
    show_default=True,
    callback=lambda ctx, param, value: _counts(value),
    help="Scorer process counts to measure one after the other, comma separated (e.g. 1,2): "
    "N processes in one consumer group on the same topic, aggregate rate; the first is "
    "the headline figure.",
)
@click.option(
    "--peer",
    type=click.Choice(["none", "quix"]),
    default="none",
    show_default=True,
    help="Also run a Quix Streams application doing the same job on the same topic "
    "(needs the bench extra: pip install -e '.[bench]').",
)
@click.option(
    "--redis-cluster",
    is_flag=True,
    help="Also run the scorer (the first --scorers count) on a local Redis Cluster (3 masters, "
    "3 replicas) started for the run: its rate and Redis CPU next to the single node's.",
)
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
    scorer_counts: tuple[int, ...],
    peer: str,
    redis_cluster: bool,
    output: Path,
    as_json: bool,
) -> None:
    """Throughput, latency and memory of the scorer vs a peer and a naive per-event loop.

    Starts its own Kafka and Redis (unless given), pre-loads simulated
    transactions and measures, in one run: a raw consume loop, the real scorer
    (for each --scorers count), the Quix Streams peer (--peer quix), a naive
    per-event loop, latency at a fixed offered rate, Redis memory, and CPU per
    transaction of the scorer, Redis and the broker.
    """
    if peer == "quix" and not quix_available():
        raise click.UsageError(f"--peer quix needs Quix Streams: {INSTALL_HINT}")
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
        scorers=scorer_counts,
        peer=None if peer == "none" else peer,
        redis_cluster=redis_cluster,
    )
    result = run_pipeline_bench(
        config, settings, progress=lambda message: click.echo(f"bench: {message}", err=True)
    )
    summary = write_results(result, output.parent, output)
    click.echo(summary)
    click.echo(f"wrote {output} and {output.with_suffix('.md')}")
    if as_json:
        click.echo(json.dumps(public_result(result), default=str))


@bench.command("hot-card")
@click.option("--batches", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--hot-share",
    type=FloatRange(0.0, 1.0),
    default=1.0,
    show_default=True,
    help="Share of each batch of 2,000 on the one hot card.",
)
@click.option(
    "--cap",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Most records a card keeps (card_history_max); 0: the default.",
)
@click.option(
    "--redis-url",
    type=REDIS_URL,
    default=None,
    help="Use this running Redis instead of starting one.",
)
def hot_card(batches: int, hot_share: float, cap: int, redis_url: str | None) -> None:
    """One card taking a share of every batch (card testing): time and memory per batch."""
    from fraudstream.bench.hot_card import hot_card_batches

    for row in hot_card_batches(redis_url, batches, hot_share, cap):
        click.echo(
            f"batch {row.batch}: {row.seconds * 1000:,.0f} ms, hot card history "
            f"{row.hot_records:,} records, peak RSS {row.max_rss_mb:,.0f} MB"
        )


@bench.command("trees")
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--events", type=click.IntRange(min=1000), default=100_000, show_default=True)
@click.option(
    "--bad-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Make every n-th transaction invalid (a negative amount); 0: none.",
)
@click.option("--rounds", type=click.IntRange(min=1), default=4, show_default=True)
def trees(old: Path, new: Path, events: int, bad_every: int, rounds: int) -> None:
    """The real scorer of two checkouts (e.g. a `git worktree` of main and yours), alternating."""
    from fraudstream.bench.trees import compare_trees

    cache = Path(__file__).resolve().parent.parent / ".cache"
    checkouts = {"old": old.resolve(), "new": new.resolve()}
    for row in compare_trees(
        checkouts, events=events, bad_every=bad_every, rounds=rounds, cache_dir=cache
    ):
        click.echo(
            f"round {row.round} {row.tree}: {row.tx_per_s:,.0f} tx/s, scorer "
            f"{row.cpu_us_per_tx:.1f} µs CPU per transaction (load {row.load_1m:.1f})"
        )


if __name__ == "__main__":
    bench()
