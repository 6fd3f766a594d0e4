"""Click commands of the producers: ``simulate``, ``produce``, ``record``, ``replay``.

They are plain commands, mounted by the main ``fraudstream`` group (which
puts the one :class:`fraudstream.service.settings.Settings` in ``ctx.obj``)::

    for command in fraudstream.producers.cli.COMMANDS:
        main.add_command(command)

Every expected failure (bad file, bad option, broker down, failed delivery)
ends with a one-line :class:`click.ClickException`.

SIGINT (Ctrl-C) and SIGTERM stop every command cleanly, with one line saying
what was done. ``record --follow``, whose normal end is such a stop, exits 0;
a run cut short (``simulate -o``, ``produce``, ``replay``, ``record`` of a
range) exits 128 + the signal's number (130, 143), so that a script never
takes a partial output for a whole one. Files are closed complete, whole
lines only.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from fraudstream.producers.files import (
    HANDBOOK_MAPPING,
    BadRowError,
    FileFormatError,
    check_stdio,
    detect_format,
    display_name,
    is_stdio,
)
from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import EXTRA_SCENARIOS, SimulationConfig, simulate
from fraudstream.producers.sink import RunCancelledError
from fraudstream.service.cli_options import TOPIC, FloatRange, not_enough_memory
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.settings import DAY_S, Settings

if TYPE_CHECKING:
    from fraudstream.producers.stream import StreamStats

#: Bad rows printed one by one before the rest are only counted.
_BAD_ROWS_SHOWN = 10
#: The last epoch millisecond a time option takes (9999-12-31T23:59:59.999Z).
_MAX_EPOCH_MS = 253_402_300_799_999


def _settings() -> Settings:
    obj = click.get_current_context().find_object(Settings)
    if obj is None:
        raise click.ClickException("internal: no Settings in the click context (ctx.obj)")
    return obj


@contextmanager
def _errors(smaller: str = "make the run smaller") -> Iterator[None]:
    """Turn fraudstream's and the OS's errors into one-line CLI errors.

    Parameters
    ----------
    smaller
        What to do when the run does not fit in memory (e.g. which options to lower).
    """
    try:
        yield
    except FraudstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}") from exc
    except MemoryError as exc:  # e.g. numpy's "Unable to allocate 14.2 PiB for an array ..."
        raise not_enough_memory(exc, smaller) from exc


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside a deferred section: the run stops where it is, like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalStop:
    """SIGINT and SIGTERM while a command runs.

    Outside :meth:`deferred` a signal raises :class:`_Interrupted` (a
    ``KeyboardInterrupt``), at once. Inside it, where whole records are being
    written, a signal only sets :attr:`signum`, which the writer checks
    (:meth:`requested`) between records: at most one poll (200 ms) or one
    line later.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (from the main thread: a command run elsewhere gets none)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        if not self._deferring:
            raise _Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A section in which a signal only asks the writer to stop."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def requested(self) -> bool:
        """Whether a signal came (the writer stops after the record in hand)."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name (``SIGINT`` when none came: a plain ``KeyboardInterrupt``)."""
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process it stopped."""
        return 128 + (self.signum or signal.SIGINT)


def _stopped(stop: _SignalStop, message: str) -> NoReturn:
    click.echo(f"stopped by {stop.name}: {message}", err=True)
    raise click.exceptions.Exit(stop.exit_code)


@contextmanager
def _signals(nothing_done: str) -> Iterator[_SignalStop]:
    """SIGINT/SIGTERM handled for the block: a stop before any work says ``nothing_done``.

    A producer run cut short (:class:`RunCancelledError`) says what Kafka
    confirmed; either way the exit status is 128 + the signal's number.
    """
    stop = _SignalStop()
    stop.install()
    try:
        yield stop
    except RunCancelledError as exc:
        _stopped(stop, str(exc))
    except KeyboardInterrupt:
        _stopped(stop, nothing_done)
    finally:
        stop.restore()


def parse_time(value: str, name: str) -> datetime:
    """RFC 3339 / ISO date(-time) (naive means UTC), epoch ms, or ``now``/``today``.

    Raises
    ------
    click.BadParameter
        ``value`` is no such time, or one out of range; the error names option ``name``.
    """
    text = value.strip()
    if text == "now":
        return datetime.now(UTC)
    if text == "today":
        return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if text.isdigit():
        try:
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise click.BadParameter(
                f"{value!r} is out of range: epoch ms up to {_MAX_EPOCH_MS} (9999-12-31)",
                param_hint=name,
            ) from None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a time (2018-04-01, 2018-04-01T10:00:00Z, epoch ms, now, today)",
            param_hint=name,
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _speed_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--speed",
        type=FloatRange(min=0, allow_inf=True),
        default=None,
        help="Event seconds per wall second: 1 = real time, 100 = 100x; default as fast as "
        "possible.",
    )(func)


def extras_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--extra``: the simulator's opt-in fraud scenarios (``simulate``, ``evaluate``)."""
    return click.option(
        "--extra",
        "extras",
        multiple=True,
        type=click.Choice(sorted(EXTRA_SCENARIOS)),
        help="Opt-in extra fraud scenario of the simulator (repeatable).",
    )(func)


