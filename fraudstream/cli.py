"""The ``fraudstream`` command: builds the settings once and mounts every command.

Settings are built once here, from the environment (``FRAUDSTREAM_*``) and
``.env``, and handed to every sub-command through the click context. The
commands come from the parts that own them: the service (``serve``,
``config``, ``schemas``, ``model``), the producers (``simulate``, ``produce``,
``record``, ``replay``), evaluation (``evaluate``), benchmarks
(``bench``) and the dev stack (``dev``, ``demo``).
"""

from __future__ import annotations

import difflib
from typing import Any
from urllib.parse import urlsplit

import click
import redis
from pydantic import SecretStr, ValidationError

from fraudstream.bench.cli import bench as bench_group
from fraudstream.devstack.cli import COMMANDS as DEV_COMMANDS
from fraudstream.evaluation.cli import evaluate_cmd
from fraudstream.producers.cli import COMMANDS as PRODUCER_COMMANDS
from fraudstream.service.cli import COMMANDS as SERVICE_COMMANDS
from fraudstream.service.cli_alerts import COMMANDS as ALERT_COMMANDS
from fraudstream.service.cli_model import model as model_group
from fraudstream.service.cli_state import state as state_group
from fraudstream.service.cli_status import COMMANDS as STATUS_COMMANDS
from fraudstream.service.errors import FraudstreamError
from fraudstream.service.logs import configure_logging
from fraudstream.service.redis_client import redis_problem
from fraudstream.service.settings import Settings, env_name, masked_url

#: Where ``main`` leaves the settings that failed validation, for ``config`` to show.
INVALID_SETTINGS = "fraudstream.invalid_settings"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _invalid_settings(exc: ValidationError) -> dict[str, tuple[object, str]]:
    """``{field: (value given, what is wrong)}`` of every setting that failed validation.

    Settings that are wrong together (e.g. SASL_SSL without a password) name
    the setting to fix in the error's context.
    """
    invalid: dict[str, tuple[object, str]] = {}
    for error in exc.errors():
        if error["loc"]:
            field = str(error["loc"][0])
            given = error.get("input")
        else:
            field = str((error.get("ctx") or {}).get("setting", "?"))
            inputs = error.get("input")
            given = inputs.get(field) if isinstance(inputs, dict) else None
            if given is None and field in Settings.model_fields:  # left at its default
                given = Settings.model_fields[field].default
        invalid.setdefault(field, (shown_value(field, given), error["msg"]))
    return invalid


def shown_value(field: str, value: object) -> object:
    """A setting's value as it may be shown: secrets masked, the Redis URL's password only."""
    if field == "redis_url" and value is not None:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return masked_url(raw)
    annotation = Settings.model_fields[field].annotation if field in Settings.model_fields else None
    if value is not None and annotation in (SecretStr, SecretStr | None):
        return "**********"
    return "(unset)" if value is None else value


#: Words that make the value of a misspelt variable a secret, never shown.
_SECRET_WORDS = ("PASS", "PWD", "SECRET", "KEY", "TOKEN")


def _shown_unknown(variable: str, value: str) -> str:
    """The value of a ``FRAUDSTREAM_*`` variable that is no setting, as it may be shown.

    A misspelt secret (``FRAUDSTREAM_KAFKA_SASL_PASWORD``: close to a secret
    setting, or a name that sounds secret) is masked; a URL keeps everything
    but its password.
    """
    secrets = [
        env_name(name)
        for name, field in Settings.model_fields.items()
        if field.annotation in (SecretStr, SecretStr | None)
    ]
    upper = variable.upper()
    if any(word in upper for word in _SECRET_WORDS) or difflib.get_close_matches(
        upper, secrets, n=1, cutoff=0.8
    ):
        return "**********"
    return masked_url(value) if "://" in value else value


def _settings_error(invalid: dict[str, tuple[object, str]]) -> click.ClickException:
    field, (value, message) = next(iter(invalid.items()))
    more = f" (and {len(invalid) - 1} more)" if len(invalid) > 1 else ""
    variable = field if field.startswith("FRAUDSTREAM_") else f"FRAUDSTREAM_{field.upper()}"
    return click.ClickException(
        f"invalid setting {variable}={value!s}: {message}{more}; "
        "fix or unset it (environment or .env); `fraudstream config` shows every setting"
    )


def _lenient_settings(invalid: dict[str, tuple[object, str]]) -> Settings:
    """The settings with each invalid value replaced by its default (for ``config`` only).

    Replacing one value can reveal another conflict (settings wrong together),
    whose setting is then reset too; all defaults is the last resort.
    """
    defaults = {
        name: Settings.model_fields[name].default
        for name in invalid
        if name in Settings.model_fields
    }
    for _ in range(len(Settings.model_fields)):
        try:
            return Settings(**defaults)
        except ValidationError as exc:
            more = {
                name: Settings.model_fields[name].default
                for name in _invalid_settings(exc)
                if name in Settings.model_fields and name not in defaults
            }
            if not more:
                break
            defaults.update(more)
    return Settings.model_construct()


