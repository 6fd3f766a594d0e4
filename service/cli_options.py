"""Option types the commands share: numbers that refuse NaN, Kafka topic names, server addresses.

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
from urllib.parse import urlsplit

import click

from fraudstream.service.settings import (
    REDIS_SCHEMES,
    bootstrap_servers_problem,
    masked_url,
    redis_url_problem,
    topic_name_problem,
)


class FloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses NaN, which passes every comparison.

    ``inf`` and ``-inf`` are refused too (a range open on one side would let
    one through), unless ``allow_inf``: e.g. ``--speed inf``, as fast as possible.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`click.FloatRange` (``min``, ``max``, ``min_open``, ...).
    allow_inf
        Take ``inf`` (and ``-inf``) when the bounds do.
    """

    def __init__(self, *args: Any, allow_inf: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_inf = allow_inf

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, refused when it is NaN, infinite (unless allowed) or outside the range."""
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(
                f"{value} is not a number (give one in {self._describe_range()}).", param, ctx
            )
        if math.isinf(number) and not self.allow_inf:
            self.fail(
                f"{value} is not a finite number (give one in {self._describe_range()}).",
                param,
                ctx,
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


class BootstrapServers(click.ParamType[str, Any]):
    """Kafka bootstrap servers, checked as ``FRAUDSTREAM_BOOTSTRAP_SERVERS`` is."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value``, refused when it is no comma-separated list of ``host:port``."""
        text = str(value)
        problem = bootstrap_servers_problem(text)
        if problem:
            self.fail(problem, param, ctx)
        return text


class RedisUrl(click.ParamType[str, Any]):
    """A Redis URL, checked as ``FRAUDSTREAM_REDIS_URL`` is (its password never shown)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value``, refused when redis-py would fail on it or misread it."""
        text = str(value)
        scheme = urlsplit(text).scheme
        if scheme not in REDIS_SCHEMES:
            self.fail(
                f"{masked_url(text)!r} is not a Redis URL: it must start with redis://, "
                "rediss:// (TLS) or unix://",
                param,
                ctx,
            )
        problem = redis_url_problem(text)
        if problem:
            self.fail(f"{masked_url(text)!r}: {problem}", param, ctx)
        return text


#: The type of every option that gives Kafka bootstrap servers.
BOOTSTRAP_SERVERS = BootstrapServers()
#: The type of every option that gives a Redis URL.
REDIS_URL = RedisUrl()