def _delay_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--early-fraud-prob",
        type=FloatRange(0, 1),
        default=0.3,
        show_default=True,
        help="Probability that a fraud is labelled before the delay.",
    )(func)
    return click.option(
        "--label-delay-days",
        type=FloatRange(min=0, min_open=True),
        default=7.0,
        show_default=True,
        help="Event-time delay of labels.",
    )(func)


def _delay(days: float, early: float) -> LabelDelay:
    delay_s = days * DAY_S
    return LabelDelay(delay_s=delay_s, early_fraud_prob=early, early_min_s=min(3600.0, delay_s))


def simulation_config(**knobs: Any) -> SimulationConfig:
    """The :class:`SimulationConfig` of ``knobs``, its refusals naming the option to change.

    Parameters
    ----------
    **knobs
        Fields of :class:`SimulationConfig`, as the ``simulate`` and ``evaluate
        --simulate`` options give them.

    Raises
    ------
    click.BadParameter
        A population too small for the frauds drawn every day (``--customers``,
        ``--terminals``), or any other value the simulator refuses.
    """
    floors = {
        "n_customers": ("--customers", "customers", SimulationConfig.compromised_customers_per_day),
        "n_terminals": ("--terminals", "terminals", SimulationConfig.compromised_terminals_per_day),
    }
    for field, (option, what, per_day) in floors.items():
        if field in knobs and knobs[field] < per_day:
            raise click.BadParameter(
                f"{knobs[field]} is too few: the simulation compromises {per_day} {what} a day; "
                f"give {option} {per_day} or more",
                param_hint=option,
            )
    try:
        return SimulationConfig(**knobs)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("simulate")
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every draw."
)
@click.option("--customers", type=click.IntRange(min=1), default=5_000, show_default=True)
@click.option("--terminals", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--days", type=click.IntRange(min=1), default=183, show_default=True)
@click.option(
    "--start",
    default="2018-04-01",
    show_default=True,
    help="Midnight of day 0 (ISO date/time, epoch ms, 'today').",
)
@click.option(
    "--radius",
    type=FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Grid distance within which customers use terminals.",
)
@extras_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write transactions (with is_fraud, fraud_scenario) as JSON Lines "
    "(.gz compresses; - is standard output) instead of sending to Kafka.",
)
@click.option(
    "--labels-output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the delayed labels as JSON Lines, in arrival order (- is standard output).",
)
@_delay_options
@_speed_option
@click.option("--no-labels", is_flag=True, help="Kafka: send transactions only.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def simulate_cmd(
    seed: int,
    customers: int,
    terminals: int,
    days: int,
    start: str,
    radius: float,
    extras: tuple[str, ...],
    output: Path | None,
    labels_output: Path | None,
    label_delay_days: float,
    early_fraud_prob: float,
    speed: float | None,
    no_labels: bool,
    progress: bool,
) -> None:
    """Simulate card transactions with known fraud (Fraud Detection Handbook model).

    Without --output/--labels-output, transactions and delayed labels are sent
    to Kafka interleaved in event-time order, keyed by card id.
    """
    from fraudstream.producers.stream import stream_simulation, write_simulation

    config = simulation_config(
        seed=seed,
        n_customers=customers,
        n_terminals=terminals,
        n_days=days,
        start=parse_time(start, "--start"),
        radius=radius,
        extras=frozenset(extras),
    )
    both_stdout = [output, labels_output].count(Path("-")) == 2
    if both_stdout:
        raise click.UsageError("--output and --labels-output cannot both be - (standard output)")
    delay = _delay(label_delay_days, early_fraud_prob)
    with (
        _errors("give fewer --customers, --terminals or --days"),
        _signals("nothing was written or sent") as stop,
    ):
        check_stdio(output, output=True)
        check_stdio(labels_output, output=True)
        if output is not None or labels_output is not None:
            sim = simulate(config)
            with stop.deferred():
                stats = write_simulation(
                    sim,
                    output,
                    labels_output,
                    delay=delay,
                    progress=progress,
                    should_stop=stop.requested,
                )
            if stats.stopped:
                _stopped(stop, _partly_written(stats, len(sim), output, labels_output))
            counts = ", ".join(f"{k} {v:,}" for k, v in sim.scenario_counts().items() if v)
            click.echo(
                f"{len(sim):,} transactions ({sim.fraud_rate:.3%} fraud"
                + (f": {counts}" if counts else "")
                + f") written in {stats.wall_s:.1f} s",
                err=True,
            )
            return
        stats = stream_simulation(
            _settings(),
            config,
            label_delay=None if no_labels else delay,
            speed=speed,
            progress=progress,
        )
    click.echo(
        f"sent {stats.transactions:,} transactions ({stats.frauds:,} fraud) and "
        f"{stats.labels:,} labels in {stats.wall_s:.1f} s",
        err=True,
    )