def redis_url_of(exc: BaseException) -> str | None:
    """The URL (password masked) of the Redis server ``exc`` came from, if its traceback says.

    redis-py's errors carry no address, but the connection that raised one is
    in the traceback: a command may use another Redis than ``FRAUDSTREAM_REDIS_URL``
    (``evaluate --redis-url``, a Redis started for the run), and the error must
    name the one it used.
    """
    from redis.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection

    connection: AbstractConnection | None = None
    tb = exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, AbstractConnection):
            connection = candidate  # the deepest one raised
        tb = tb.tb_next
    if connection is None:
        return None
    db = getattr(connection, "db", 0) or 0
    if isinstance(connection, UnixDomainSocketConnection):
        return f"unix://{connection.path}?db={db}"
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    if host is None or port is None:
        return None
    scheme = "rediss" if isinstance(connection, SSLConnection) else "redis"
    login = ""
    if getattr(connection, "password", None):
        login = f"{getattr(connection, 'username', None) or ''}:***@"
    elif getattr(connection, "username", None):
        login = f"{connection.username}@"
    shown_host = f"[{host}]" if ":" in str(host) else host
    return f"{scheme}://{login}{shown_host}:{port}/{db}"


def _server(url: str) -> tuple[object, ...]:
    """What identifies a Redis server and database in ``url`` (redis-py's defaults filled in)."""
    from redis.connection import parse_url

    try:
        parsed = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        return (url,)
    tls = urlsplit(url).scheme == "rediss"
    return (
        tls,
        parsed.get("path"),
        parsed.get("host", "localhost"),
        parsed.get("port", 6379),
        parsed.get("db", 0),
    )


def redis_error_message(exc: redis.RedisError, settings: Settings) -> str:
    """``exc`` in one line naming the Redis server it came from.

    That is ``FRAUDSTREAM_REDIS_URL`` unless the traceback shows that the
    command talked to another server.
    """
    used = redis_url_of(exc)
    configured = settings.redis_url.get_secret_value()
    if used is None or _server(used) == _server(configured):
        return redis_problem(exc, settings)
    other = settings.model_copy(update={"redis_url": SecretStr(used)})
    # The URL came from elsewhere (an option, a server started for the run).
    return redis_problem(exc, other).replace(env_name("redis_url"), "its URL")


class _Group(click.Group):
    """Turns fraudstream's own errors, and Redis's, into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FraudstreamError as exc:
            raise click.ClickException(str(exc)) from exc
        except redis.RedisError as exc:
            if not isinstance(ctx.obj, Settings):
                raise
            # e.g. "Redis at redis://:***@host:6379/0: authentication failed (...)"
            raise click.ClickException(redis_error_message(exc, ctx.obj)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="fraudstream")
@click.pass_context
def main(ctx: click.Context) -> None:
    """fraudstream: streaming card-fraud detection on Kafka, Redis and River."""
    unreadable = Settings.env_file_problem()
    if unreadable:
        raise click.ClickException(unreadable)
    try:
        settings = Settings()
    except ValidationError as exc:
        invalid = _invalid_settings(exc)
        if ctx.invoked_subcommand != "config":
            raise _settings_error(invalid) from exc
        # `config` must always show the configuration, and which settings are wrong.
        ctx.meta[INVALID_SETTINGS] = invalid
        settings = _lenient_settings(invalid)
    unknown = {
        name: (_shown_unknown(name, value), problem)
        for name, (value, problem) in Settings.unknown_variables().items()
    }
    if unknown:
        if ctx.invoked_subcommand != "config":
            raise _settings_error(dict(unknown))
        ctx.meta.setdefault(INVALID_SETTINGS, {}).update(unknown)
    level = settings.log_level.upper()
    if level not in _LOG_LEVELS:
        problem = f"should be one of {', '.join(_LOG_LEVELS)}"
        if ctx.invoked_subcommand != "config":
            raise _settings_error({"log_level": (settings.log_level, problem)})
        ctx.meta.setdefault(INVALID_SETTINGS, {})["log_level"] = (settings.log_level, problem)
        level = "INFO"
    configure_logging(level, settings.log_format.value)
    ctx.obj = settings


main.add_command(model_group)
main.add_command(evaluate_cmd)
main.add_command(state_group)
main.add_command(bench_group)
for _command in (
    *SERVICE_COMMANDS,
    *ALERT_COMMANDS,
    *STATUS_COMMANDS,
    *PRODUCER_COMMANDS,
    *DEV_COMMANDS,
):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
