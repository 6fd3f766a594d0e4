"""The service's own commands: ``serve``, ``config`` and ``schemas``.

They take the :class:`~fraudstream.service.settings.Settings` built once by the
``fraudstream`` command (:mod:`fraudstream.cli`) from the click context.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from fraudstream.service.cli_options import writing_to
from fraudstream.service.kafka.connection import KafkaConnection
from fraudstream.service.schemas import json_schemas
from fraudstream.service.settings import Role, Settings

log = logging.getLogger(__name__)

INSECURE_KEY_WARNING = (
    "INSECURE: model versions are signed with the built-in development key, so anyone "
    "can forge a model this service will load; set FRAUDSTREAM_MODEL_SIGNING_KEY to a secret "
    "(e.g. `openssl rand -hex 32`) - only `fraudstream demo` is meant to run without one"
)


def uses_default_signing_key(settings: Settings) -> bool:
    """Whether model versions are signed with the published default key (or an empty one)."""
    default = Settings.model_fields["model_signing_key"].default
    key = settings.model_signing_key.get_secret_value()
    return key in ("", default.get_secret_value())


def settings_table() -> str:
    """Markdown table of every setting, its default and meaning (the README's table)."""
    defaults = Settings.model_construct().masked()
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = defaults[name]
        shown = "(unset)" if default is None else f"`{getattr(default, 'value', default)}`"
        rows.append(f"| `FRAUDSTREAM_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


@click.command()
@click.option("--markdown", is_flag=True, help="Print the documentation table instead.")
@click.pass_context
def config(ctx: click.Context, markdown: bool) -> None:
    """Print every setting with its current value (secrets masked) and meaning.

    Invalid settings are shown too, marked INVALID with the reason, and the
    command then exits with status 1: every other command refuses to start
    until they are fixed.
    """
    if markdown:
        click.echo(settings_table())
        return
    settings: Settings = ctx.obj
    # Filled by the `fraudstream` group when some values failed validation.
    invalid: dict[str, tuple[object, str]] = ctx.meta.get("fraudstream.invalid_settings", {})
    masked = settings.masked()
    for name, field in Settings.model_fields.items():
        if name in invalid:
            given, problem = invalid[name]  # already masked by the `fraudstream` group
            click.echo(
                f"FRAUDSTREAM_{name.upper()}={given}  "
                + click.style(f"<- INVALID: {problem}", fg="red", bold=True)
            )
        else:
            value = masked[name]
            shown = "" if value is None else getattr(value, "value", value)  # empty: unset
            click.echo(f"FRAUDSTREAM_{name.upper()}={shown}")
        click.echo(f"    {field.description}")
    for variable, (given, problem) in invalid.items():
        if variable not in Settings.model_fields:  # a FRAUDSTREAM_* variable that is no setting
            click.echo(f"{variable}={given}  " + click.style(f"<- INVALID: {problem}", fg="red"))
    if invalid:
        names = ", ".join(
            name if name.startswith("FRAUDSTREAM_") else f"FRAUDSTREAM_{name.upper()}"
            for name in invalid
        )
        raise click.ClickException(
            f"{len(invalid)} invalid setting(s): {names}; fix or unset them "
            "(environment or .env) before running other commands"
        )


@click.command()
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("schemas"),
    show_default=True,
    help="Folder for <name>.schema.json files.",
)
def schemas(output_dir: Path) -> None:
    """Write the JSON Schemas of every message (transaction, label, alert, score)."""
    with writing_to(output_dir, "the schemas", "--output-dir"):
        output_dir.mkdir(parents=True, exist_ok=True)
        for name, schema in json_schemas().items():
            path = output_dir / f"{name}.schema.json"
            path.write_text(json.dumps(schema, indent=2) + "\n")
            click.echo(f"wrote {path}")


@click.command()
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=None,
    help="Override FRAUDSTREAM_ROLE: all (default), scorer or learner.",
)
@click.option(
    "--scorers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Scorer processes in one consumer group (plus one learner process unless "
    "--role scorer), supervised: metrics ports count up from FRAUDSTREAM_METRICS_PORT.",
)
@click.pass_obj
def serve(settings: Settings, role: str | None, scorers: int) -> None:
    """Run the service: score transactions, publish alerts, learn from labels.

    With --scorers N (N > 1) this process supervises N scorer processes and the
    learner: SIGTERM/SIGINT stops them all; a crashed one is reported and
    restarted (5 crashes of one child within 60 s stop everything, exit 1).
    """
    if role is not None:
        settings = settings.model_copy(update={"role": Role(role)})
    if scorers > 1:
        _supervise(settings, scorers)
        return
    from fraudstream.service.app import Application

    app = Application(settings)
    app.install_signal_handlers()
    if uses_default_signing_key(settings):
        app.metrics.insecure_signing_key.set(1)
        log.warning(INSECURE_KEY_WARNING)
    if (short := short_snapshot_ttl(settings.snapshot_ttl_s)) is not None:
        log.warning(short)
    log.info(
        "fraudstream serving (role %s) on %s; metrics on http://%s:%s/metrics",
        settings.role.value,
        KafkaConnection.from_settings(settings).describe(),  # never a secret
        settings.metrics_host,
        settings.metrics_port,
    )
    app.run()
    log.info("fraudstream stopped")


#: Snapshots kept for less than this likely expire before their labels come (the
#: Fraud Detection Handbook's labels come 7 days after the transaction).
SHORT_SNAPSHOT_TTL_S = 7 * 86_400


def short_snapshot_ttl(ttl_s: int) -> str | None:
    """The warning for a snapshot TTL shorter than :data:`SHORT_SNAPSHOT_TTL_S`, else ``None``.

    Examples
    --------
    >>> short_snapshot_ttl(45 * 86_400) is None
    True
    >>> "259200 s (3.0 days)" in short_snapshot_ttl(3 * 86_400)
    True
    >>> print(short_snapshot_ttl(3600))  # doctest: +NORMALIZE_WHITESPACE
    FRAUDSTREAM_SNAPSHOT_TTL_S is 3600 s (1.0 h): a label that comes later than that
    finds no snapshot, is dead-lettered to the labels' dead-letter topic and is not learnt;
    keep snapshots longer than the longest label delay (default 45 days)
    """
    if ttl_s >= SHORT_SNAPSHOT_TTL_S:
        return None
    span = f"{ttl_s / 3600:.1f} h" if ttl_s < 86_400 else f"{ttl_s / 86_400:.1f} days"
    return (
        f"FRAUDSTREAM_SNAPSHOT_TTL_S is {ttl_s} s ({span}): a label that "
        "comes later than that finds no snapshot, is dead-lettered to the labels' dead-letter "
        "topic and is not learnt; keep snapshots longer than the longest label delay "
        "(default 45 days)"
    )


def _supervise(settings: Settings, scorers: int) -> None:
    from fraudstream.service.supervisor import Supervisor, child_specs

    try:
        specs = child_specs(settings, scorers)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    supervisor = Supervisor(specs)
    supervisor.install_signal_handlers()
    click.echo(
        f"fraudstream serving with {scorers} scorer processes"
        f"{' and a learner' if settings.role is Role.ALL else ''} in group "
        f"{settings.consumer_group} on {settings.bootstrap_servers}",
        err=True,
    )
    code = supervisor.run()
    if code:
        raise click.exceptions.Exit(code)


#: The service's commands, mounted by :mod:`fraudstream.cli`.
COMMANDS: list[click.Command] = [serve, config, schemas]