def _partly_written(
    stats: StreamStats, total: int, output: Path | None, labels_output: Path | None
) -> str:
    """What a stopped ``simulate -o`` wrote, in one line."""
    parts = []
    if output is not None:
        parts.append(f"{stats.transactions:,} of {total:,} transactions to {_shown(output)}")
    if labels_output is not None:
        parts.append(f"{stats.labels:,} of {total:,} labels to {_shown(labels_output)}")
    return (
        f"wrote {' and '.join(parts)} in {stats.wall_s:.1f} s (whole lines; each file is "
        "complete up to there)"
    )


def _shown(path: Path) -> str:
    return "<stdout>" if is_stdio(path) else str(path)


def column_map(pairs: tuple[str, ...], preset: str | None = None) -> dict[str, str] | None:
    """The columns ``--map SOURCE=FIELD`` options rename (after the ``--preset``'s), or ``None``.

    >>> column_map(("TX_AMOUNT = amount",))
    {'TX_AMOUNT': 'amount'}
    >>> column_map(("TX_AMOUNT",))
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: 'TX_AMOUNT' is not SOURCE=FIELD
    """
    mapping: dict[str, str] = dict(HANDBOOK_MAPPING) if preset == "handbook" else {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise click.BadParameter(f"{pair!r} is not SOURCE=FIELD", param_hint="--map")
        mapping[source.strip()] = target.strip()
    return mapping or None


@click.command("produce")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    help="Default: from the file name (.jsonl/.csv, optionally .gz).",
)
@click.option(
    "--preset",
    type=click.Choice(["handbook"]),
    help="Column mapping of the Fraud Detection Handbook's CSV files (implies --assume-utc).",
)
@click.option(
    "--map",
    "pairs",
    multiple=True,
    metavar="SOURCE=FIELD",
    help="Rename a column to a contract field (repeatable); e.g. TX_AMOUNT=amount.",
)
@click.option("--keep-unmapped", is_flag=True, help="Keep columns the mapping does not name.")
@click.option("--assume-utc", is_flag=True, help="Read timestamps without an offset as UTC.")
@click.option(
    "--on-error",
    type=click.Choice(["skip", "stop"]),
    default="skip",
    show_default=True,
    help="Bad rows are always reported; skip them or stop.",
)
@click.option(
    "--labels/--no-labels",
    default=True,
    show_default=True,
    help="Send delayed labels of rows that carry is_fraud.",
)
@_delay_options
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of label delays.",
)
@click.option("--topic", type=TOPIC, help="Transactions topic (default from settings).")
@_speed_option
@click.option("--progress/--no-progress", default=True, show_default=True)
def produce_cmd(
    file: Path,
    fmt: str | None,
    preset: str | None,
    pairs: tuple[str, ...],
    keep_unmapped: bool,
    assume_utc: bool,
    on_error: str,
    labels: bool,
    label_delay_days: float,
    early_fraud_prob: float,
    seed: int,
    topic: str | None,
    speed: float | None,
    progress: bool,
) -> None:
    """Send a JSON Lines or CSV file (gzip ok) to the transactions topic (and labels).

    FILE `-` reads standard input (JSON Lines unless --format csv; gzip is
    recognised). The file is checked before anything is sent: a damaged gzip
    file, a CSV header without a required column, or first rows that are all
    invalid stop the run with nothing sent. Ctrl-C (or SIGTERM) says what Kafka
    confirmed and exits 130 (143).
    """
    from fraudstream.producers.produce import produce_file

    mapping = column_map(pairs, preset)
    name = display_name(file)
    reported = 0

    def report(exc: BadRowError) -> None:
        nonlocal reported
        reported += 1
        if reported <= _BAD_ROWS_SHOWN:
            click.echo(f"{name}:{exc.line}: {exc.reason}", err=True)
        elif reported == _BAD_ROWS_SHOWN + 1:
            click.echo(f"{name}: more bad rows; counted, not shown", err=True)

    with _errors(), _signals("nothing was sent"):
        try:
            check_stdio(file, output=False)
            stats = produce_file(
                _settings(),
                file,
                fmt=fmt or detect_format(file),
                mapping=mapping,
                keep_unmapped=keep_unmapped,
                assume_utc=assume_utc or preset == "handbook",
                stop_on_error=on_error == "stop",
                send_labels=labels,
                label_delay=_delay(label_delay_days, early_fraud_prob),
                seed=seed,
                speed=speed,
                progress=progress,
                on_bad_row=report,
                topic=topic,
            )
        except FileFormatError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"sent {stats.transactions:,} transactions and {stats.labels:,} labels "
        f"from {stats.rows:,} rows; {stats.bad_rows:,} bad rows skipped",
        err=True,
    )


