"""``fraudstream model ...``: inspect and manage model versions in the registry.

The group takes the :class:`fraudstream.service.settings.Settings` built once by the
``fraudstream`` CLI from ``click.get_current_context().obj``. Every failure is
one line (``click.ClickException``): unknown version, bad signature, bad file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fraudstream.service.errors import FraudstreamError
from fraudstream.service.learner_lease import lease_holder
from fraudstream.service.model import CATALOGUE, describe
from fraudstream.service.registry import ModelRegistry


def _settings() -> Any:
    obj = click.get_current_context().obj
    if obj is None:
        raise click.ClickException("no settings: run this through the `fraudstream` command")
    return obj


@contextmanager
def _registry() -> Iterator[ModelRegistry]:
    import redis  # local: `model catalogue` works without Redis

    from fraudstream.service.redis_client import redis_client, redis_problem

    settings = _settings()
    client = redis_client(settings)
    try:
        yield ModelRegistry(
            client, settings.redis_prefix, settings.model_signing_key, settings.model_versions_kept
        )
    except FraudstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.RedisError as exc:
        raise click.ClickException(redis_problem(exc, settings)) from exc
    finally:
        client.close()


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


@click.group("model")
def model() -> None:
    """Model catalogue and registry (versions, rollback, export/import)."""


@model.command("catalogue")
def catalogue() -> None:
    """Models that can be chosen with FRAUDSTREAM_MODEL."""
    current = getattr(click.get_current_context().obj, "model", None)
    for name in CATALOGUE:
        mark = "*" if name == current else " "
        click.echo(f"{mark} {name:<16} {describe(name)}")


@model.command("list")
def list_cmd() -> None:
    """Kept versions, oldest first (* = latest)."""
    with _registry() as reg:
        latest = reg.latest_version()
        rows = reg.list()
    if not rows:
        click.echo("no model version published yet")
        return
    click.echo(f"  {'version':>7} {'model':<16} {'labels':>8} {'frauds':>7} {'auc':>6}  created_at")
    for m in rows:
        metrics = m.get("metrics") or {}
        mark = "*" if m.get("version") == latest else " "
        click.echo(
            f"{mark} {m.get('version'):>7} {m.get('model', '?'):<16} "
            f"{m.get('labels_learnt', 0):>8} {m.get('frauds_learnt', 0):>7} "
            f"{_fmt(metrics.get('roc_auc')):>6}  {m.get('created_at', '')}"
        )


@model.command("show")
@click.argument("version", type=int)
def show(version: int) -> None:
    """Verified metadata of VERSION (the signature is checked)."""
    with _registry() as reg:
        cp = reg.load(version)
    click.echo(json.dumps(cp.meta, indent=2, sort_keys=True))


def _refuse_while_learning(reg: ModelRegistry, what: str) -> None:
    """Refuse in one line while a learner holds the lease: its next version would supersede ours."""
    holder = lease_holder(reg.client, reg.prefix)
    if holder is None:
        return
    raise click.ClickException(
        f"a learner is running ({holder}): it learns on from its own model, and its next "
        f"version would supersede the {what}; stop it first (it resumes from the newest "
        "version when started again), or pass --while-learning to publish anyway"
    )


_WHILE_LEARNING = click.option(
    "--while-learning",
    is_flag=True,
    help="Publish even though a learner runs (its next version supersedes this one).",
)


@model.command("rollback")
@click.argument("version", type=int)
@_WHILE_LEARNING
def rollback(version: int, while_learning: bool) -> None:
    """Publish VERSION again as the new latest (scorers pick it up by polling)."""
    with _registry() as reg:
        if not while_learning:
            _refuse_while_learning(reg, "rollback")
        new = reg.rollback(version)
    click.echo(f"version {version} republished as version {new}")


def _write_problem(file: Path, exc: OSError) -> str:
    """Why ``file`` cannot be written, and what to do, in one line."""
    if isinstance(exc, FileNotFoundError):
        return f"cannot write {file}: the folder {file.parent} does not exist; create it first"
    if isinstance(exc, PermissionError):
        return f"cannot write {file}: permission denied; choose a file you may write"
    return f"cannot write {file} ({exc.strerror or exc}); choose another file"


@model.command("export")
@click.argument("version", type=int)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
def export(version: int, file: Path) -> None:
    """Write VERSION, with its signature, to FILE (-: standard output)."""
    with _registry() as reg:
        text = reg.exported(version)
    if str(file) == "-":
        click.echo(text)
        click.echo(f"version {version} written to standard output", err=True)
        return
    try:
        file.write_text(text)
    except OSError as exc:
        raise click.ClickException(_write_problem(file, exc)) from exc
    click.echo(f"version {version} written to {file}")


def _read_stdin() -> str:
    """Standard input as text, refused in one line when the process has none (closed)."""
    stream = sys.stdin
    if stream is None or stream.closed:
        raise click.ClickException(
            "standard input is closed, so - has nothing to read; give a file name, or pipe "
            "the export in (e.g. `... < v.model` or `fraudstream model export 3 - | ...`)"
        )
    try:
        return stream.read()
    except UnicodeDecodeError as exc:
        raise click.ClickException(
            f"<stdin>: not a fraudstream model export (not UTF-8 text: {exc.reason})"
        ) from exc


@model.command("import")
@click.argument(
    "file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path)
)
@_WHILE_LEARNING
def import_cmd(file: Path, while_learning: bool) -> None:
    """Verify FILE (-: standard input) with this deployment's signing key; publish it as new."""
    text = _read_stdin() if str(file) == "-" else None
    with _registry() as reg:
        if not while_learning:
            _refuse_while_learning(reg, "import")
        new = reg.import_(file) if text is None else reg.import_text(text, "<stdin>")
    click.echo(f"{'standard input' if text is not None else file} imported as version {new}")
