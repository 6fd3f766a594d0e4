"""Option types the commands share: numbers that refuse NaN, Kafka topic names, server addresses.

(And the two one-line errors several commands end with: an output folder that
cannot be written, and a run that does not fit in memory.)

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

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
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


class CheckedText(click.ParamType[str, Any]):
    """Text refused when ``problem(text)`` says why (the settings' own check of that value).

    Parameters
    ----------
    name
        What the help shows for the value (``topic``, ``host:port``).
    problem
        ``None`` for an acceptable value, else what is wrong with it.
    """

    def __init__(self, name: str, problem: Callable[[str], str | None]) -> None:
        self.name = name
        self.problem = problem

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value``, refused when its ``problem`` says why."""
        text = str(value)
        problem = self.problem(text)
        if problem:
            self.fail(problem, param, ctx)
        return text


#: The type of every option that names a topic (refused when Kafka would refuse the name).
TOPIC = CheckedText("topic", topic_name_problem)


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


#: The type of every option that gives Kafka bootstrap servers (checked as
#: ``FRAUDSTREAM_BOOTSTRAP_SERVERS`` is: a comma-separated list of ``host:port``).
BOOTSTRAP_SERVERS = CheckedText("host:port", bootstrap_servers_problem)
#: The type of every option that gives a Redis URL.
REDIS_URL = RedisUrl()


@contextlib.contextmanager
def writing_to(folder: Path, what: str, option: str) -> Iterator[None]:
    """An :class:`OSError` writing ``what`` in ``folder``: one line naming it and the option.

    Parameters
    ----------
    folder
        The output folder (the file the error names, when it names one, is said instead).
    what
        What is written there (``"the report"``).
    option
        The option that chose the folder (``"--report folder"``).
    """
    try:
        yield
    except OSError as exc:
        where = exc.filename or folder
        raise click.ClickException(
            f"cannot write {what} to {where}: {exc.strerror or exc}; give a writable {option}"
        ) from exc


def not_enough_memory(exc: MemoryError, smaller: str) -> click.ClickException:
    """The one-line error of a run that did not fit in memory, and what to make ``smaller``.

    >>> not_enough_memory(MemoryError("Unable to allocate 14.2 PiB"), "give fewer --days").message
    'not enough memory (Unable to allocate 14.2 PiB): give fewer --days'
    """
    said = f" ({exc})" if str(exc) else ""
    return click.ClickException(f"not enough memory{said}: {smaller}")