@click.command("record")
@click.option("--topic", type=TOPIC, help="Topic to record (default: the transactions topic).")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Recording file (JSON Lines; .gz compresses; - is standard output).",
)
@click.option("--from-time", help="Start at the first record at/after this time (ISO or epoch ms).")
@click.option("--from-offset", type=click.IntRange(min=0), help="Start offset in every partition.")
@click.option("--to-time", help="Stop before the first record at/after this time.")
@click.option("--to-offset", type=click.IntRange(min=0), help="Stop offset (exclusive).")
@click.option(
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition (repeatable).",
)
@click.option(
    "--follow", is_flag=True, help="Keep recording new records until Ctrl-C (or SIGTERM)."
)
@click.option("--max-records", type=click.IntRange(min=1))
@click.option(
    "--idle-timeout",
    type=FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Stop after this many seconds without a record.",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def record_cmd(
    topic: str | None,
    output: Path,
    from_time: str | None,
    from_offset: int | None,
    to_time: str | None,
    to_offset: int | None,
    partitions: tuple[int, ...],
    follow: bool,
    max_records: int | None,
    idle_timeout: float,
    progress: bool,
) -> None:
    """Capture a topic (keys, values, headers, partitions, timestamps) to a file.

    Ctrl-C or SIGTERM stops it cleanly: every record read is written, the file
    is complete; exit status 0 with --follow, else 130 (143) as the range was
    cut short. A batch damaged in the broker's log is skipped with a warning
    and counted.
    """
    from fraudstream.producers.recorder import record_topic

    if from_time is not None and from_offset is not None:
        raise click.UsageError("give --from-time or --from-offset, not both")
    if to_time is not None and to_offset is not None:
        raise click.UsageError("give --to-time or --to-offset, not both")

    def ms(value: str | None, name: str) -> int | None:
        return None if value is None else round(parse_time(value, name).timestamp() * 1000)

    from_ms, to_ms = ms(from_time, "--from-time"), ms(to_time, "--to-time")
    if from_ms is not None and to_ms is not None and from_ms >= to_ms:
        raise click.BadParameter(
            f"{from_time} is not before --to-time {to_time}: the range holds no record",
            param_hint="--from-time",
        )
    if from_offset is not None and to_offset is not None and from_offset >= to_offset:
        raise click.BadParameter(
            f"{from_offset} is not below --to-offset {to_offset}: the range holds no record",
            param_hint="--from-offset",
        )
    settings = _settings()
    with _errors(), _signals("nothing was recorded") as stop:
        check_stdio(output, output=True)
        with stop.deferred():
            stats = record_topic(
                settings,
                topic or settings.topic_transactions,
                output,
                from_time_ms=from_ms,
                from_offset=from_offset,
                to_time_ms=to_ms,
                to_offset=to_offset,
                partitions=list(partitions) or None,
                follow=follow,
                max_records=max_records,
                idle_timeout_s=idle_timeout,
                progress=progress,
                should_stop=stop.requested,
            )
    summary = (
        f"recorded {stats.records:,} records from {stats.partitions} partition(s) "
        f"to {_shown(output)} in {stats.wall_s:.1f} s"
    )
    if stats.unreadable:
        summary += (
            f"; {stats.unreadable:,} records could not be read (damaged in the broker's log) "
            "and were skipped: the warnings above name them"
        )
    if stats.stopped and not follow:
        _stopped(stop, f"{summary}, before the end of the range (the file is complete up to there)")
    if stats.stopped:
        summary = f"stopped by {stop.name}: {summary}"
    click.echo(summary, err=True)


