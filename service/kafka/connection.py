"""Where Kafka is and how to log in: the connection options every client gets.

:class:`KafkaConnection` holds the bootstrap servers and the security settings
(TLS files, SASL mechanism and credentials); :meth:`KafkaConnection.options`
turns them into kafka-python's keyword arguments. Every client fraudstream
builds (:func:`~fraudstream.service.kafka.make_producer`, ``make_consumer``,
``make_admin``) takes one, or the :class:`~fraudstream.service.settings.Settings`
it comes from, so no client can be built without the security settings.

:func:`verify` connects once the way the clients will (TCP, TLS handshake,
SASL exchange, one metadata request) and turns what goes wrong into one clear
line naming the setting to fix. kafka-python itself would retry a refused
password or an untrusted certificate until its 30 s bootstrap timeout and
then only say "Unable to bootstrap".
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from fraudstream.service.errors import (
    AuthenticationFailedError,
    ConfigurationError,
    UnavailableError,
)
from fraudstream.service.settings import SaslMechanism, SecurityProtocol, env_name

if TYPE_CHECKING:
    from fraudstream.service.settings import Settings


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers and security options of Kafka clients.

    Parameters
    ----------
    bootstrap_servers
        ``host:port[,host:port]``.
    security_protocol
        PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL.
    sasl_mechanism, sasl_username, sasl_password
        SASL login (SASL_PLAINTEXT, SASL_SSL).
    ssl_cafile
        CA certificates the brokers' certificates must chain to (default:
        the system's trusted CAs).
    ssl_certfile, ssl_keyfile, ssl_keyfile_password
        Client certificate for mutual TLS.
    ssl_check_hostname
        Check that a broker's certificate names the host connected to (default).

    Examples
    --------
    >>> KafkaConnection("127.0.0.1:9092").options()
    {'bootstrap_servers': '127.0.0.1:9092', 'security_protocol': 'PLAINTEXT'}
    >>> sasl = KafkaConnection("b:9096", SecurityProtocol.SASL_PLAINTEXT,
    ...     SaslMechanism.SCRAM_SHA_512, "app", SecretStr("pw"))
    >>> sasl.describe()
    "b:9096 (SASL_PLAINTEXT, SCRAM-SHA-512 as 'app')"
    >>> sasl  # the password is never shown
    KafkaConnection(b:9096 (SASL_PLAINTEXT, SCRAM-SHA-512 as 'app'))
    """

    bootstrap_servers: str
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_keyfile_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.security_protocol.uses_sasl and None in (
            self.sasl_mechanism,
            self.sasl_username,
            self.sasl_password,
        ):
            raise ConfigurationError(
                f"{self.security_protocol.value} needs a SASL mechanism, username and password "
                f"({env_name('kafka_sasl_mechanism')}, {env_name('kafka_sasl_username')}, "
                f"{env_name('kafka_sasl_password')})"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaConnection:
        """The connection the settings describe.

        From ``FRAUDSTREAM_BOOTSTRAP_SERVERS`` and ``FRAUDSTREAM_KAFKA_*``.
        """
        return cls(
            bootstrap_servers=settings.bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            ssl_keyfile_password=settings.kafka_ssl_keyfile_password,
            ssl_check_hostname=settings.kafka_ssl_check_hostname,
        )

    @classmethod
    def of(cls, target: KafkaConnection | Settings | str) -> KafkaConnection:
        """``target`` as a connection: itself, the settings' one, or PLAINTEXT to a string."""
        if isinstance(target, KafkaConnection):
            return target
        if isinstance(target, str):
            return cls(target)
        return cls.from_settings(target)

    def __repr__(self) -> str:
        return f"KafkaConnection({self.describe()})"

    @property
    def secured(self) -> bool:
        """Whether clients use TLS or SASL (then :func:`verify` runs before a client is built)."""
        return self.security_protocol is not SecurityProtocol.PLAINTEXT

    def describe(self) -> str:
        """Servers and protocol, for messages (never a secret)."""
        if self.security_protocol is SecurityProtocol.PLAINTEXT:
            return self.bootstrap_servers
        login = ""
        if self.security_protocol.uses_sasl and self.sasl_mechanism is not None:
            login = f", {self.sasl_mechanism.value} as {self.sasl_username!r}"
        return f"{self.bootstrap_servers} ({self.security_protocol.value}{login})"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every connection (built once), or ``None`` without TLS.

        Raises
        ------
        ConfigurationError
            A certificate, key or CA file cannot be used, naming the setting.
        """
        if not self.security_protocol.uses_tls:
            return None
        return self._ssl_context

    @cached_property
    def _ssl_context(self) -> ssl.SSLContext:
        cafile = str(self.ssl_cafile) if self.ssl_cafile is not None else None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"{env_name('kafka_ssl_cafile')}={self.ssl_cafile} holds no usable CA "
                f"certificate (PEM expected): {_reason(exc)}"
            ) from exc
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            password = self.ssl_keyfile_password
            try:
                context.load_cert_chain(
                    str(self.ssl_certfile),
                    str(self.ssl_keyfile) if self.ssl_keyfile is not None else None,
                    password.get_secret_value() if password is not None else _no_prompt,
                )
            except (ssl.SSLError, OSError) as exc:
                key = self.ssl_keyfile or self.ssl_certfile
                hint = (
                    f"is {env_name('kafka_ssl_keyfile_password')} right?"
                    if password is not None
                    else f"is the key encrypted (set {env_name('kafka_ssl_keyfile_password')}),"
                    " or does it not match the certificate?"
                )
                raise ConfigurationError(
                    f"the Kafka client certificate {self.ssl_certfile} and key {key} cannot "
                    f"be loaded ({_reason(exc)}): {hint}"
                ) from exc
        return context

    def options(self) -> dict[str, Any]:
        """kafka-python keyword arguments: bootstrap servers and security options."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol.value,
        }
        if self.security_protocol.uses_tls:
            options["ssl_context"] = self.ssl_context()
            options["ssl_check_hostname"] = self.ssl_check_hostname
        if self.security_protocol.uses_sasl:
            assert self.sasl_mechanism is not None and self.sasl_password is not None
            options["sasl_mechanism"] = self.sasl_mechanism.value
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each bootstrap server (IPv6 hosts without brackets).

        >>> KafkaConnection("a:1, [::1]:2,bad").addresses()
        [('a', 1), ('::1', 2)]
        """
        found: list[tuple[str, int]] = []
        for server in self.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            if port.isdigit():
                found.append((host.strip("[]") or "127.0.0.1", int(port)))
        return found


def _reason(exc: BaseException) -> str:
    """The useful part of an ``ssl``/socket error, for a one-line message.

    >>> _reason(ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert (_ssl.c:2580)"))
    '[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert'
    """
    if getattr(exc, "verify_message", None):
        return str(getattr(exc, "verify_message", ""))
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return str(getattr(exc, "reason", "")).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return str(exc.strerror)
    text = str(exc.args[1] if isinstance(exc, OSError) and len(exc.args) > 1 else exc)
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text) or type(exc).__name__


def _no_prompt() -> str:
    """Key password when none is set: never let OpenSSL ask on the terminal."""
    return ""


# -- verify: one connection made the way the clients make theirs ------------------------

#: Kafka API keys and versions of the few requests :func:`verify` sends; versions
#: every broker since 1.0 (and 4.x) answers, without flexible encodings.
_METADATA = (3, 4)
_SASL_HANDSHAKE = (17, 1)
_SASL_AUTHENTICATE = (36, 0)
_UNSUPPORTED_SASL_MECHANISM = 33
_LARGEST_ANSWER = 1 << 20
#: Least time each step after the TCP connection may take.
_EXCHANGE_TIMEOUT_S = 10.0


class _Closed(Exception):
    """The broker closed the connection, or sent what is not a Kafka answer."""


def verify(
    target: KafkaConnection | Settings | str, timeout_s: float = 5.0, given_by: str | None = None
) -> None:
    """Connect to a bootstrap server as the clients will, log in, and ask for metadata.

    The first server that accepts a TCP connection is tried: a TLS handshake
    (SSL, SASL_SSL), the SASL exchange (SASL_*), then one metadata request,
    which a listener expecting another protocol does not answer.

    Parameters
    ----------
    target
        The settings, a :class:`KafkaConnection`, or bootstrap servers (PLAINTEXT).
    timeout_s
        How long to wait for each TCP connection (default 5 s); every later
        step may take up to 10 s.
    given_by
        Where the bootstrap servers came from when not the settings (a command's
        option, e.g. ``--bootstrap-servers``): what an unreachable broker's
        message says to check.

    Raises
    ------
    UnavailableError
        No bootstrap server accepts connections.
    AuthenticationFailedError
        The broker refused the SASL login ("authentication failed") or the
        client certificate.
    ConfigurationError
        TLS or protocol problems (untrusted certificate, a TLS listener
        reached without TLS...), naming the setting to fix.
    """
    connection = KafkaConnection.of(target)
    for host, port in connection.addresses():
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError:
            continue
        # A short wait says at once that nothing is there; a TLS handshake and a
        # SASL exchange with a distant cluster may need longer.
        sock.settimeout(max(timeout_s, _EXCHANGE_TIMEOUT_S))
        try:
            _log_in(sock, host, port, connection)
        finally:
            sock.close()
        return
    fix = (
        f"Check {given_by}"
        if given_by
        else "Start a local one with `fraudstream dev up`, or set FRAUDSTREAM_BOOTSTRAP_SERVERS"
    )
    raise UnavailableError(
        f"Kafka at {connection.bootstrap_servers} is not reachable (nothing accepts "
        f"connections there): is the broker running? {fix}"
    )


def _log_in(sock: socket.socket, host: str, port: int, connection: KafkaConnection) -> None:
    where = f"Kafka at {host}:{port}"
    protocol = connection.security_protocol
    variable = env_name("kafka_security_protocol")
    context = connection.ssl_context()
    if context is not None:
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raise ConfigurationError(_untrusted(where, exc)) from exc
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"TLS handshake with {where} failed ({_reason(exc)}): is it a TLS listener? "
                f"({variable}={protocol.value})"
            ) from exc
    try:
        if protocol.uses_sasl:
            _sasl_log_in(sock, where, connection)
        _call(sock, *_METADATA, struct.pack(">ib", 0, 0))  # no topics: brokers only
    except ssl.SSLError as exc:
        raise _tls_refused(where, exc, connection) from exc
    except (_Closed, OSError) as exc:
        plain = "speaks TLS: use SSL or SASL_SSL" if "TLS" in str(exc) else None
        raise ConfigurationError(
            f"{where} did not answer a Kafka request over {protocol.value} ({_reason(exc)}): "
            + (
                f"this listener {plain} ({variable})"
                if plain
                else f"does this listener expect another {variable}?"
            )
        ) from exc


def _untrusted(where: str, exc: ssl.SSLCertVerificationError) -> str:
    reason = _reason(exc)
    if "mismatch" in reason.lower():
        return (
            f"{where} presented a certificate for another host ({reason}): connect by a name "
            f"the certificate lists, or set {env_name('kafka_ssl_check_hostname')}=false"
        )
    return (
        f"{where} presented a certificate this client does not trust ({reason}): set "
        f"{env_name('kafka_ssl_cafile')} to the CA certificate that signed it"
    )


def _tls_refused(where: str, exc: ssl.SSLError, connection: KafkaConnection) -> ConfigurationError:
    """The broker ended TLS after the handshake.

    With TLS 1.3 that is how a client certificate is refused or found missing.
    """
    reason = _reason(exc)
    if "certificate" in reason and connection.ssl_certfile is None:
        return AuthenticationFailedError(
            f"{where} requires a client certificate (mutual TLS): set "
            f"{env_name('kafka_ssl_certfile')} and {env_name('kafka_ssl_keyfile')}"
        )
    if "certificate" in reason or "unknown ca" in reason:
        return AuthenticationFailedError(
            f"{where} refused the client certificate ({reason}): authentication failed; "
            f"check {env_name('kafka_ssl_certfile')} (signed by a CA the broker trusts?)"
        )
    return ConfigurationError(f"TLS with {where} failed ({reason})")


def _sasl_log_in(sock: socket.socket, where: str, connection: KafkaConnection) -> None:
    assert connection.sasl_mechanism is not None and connection.sasl_password is not None
    mechanism = connection.sasl_mechanism.value
    answer = _call(sock, *_SASL_HANDSHAKE, _string(mechanism))
    error, mechanisms = _handshake_answer(answer)
    if not mechanisms:
        raise ConfigurationError(
            f"{where} does not use SASL ({env_name('kafka_security_protocol')}="
            f"{connection.security_protocol.value}): is this the port of its SASL listener?"
        )
    if error == _UNSUPPORTED_SASL_MECHANISM or mechanism not in mechanisms:
        raise ConfigurationError(
            f"{where} does not accept SASL mechanism {mechanism} (it accepts "
            f"{', '.join(mechanisms)}): set {env_name('kafka_sasl_mechanism')}"
        )
    if error:
        raise ConfigurationError(f"{where} refused the SASL handshake (error code {error})")
    client = _sasl_client(connection)
    while not client.is_done():
        answer = _call(sock, *_SASL_AUTHENTICATE, _bytes(client.auth_bytes()))
        error, message, auth_bytes = _authenticate_answer(answer)
        if error:
            raise AuthenticationFailedError(
                f"{where} refused user {connection.sasl_username!r} ({mechanism}): "
                f"authentication failed ({message or f'error code {error}'}); check "
                f"{env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')}"
            )
        client.receive(auth_bytes)
    if not client.is_authenticated():
        raise AuthenticationFailedError(
            f"{where} could not prove it knows the password of {connection.sasl_username!r} "
            f"({mechanism}): authentication failed"
        )


def _sasl_client(connection: KafkaConnection) -> Any:
    """kafka-python's own implementation of the mechanism (PLAIN, SCRAM)."""
    try:
        from kafka.net.sasl import get_sasl_mechanism  # kafka-python 3
    except ImportError:  # pragma: no cover - kafka-python 2.x
        from kafka.sasl import get_sasl_mechanism
    options = connection.options()
    options.pop("ssl_context", None)
    # Without the protocol it does not warn about SASL_PLAINTEXT: the clients built
    # next say it, once each; this check is not worth another line.
    options.pop("security_protocol")
    return get_sasl_mechanism(options["sasl_mechanism"])(host="", **options)


# -- the Kafka wire format of those few requests -----------------------------------------


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _bytes(value: bytes) -> bytes:
    return struct.pack(">i", len(value)) + value


def _call(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    """Send one request (header v1, client id ``fraudstream-verify``); return the answer body."""
    correlation = 1
    header = struct.pack(">hhi", api_key, version, correlation) + _string("fraudstream-verify")
    request = header + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    prefix = _receive(sock, 4)
    if prefix[:1] in (b"\x15", b"\x16") and prefix[1:2] == b"\x03":
        raise _Closed("a TLS record came back")
    (size,) = struct.unpack(">i", prefix)
    if not 4 <= size <= _LARGEST_ANSWER:
        raise _Closed(f"an answer of {size} bytes is no Kafka answer")
    answer = _receive(sock, size)
    if struct.unpack(">i", answer[:4])[0] != correlation:
        raise _Closed("the answer is for another request")
    return answer[4:]


def _receive(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    while count:
        chunk = sock.recv(count)
        if not chunk:
            raise _Closed("the connection was closed")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _handshake_answer(body: bytes) -> tuple[int, list[str]]:
    """``(error_code, enabled mechanisms)`` of a SaslHandshake v1 answer."""
    error, count = struct.unpack_from(">hi", body)
    offset, mechanisms = 6, []
    for _ in range(max(0, count)):
        (length,) = struct.unpack_from(">h", body, offset)
        mechanisms.append(body[offset + 2 : offset + 2 + length].decode())
        offset += 2 + length
    return error, mechanisms


def _authenticate_answer(body: bytes) -> tuple[int, str | None, bytes]:
    """``(error_code, error_message, auth_bytes)`` of a SaslAuthenticate v0 answer."""
    (error, length) = struct.unpack_from(">hh", body)
    offset = 4
    message = None
    if length >= 0:
        message = body[offset : offset + length].decode(errors="replace")
        offset += length
    (size,) = struct.unpack_from(">i", body, offset)
    offset += 4
    return error, message, body[offset : offset + max(0, size)]
