"""The one way fraudstream builds a Redis client, and says what is wrong with Redis.

:func:`redis_client` builds every client of the service and of the commands
from the settings: the URL (``redis://``, or ``rediss://`` for TLS, with the
password in it) and the TLS files. Server certificates are always verified
(against ``FRAUDSTREAM_REDIS_SSL_CA_CERTS``, else the system's CAs), and the
host name is checked unless ``FRAUDSTREAM_REDIS_SSL_CHECK_HOSTNAME=false``.

:func:`redis_problem` turns a Redis error into one line that names the
setting to fix, the URL shown with its password masked: a refused password
says "authentication failed", never "not reachable".
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
import redis
import redis.utils
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from fraudstream.service.errors import (
    AuthenticationFailedError,
    ConfigurationError,
    RedisUnavailableError,
    UnavailableError,
)
from fraudstream.service.settings import Settings, env_name, masked_url

log = logging.getLogger(__name__)

#: Whether redis-py packs commands with hiredis (:func:`pack_command` does the same).
_HIREDIS_PACKS: bool = redis.utils.HIREDIS_AVAILABLE


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client with timeouts, so a dead server is noticed instead of hanging.

    With ``FRAUDSTREAM_REDIS_CLUSTER=true``, a :class:`redis.cluster.RedisCluster`
    client (typed as ``redis.Redis``: the commands fraudstream calls on it are
    common to both; the stores choose their cluster classes by the client's type,
    :func:`~fraudstream.service.redis_cluster.is_cluster`).

    Raises
    ------
    ConfigurationError
        A TLS client certificate or key cannot be loaded (checked here, so
        that OpenSSL never asks for a key password on the terminal); or the
        cluster mode asked for does not match the server's (:func:`check_cluster_mode`).
    UnavailableError
        Cluster mode: no node of the URL answers (the cluster client connects at once).
    """
    url = settings.redis_url.get_secret_value()
    if not settings.redis_cluster:
        return redis.Redis.from_url(url, **redis_options(settings))
    options = redis_options(settings)
    options.pop("health_check_interval")
    try:
        return cast(redis.Redis, RedisCluster.from_url(url, **options))
    except RedisClusterException as exc:
        if "Cluster mode is not enabled" in str(exc):
            raise ConfigurationError(
                f"Redis at {masked_url(url)} is not a Redis Cluster node, but "
                f"{env_name('redis_cluster')}=true: unset it (or name a cluster node in "
                f"{env_name('redis_url')})"
            ) from None
        raise UnavailableError(f"Redis Cluster at {masked_url(url)}: {exc}") from exc


def check_cluster_mode(client: redis.Redis, settings: Settings) -> None:
    """Raise when the server's cluster mode is not the one the settings ask for.

    Raises
    ------
    ConfigurationError
        A cluster node without ``FRAUDSTREAM_REDIS_CLUSTER=true``, or a
        cluster older than Redis 7.0 (its scripts need ``allow-cross-slot-keys``).
    """
    url = masked_url(settings.redis_url.get_secret_value())
    if not settings.redis_cluster:
        try:
            enabled = client.info("cluster").get("cluster_enabled")
        except redis.exceptions.NoPermissionError:
            log.warning("Redis refuses INFO to this user (ACL): its cluster mode is not checked")
            return
        if enabled:
            raise ConfigurationError(
                f"Redis at {url} is a Redis Cluster node: set {env_name('redis_cluster')}=true"
            )
        return
    versions = client.info("server", target_nodes=RedisCluster.PRIMARIES)
    for node, info in versions.items():
        major = int(str(info.get("redis_version", "0")).split(".")[0])
        if major < 7:
            raise ConfigurationError(
                f"Redis Cluster node {node} runs Redis {info.get('redis_version')}: fraudstream "
                "needs 7.0 or later on a cluster (its scripts use allow-cross-slot-keys)"
            )


