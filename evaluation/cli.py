"""``fraudstream evaluate``: detection quality on a labelled stream, the handbook's way."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from fraudstream.producers.cli import column_map, extras_option, parse_time, simulation_config
from fraudstream.service.cli_options import (
    BOOTSTRAP_SERVERS,
    REDIS_URL,
    FloatRange,
    not_enough_memory,
    writing_to,
)
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.model import CATALOGUE
from fraudstream.service.settings import Settings

if TYPE_CHECKING:
    from fraudstream.evaluation.metrics import Assessment
    from fraudstream.evaluation.report import Protocol
    from fraudstream.evaluation.stream import LabelledStream


def _models(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    unknown = [m for m in names if m not in CATALOGUE]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown model(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(CATALOGUE)}",
            param_hint="--models",
        )
    return names


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--assessment-start"
        ) from None


@click.command("evaluate")
@click.argument(
    "file",
    required=False,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Format of FILE (default: from its name).",
)
@click.option(
    "--preset",
    type=click.Choice(["handbook"]),
    help="Column preset of FILE: the Fraud Detection Handbook's CSV, read as is.",
)
@click.option(
    "--map",
    "pairs",
    multiple=True,
    metavar="SOURCE=FIELD",
    help="Rename a column of FILE (repeatable).",
)
@click.option("--assume-utc", is_flag=True, help="FILE: read timestamps without an offset as UTC.")
@click.option(
    "--simulate",
    "simulate_",
    is_flag=True,
    help="Evaluate on a simulated stream (fraudstream simulate's options below).",
)
@click.option("--days", type=click.IntRange(min=1), default=183, show_default=True)
@click.option("--customers", type=click.IntRange(min=1), default=5_000, show_default=True)
@click.option("--terminals", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option(
    "--start",
    default="2018-04-01",
    show_default=True,
    help="Simulation start (ISO date/time, epoch ms, 'today').",
)
@extras_option
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the simulation, of the label delays and of the bootstrap.",
)
@click.option(
    "--models",
    default=",".join(CATALOGUE),
    show_default=True,
    help="Models compared side by side (the rules prior always is).",
)
@click.option(
    "--label-delay-days",
    type=FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Delay of every label not found early.",
)
@click.option(
    "--early-fraud-share",
    type=FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of frauds labelled before the delay.",
)
@click.option(
    "--warmup-days",
    type=click.IntRange(min=0),
    default=14,
    show_default=True,
    help="First days never assessed.",
)
@click.option(
    "--assessment-start",
    help="First test day (default 2018-08-08 when in the stream, else the last whole weeks).",
)
@click.option("--assessment-weeks", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--remove-known/--keep-known",
    default=True,
    show_default=True,
    help="Leave out cards already known compromised on each test day.",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="k of card precision@k (cards checked per day).",
)
@click.option(
    "--min-frauds",
    type=click.IntRange(min=0),
    default=None,
    help="Serving policy: frauds among a model's recent labels before it may serve "
    "(default: FRAUDSTREAM_MIN_FRAUDS_FOR_MODEL, 20).",
)
@click.option(
    "--batch-s",
    type=click.IntRange(min=1),
    default=3600,
    show_default=True,
    help="Event-time length of a batch (in-process).",
)
@click.option(
    "--store",
    type=click.Choice(["redis", "reference"]),
    default="redis",
    show_default=True,
    help="Feature store (in-process).",
)
@click.option(
    "--redis-url", type=REDIS_URL, help="Redis to use (default: one started for the run)."
)
@click.option(
    "--via",
    type=click.Choice(["in-process", "kafka"]),
    default="in-process",
    show_default=True,
    help="kafka: the deployed path, real Kafka + Redis + the service's Application.",
)
@click.option(
    "--bootstrap-servers",
    type=BOOTSTRAP_SERVERS,
    help="--via kafka: broker to use (default: one started).",
)
@click.option(
    "--speed",
    type=FloatRange(min=1),
    default=43_200.0,
    show_default=True,
    help="--via kafka: event seconds per wall second.",
)
@click.option(
    "--ceiling",
    is_flag=True,
    help="Add the protocol's ceiling: reference scorers that read the simulated frauds' "
    "scenarios and find every fraud visible at scoring time (needs scenarios, e.g. --simulate).",
)
@click.option(
    "--bootstrap",
    "n_boot",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples of the days for the 95 % intervals (0: none).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write report.json, report.md and PNG plots here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON line, last.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.pass_context
def evaluate_cmd(ctx: click.Context, /, **opts: Any) -> None:
    """Detection quality of the models on a labelled stream, measured the handbook's way.

    Replays FILE (labelled transactions, - for standard input; --preset handbook
    reads the Fraud Detection Handbook's CSV) or a --simulate'd stream through the service's own
    features and models: every transaction is scored before its label exists,
    labels arrive --label-delay-days later and are learnt only then, each model
    replaces the rules prior once its quality on recent labels beats the prior's.
    Assessed on the handbook's test weeks, known-compromised cards left out:
    ROC AUC, average precision, card precision@k, with 95 % bootstrap intervals.
    """
    settings: Settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    if opts["report_dir"] is not None:  # checked before the run, not after it
        with writing_to(opts["report_dir"], "the report", "--report folder"):
            opts["report_dir"].mkdir(parents=True, exist_ok=True)
    try:
        report, extras = run_evaluation(settings, opts)
    except (FraudstreamError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except MemoryError as exc:  # e.g. numpy's "Unable to allocate 14.2 PiB for an array ..."
        raise not_enough_memory(
            exc, "give fewer --customers, --terminals or --days, or a smaller FILE"
        ) from exc
    from fraudstream.evaluation import report as rep

    click.echo(rep.table(report))
    if opts["report_dir"] is not None:
        with writing_to(opts["report_dir"], "the report", "--report folder"):
            written = write_report(report, extras, opts["report_dir"])
        click.echo(f"report written to {opts['report_dir']}: {', '.join(written)}", err=True)
    if opts["as_json"]:
        click.echo(json.dumps(report, separators=(",", ":")))


def run_evaluation(
    settings: Settings, opts: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the stream, replay it, assess it: the report and what the plots need."""
    from fraudstream.evaluation.prequential import ReplayConfig, replay
    from fraudstream.evaluation.report import Protocol, build_report
    from fraudstream.evaluation.stream import LabelledStream
    from fraudstream.producers.simulator import SimulationConfig, simulate
    from fraudstream.service.features.definitions import FeatureConfig
    from fraudstream.service.serving import ServingPolicy

    if opts["file"] is None and not opts["simulate_"]:
        raise click.UsageError("give a FILE of labelled transactions, or --simulate")
    if opts["file"] is not None and opts["simulate_"]:
        raise click.UsageError("give a FILE or --simulate, not both")
    models = _models(opts["models"])
    if opts["simulate_"]:
        sim = simulate(
            simulation_config(
                seed=opts["seed"],
                n_customers=opts["customers"],
                n_terminals=opts["terminals"],
                n_days=opts["days"],
                start=parse_time(opts["start"], "--start"),
                extras=frozenset(opts["extras"]),
            )
        )
        stream = LabelledStream.from_simulation(sim)
    else:
        stream = LabelledStream.from_file(
            opts["file"],
            fmt=opts["fmt"],
            preset=opts["preset"],
            mapping=column_map(opts["pairs"]),  # the preset is applied by the reader
            assume_utc=True if opts["assume_utc"] else None,
            seed=opts["seed"],
        )
    if opts["ceiling"] and stream.scenario is None:
        raise click.UsageError(
            "--ceiling needs the frauds' scenarios: --simulate, or a file with fraud_scenario"
        )
    config = ReplayConfig(
        models=models,
        label_delay_days=opts["label_delay_days"],
        early_fraud_share=opts["early_fraud_share"],
        batch_s=opts["batch_s"],
        policy=dataclasses.replace(
            ServingPolicy.from_settings(settings),
            **({} if opts["min_frauds"] is None else {"min_frauds": opts["min_frauds"]}),
        ),
    )
    protocol = Protocol(
        assessment_start=_date(opts["assessment_start"]),
        weeks=opts["assessment_weeks"],
        warmup_days=opts["warmup_days"],
        remove_known=opts["remove_known"],
        top_k=opts["top_k"],
        n_boot=opts["n_boot"],
    )
    check_assessable(stream, protocol.assessment(stream, config.label_delay_days), protocol)
    command = "fraudstream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    progress = _Progress(len(stream), enabled=opts["progress"])
    with progress:
        if opts["via"] == "kafka":
            from fraudstream.evaluation.via_kafka import replay_via_kafka

            result = replay_via_kafka(
                stream,
                config,
                settings,
                bootstrap_servers=opts["bootstrap_servers"],
                redis_url=opts["redis_url"],
                speed=opts["speed"],
                progress=progress.update,
            )
        else:
            feature_config = dataclasses.replace(
                FeatureConfig.from_settings(settings), prefix=f"eval{time.time_ns():x}"
            )
            result = replay(
                stream,
                config,
                store=opts["store"],
                feature_config=feature_config,
                redis_url=opts["redis_url"],
                progress=progress.update,
            )
    references: dict[str, np.ndarray] = {}
    if opts["ceiling"]:
        from fraudstream.evaluation.ceiling import ceiling_scores

        references = ceiling_scores(
            stream,
            result.labeled_ms,
            batch_ms=config.batch_s * 1000,
            window_days=float(SimulationConfig().terminal_compromise_days),
        )
    report = build_report(
        stream, result, config, protocol, command=command, via=opts["via"], references=references
    )
    plan = protocol.assessment(stream, config.label_delay_days)
    test = plan.test_mask(stream.day, stream.card, stream.is_fraud)
    extras = {
        "scores": {name: s[test] for name, s in {**result.scores, **references}.items()},
        "labels": stream.is_fraud[test],
    }
    return report, extras


def check_assessable(stream: LabelledStream, plan: Assessment, protocol: Protocol) -> None:
    """Refuse, before the replay, a stream with no transaction to assess.

    A stream shorter than the warm-up (or test weeks outside it) would be
    replayed for nothing and give a table of dashes.

    Raises
    ------
    click.ClickException
        Naming the counts, the dates and the option to change.
    """
    from fraudstream.evaluation.report import day_date

    days = stream.day
    first, last = day_date(int(days.min())), day_date(int(days.max()))
    in_weeks = int((plan.week_of(days) >= 0).sum())
    weeks = f"{day_date(plan.start_day)} .. {day_date(plan.start_day + 7 * plan.weeks - 1)}"
    span = (last - first).days + 1
    name = stream.source.rsplit(" (", 1)[0]
    held = f"{len(stream):,} transactions over {span:,} day(s) ({first} .. {last})"
    if in_weeks == 0 and protocol.assessment_start is not None:
        raise click.ClickException(
            f"{name}: none of its {held} is in the test weeks {weeks}: nothing to assess; "
            "choose an --assessment-start within the stream"
        )
    if in_weeks == 0:
        raise click.ClickException(
            f"{name}: too few transactions after the warm-up: {held}, none after the first "
            f"{protocol.warmup_days} days (--warmup-days): nothing to assess; give a longer "
            f"stream or fewer --warmup-days (at most {max(0, span - 1)} here)"
        )
    if not plan.test_mask(days, stream.card, stream.is_fraud).any():
        raise click.ClickException(
            f"{name}: the {in_weeks:,} transactions of the test weeks {weeks} are all of cards "
            "already known compromised: nothing to assess; --keep-known keeps them"
        )


def write_report(report: dict[str, Any], extras: dict[str, Any], folder: Path) -> list[str]:
    """report.json, report.md and (with matplotlib) the plots; the file names written."""
    from fraudstream.evaluation import report as rep

    folder.mkdir(parents=True, exist_ok=True)
    images: list[str] = []
    try:
        images = rep.plots(report, extras["scores"], np.asarray(extras["labels"], bool), folder)
    except ImportError:
        click.echo(
            "matplotlib is not installed: no plots (pip install 'fraudstream[report]')", err=True
        )
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(rep.markdown(report, images))
    return ["report.json", "report.md", *images]


class _Progress(contextlib.AbstractContextManager["_Progress"]):
    """A progress bar of transactions replayed (stderr)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from fraudstream.producers.sink import progress_bar

        self._bar = progress_bar(total, enabled=enabled, desc="evaluate", unit="tx")
        self._done = 0

    def update(self, done: int, total: int) -> None:
        self._bar.update(done - self._done)
        self._done = done

    def __exit__(self, *exc: object) -> None:
        self._bar.close()
