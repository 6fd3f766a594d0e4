"""The ``fraudstream`` command: builds the settings once and mounts every command.

Settings are built once here, from the environment (``FRAUDSTREAM_*``) and
``.env``, and handed to every sub-command through the click context. The
commands come from the parts that own them: the service (``serve``,
``config``, ``schemas``, ``model``), the producers (``simulate``, ``produce``,
``record``, ``replay``), evaluation (``model compare``), benchmarks
(``bench``) and the dev stack (``dev``, ``demo``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from pydantic import ValidationError

from fraudstream.bench.cli import bench as bench_group
from fraudstream.devstack.cli import COMMANDS as DEV_COMMANDS
from fraudstream.evaluation.cli import compare_cmd
from fraudstream.producers.cli import COMMANDS as PRODUCER_COMMANDS
from fraudstream.service.cli import COMMANDS as SERVICE_COMMANDS
from fraudstream.service.cli_model import model as model_group
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.settings import Settings


def _settings_error(exc: ValidationError) -> click.ClickException:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"])
    if not field:  # about the settings as a whole (e.g. an unknown variable)
        return click.ClickException(str(first["msg"]).removeprefix("Value error, "))
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


model_group.add_command(compare_cmd)
main.add_command(model_group)
main.add_command(bench_group)
for _command in (*SERVICE_COMMANDS, *PRODUCER_COMMANDS, *DEV_COMMANDS):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