def _memory_by_node(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """``INFO memory`` of each master (``{"": info}`` on a single node)."""
    if not isinstance(client, RedisCluster):
        return {"": client.info("memory")}
    infos = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
    # redis-py returns one node's reply as it is, several as {node: reply}.
    return {"": infos} if "maxmemory" in infos else dict(infos)


def memory_problem(
    client: redis.Redis, allow_eviction: bool = False, full: bool = True
) -> str | None:
    """Why Redis memory endangers the state or the writes, or ``None``.

    A master with a ``maxmemory`` and a ``maxmemory-policy`` other than
    ``noeviction`` drops keys silently when full (a problem unless
    ``allow_eviction``); with ``full``, a master over its ``maxmemory`` under
    ``noeviction`` is one too: it refuses every write, so nothing can be counted
    until it has room. Read from ``INFO memory``, which managed Redis services
    answer even where ``CONFIG`` is disabled; ``None`` when an ACL refuses it
    (:func:`check_eviction` warned at start).

    Raises
    ------
    redis.RedisError
        Redis did not answer.
    """
    try:
        infos = _memory_by_node(client)
    except redis.exceptions.NoPermissionError:
        return None
    return _memory_problem_in(infos, allow_eviction, full)


def _memory_problem_in(
    infos: dict[str, dict[str, Any]], allow_eviction: bool, full: bool
) -> str | None:
    """:func:`memory_problem` of the masters' ``INFO memory`` replies."""
    for node, info in infos.items():
        where = f" node {node}" if node else ""
        limit = int(info.get("maxmemory", 0))
        if not limit:
            continue
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            if allow_eviction:
                continue
            return (
                f"Redis{where} evicts keys when full (maxmemory {limit:,} bytes, maxmemory-policy "
                f"{policy}): card histories, id claims and snapshots would be dropped silently. "
                "Set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, or "
                f"your provider's parameter group), or {env_name('redis_allow_eviction')}=true "
                "to run anyway"
            )
        # Redis's own measure: the buffers of replicas and of the AOF do not count.
        used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        if full and used > limit:
            return (
                f"Redis{where} is full ({used:,} bytes used, maxmemory {limit:,}, "
                "maxmemory-policy noeviction): it refuses writes and nothing is counted "
                "until it has room. Raise maxmemory or free memory"
            )
    return None


def check_eviction(client: redis.Redis, settings: Settings) -> None:
    """Refuse a Redis that may evict fraudstream's keys (see :func:`memory_problem`).

    With ``FRAUDSTREAM_REDIS_ALLOW_EVICTION=true`` it is a warning instead.

    Raises
    ------
    ConfigurationError
        A master may evict keys and eviction is not allowed.
    """
    try:
        infos = _memory_by_node(client)
    except redis.exceptions.NoPermissionError:
        log.warning(
            "Redis refuses INFO to this user (ACL): its maxmemory-policy cannot be checked; "
            "make sure it is noeviction, or allow the user +info"
        )
        return
    problem = _memory_problem_in(infos, allow_eviction=False, full=False)
    if problem is None:
        return
    if not settings.redis_allow_eviction:
        raise ConfigurationError(problem)
    log.warning("%s=true: %s", env_name("redis_allow_eviction"), problem)


def redis_options(settings: Settings) -> dict[str, Any]:
    """redis-py keyword arguments besides the URL: timeouts, and TLS for ``rediss://``."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": min(5.0, settings.redis_timeout_s),
        "health_check_interval": 30,
    }
    if urlsplit(settings.redis_url.get_secret_value()).scheme != "rediss":
        return options
    password = settings.redis_ssl_keyfile_password
    options.update(
        ssl_cert_reqs="required",
        ssl_check_hostname=settings.redis_ssl_check_hostname,
        ssl_ca_certs=_str(settings.redis_ssl_ca_certs),
        ssl_certfile=_str(settings.redis_ssl_certfile),
        ssl_keyfile=_str(settings.redis_ssl_keyfile),
        # Never None with a client key: OpenSSL would prompt for a password.
        ssl_password=password.get_secret_value() if password is not None else "",
    )
    if settings.redis_ssl_certfile is not None:
        _check_client_certificate(settings)
    return options


#: Where in CPython's ``_ssl.c`` an error was raised: noise in a message.
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _check_client_certificate(settings: Settings) -> None:
    password = settings.redis_ssl_keyfile_password
    try:
        ssl.create_default_context().load_cert_chain(
            str(settings.redis_ssl_certfile),
            _str(settings.redis_ssl_keyfile),
            password.get_secret_value() if password is not None else "",
        )
    except (ssl.SSLError, OSError) as exc:
        reason = str(exc.args[-1])
        hint = (
            f"is {env_name('redis_ssl_keyfile_password')} right?"
            if password is not None
            else f"is the key encrypted (set {env_name('redis_ssl_keyfile_password')}), "
            "or does it not match the certificate?"
        )
        raise ConfigurationError(
            f"the Redis client certificate {settings.redis_ssl_certfile} and key "
            f"{settings.redis_ssl_keyfile} cannot be loaded ({_SSL_SOURCE.sub('', reason)}): "
            f"{hint}"
        ) from exc


def is_authentication_error(exc: BaseException) -> bool:
    """Whether Redis refused the credentials (wrong or missing password, unknown user)."""
    return isinstance(
        exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError
    )


def redis_problem(exc: BaseException, settings: Settings) -> str:
    """What ``exc`` says about Redis, in one line naming the setting to fix.

    >>> s = Settings(_env_file=None, redis_url="redis://:wrong@127.0.0.1:6379/0")
    >>> redis_problem(redis.AuthenticationError("invalid username-password pair"), s)
    'Redis at redis://:***@127.0.0.1:6379/0: authentication failed (invalid \
username-password pair): fix the password in FRAUDSTREAM_REDIS_URL \
(redis://[user]:password@host:port/db)'
    >>> redis_problem(redis.ConnectionError("Error 111 connecting. Connection refused."), s)
    'Redis at redis://:***@127.0.0.1:6379/0 is not reachable (Error 111 connecting. \
Connection refused.)'
    """
    url = settings.redis_url.get_secret_value()
    where = f"Redis at {masked_url(url)}"
    text = str(exc).strip()
    if is_authentication_error(exc):
        return (
            f"{where}: authentication failed ({text.rstrip('.')}): fix the password in "
            f"{env_name('redis_url')} (redis://[user]:password@host:port/db)"
        )
    tls = urlsplit(url).scheme == "rediss"
    if tls and ("CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text):
        if "mismatch" in text:
            return (
                f"{where} presented a certificate for another host ({_ssl_reason(text)}): "
                f"connect by a name it lists, or set {env_name('redis_ssl_check_hostname')}=false"
            )
        return (
            f"{where} presented a certificate this client does not trust "
            f"({_ssl_reason(text)}): set {env_name('redis_ssl_ca_certs')} to the CA that signed it"
        )
    if tls and ("WRONG_VERSION_NUMBER" in text or "record layer failure" in text):
        return (
            f"TLS with {where} failed ({_ssl_reason(text)}): is it a TLS port? (rediss:// URLs "
            "are for tls-port, redis:// for port)"
        )
    if tls and ("certificate required" in text or "CERTIFICATE_REQUIRED" in text):
        return (
            f"{where} requires a client certificate: authentication failed; set "
            f"{env_name('redis_ssl_certfile')} and {env_name('redis_ssl_keyfile')}"
        )
    if not tls and ("Connection closed by server" in text or "reset by peer" in text):
        return (
            f"{where} closed the connection ({text}): is it a TLS port? (write rediss:// "
            f"in {env_name('redis_url')} for TLS)"
        )
    if tls and isinstance(exc, redis.TimeoutError):
        return (
            f"{where} did not answer the TLS handshake ({text}): is it a TLS port? (rediss:// "
            "URLs are for tls-port, redis:// for port)"
        )
    return f"{where} is not reachable ({text})"


def _ssl_reason(text: str) -> str:
    """The reason out of a redis-py TLS error.

    ``certificate verify failed: unable to get local issuer certificate`` out of redis-py's ``Error
    1 connecting to h:p. [SSL: ...] ... (_ssl.c:1006).``
    """
    reason = text.partition("] ")[2] or text
    return _SSL_SOURCE.sub("", reason).rstrip(".")


def check_redis(settings: Settings) -> None:
    """Connect and PING once; raise the problem as one line.

    Raises
    ------
    AuthenticationFailedError
        Redis refused the password.
    ConfigurationError
        TLS problems (untrusted certificate, a TLS port reached without TLS...)
        or an unusable client certificate.
    UnavailableError
        Redis does not answer.
    """
    from fraudstream.service.errors import UnavailableError

    client = redis_client(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise redis_error(exc, settings) from exc
    finally:
        client.close()
    _ = UnavailableError


def redis_error(exc: redis.RedisError, settings: Settings) -> Exception:
    """``exc`` as fraudstream's error of the right kind, with :func:`redis_problem`'s line."""
    message = redis_problem(exc, settings)
    if is_authentication_error(exc):
        return AuthenticationFailedError(message)
    if "certificate" in message or "TLS" in message:
        return ConfigurationError(message)
    return UnavailableError(message)


# -- calls in flight -----------------------------------------------------------------


def send_script(connection: redis.Connection, sha: str, keys: list[str], args: list[Any]) -> None:
    """Send ``EVALSHA`` on ``connection``, not waiting: :func:`read_script_reply` takes the reply.

    The scorer sends a batch's script, works on another batch meanwhile and
    reads the reply later; replies come back in the order the calls were sent.
    The bytes sent are those of ``connection.send_command`` (see :func:`pack_command`).
    """
    command = pack_command(connection, ("EVALSHA", sha, len(keys), *keys, *args))
    connection.send_packed_command(command)  # type: ignore[no-untyped-call]


def pack_command(connection: redis.Connection, command: tuple[Any, ...]) -> list[bytes]:
    """``command`` in the Redis protocol, as ``connection.pack_command(*command)`` packs it.

    With hiredis (``redis[hiredis]``, a dependency) redis-py packs with
    ``hiredis.pack_command`` too, but first runs a Python generator over every
    argument to turn ``bytearray`` and ``memoryview`` into ``bytes``: ~0.45 µs per
    transaction of a scorer's batch (five arguments each). A command of ``str``,
    ``bytes``, ``int`` and ``float`` goes to hiredis directly; anything else (or
    redis-py without hiredis) takes redis-py's own path, with its conversions
    and its ``DataError``.

    >>> from redis.connection import Connection
    >>> command = ("EVALSHA", "f" * 40, 1, "k:{x:é}", bytes(2), 7, 0.5)
    >>> pack_command(Connection(), command) == Connection().pack_command(*command)
    True
    """
    if _HIREDIS_PACKS:
        try:
            return [hiredis.pack_command(command)]
        except TypeError:
            pass
    return cast(list[bytes], connection.pack_command(*command))  # type: ignore[no-untyped-call]


def read_script_reply(connection: redis.Connection, load: Callable[[], object]) -> Any:
    """The reply of the oldest script call sent on ``connection`` and not read yet.

    Raises
    ------
    RedisUnavailableError
        When the server had lost the script (a restart or ``SCRIPT FLUSH``):
        nothing ran. ``load`` loads it again; the caller retries the batch and
        every call it sent after this one.
    redis.RedisError
        Whatever else the call raised (the caller translates script errors).
    """
    try:
        return connection.read_response()
    except redis.exceptions.NoScriptError:
        load()
        raise RedisUnavailableError(
            "Redis had lost the scripts (a restart or SCRIPT FLUSH); loaded again, "
            "the batch is retried"
        ) from None