@click.command("replay")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@click.option("--topic", type=TOPIC, help="Target topic (default: each record's original topic).")
@_speed_option
@click.option(
    "--keep-partitions",
    is_flag=True,
    help="Send to the original partition numbers instead of partitioning by key.",
)
@click.option(
    "--keep-timestamps",
    is_flag=True,
    help="Keep the original record timestamps (default: send time).",
)
@click.option(
    "--skip",
    type=click.IntRange(min=0),
    default=0,
    help="Leave out the first N records in replay order (resumes an interrupted replay).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def replay_cmd(
    file: Path,
    topic: str | None,
    speed: float | None,
    keep_partitions: bool,
    keep_timestamps: bool,
    skip: int,
    progress: bool,
) -> None:
    """Play a recording back, per-key order kept, inter-arrival times scaled by --speed.

    FILE `-` reads the recording from standard input. Ctrl-C (or SIGTERM) says
    what Kafka confirmed and the --skip that resumes the replay, and exits 130
    (143).
    """
    from fraudstream.producers.replayer import replay_file

    with _errors(), _signals("nothing was sent"):
        check_stdio(file, output=False)
        stats = replay_file(
            _settings(),
            file,
            topic=topic,
            speed=speed,
            keep_partitions=keep_partitions,
            keep_timestamps=keep_timestamps,
            progress=progress,
            skip=skip,
        )
    click.echo(f"replayed {stats.records:,} records in {stats.wall_s:.1f} s", err=True)


#: Commands to mount under ``fraudstream``.
COMMANDS: tuple[click.Command, ...] = (simulate_cmd, produce_cmd, record_cmd, replay_cmd)
