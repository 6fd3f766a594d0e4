"""The producer commands under one click group whose settings a test gives.

The real ``fraudstream`` group builds its settings from the environment; a test
hands its own (a broker started for it, or a closed port) this way instead.
"""

from __future__ import annotations

import click

from fraudstream.producers.cli import COMMANDS
from fraudstream.service.settings import Settings


def producers_cli(settings: Settings) -> click.Group:
    """A group with every producer command, its context object ``settings``."""

    @click.group()
    @click.pass_context
    def main(ctx: click.Context) -> None:
        ctx.obj = settings

    for command in COMMANDS:
        main.add_command(command)
    return main
