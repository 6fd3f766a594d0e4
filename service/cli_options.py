"""Option types the commands share: numbers that refuse NaN, Kafka topic names.

A wrong value is refused by click before the command runs: one ``Error:``
line naming the option, exit status 2.

>>> import click
>>> @click.command()
... @click.option("--min-score", type=FloatRange(0, 1))
... @click.option("--topic", type=TOPIC)
... def cmd(min_score: float, topic: str) -> None:
...     pass
>>> from click.testing import CliRunner
>>> result = CliRunner().invoke(cmd, ["--min-score", "nan"])
>>> result.exit_code, result.output.splitlines()[-1]
(2, "Error: Invalid value for '--min-score': nan is not a number (give one in 0<=x<=1).")
>>> result = CliRunner().invoke(cmd, ["--topic", "bad!topic"])
>>> result.exit_code, result.output.splitlines()[-1]  # doctest: +NORMALIZE_WHITESPACE
(2, "Error: Invalid value for '--topic': 'bad!topic' is not a Kafka topic name: use 1 to 249
letters, digits, '.', '_' or '-'")
"""

from __future__ import annotations

import math
from typing import Any

import click

from fraudstream.service.settings import topic_name_problem


class FloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses NaN, which passes every comparison.

    ``inf`` and ``-inf`` are refused by the bounds, as any number outside them.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, refused when it is NaN or outside the range."""
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(
                f"{value} is not a number (give one in {self._describe_range()}).", param, ctx
            )
        return number


class TopicName(click.ParamType[str, Any]):
    """A topic name Kafka accepts (``topic_name_problem`` of the settings says why not)."""

    name = "topic"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value``, refused when Kafka would refuse it as a topic name."""
        text = str(value)
        problem = topic_name_problem(text)
        if problem:
            self.fail(problem, param, ctx)
        return text


#: The type of every option that names a topic.
TOPIC = TopicName()
