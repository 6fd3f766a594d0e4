"""Security on real servers: Kafka over SASL and mutual TLS, Redis with a password and TLS.

The broker (``secured_kafka``) has SASL_PLAINTEXT, SSL (a client certificate is
required) and SASL_SSL listeners, users with PLAIN and SCRAM credentials; Redis
(``secured_redis``) has ``requirepass`` and a TLS port. Their certificates come
from a CA that ``openssl`` makes for the session. Both start only for this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from conftest import KAFKA_USERS, REDIS_PASSWORD, AppUnderTest, settings_env

from fraudstream.cli import main
from fraudstream.devstack import KafkaServer, RedisServer, TestPki
from fraudstream.service.app import Application
from fraudstream.service.errors import AuthenticationFailedError, ConfigurationError
from fraudstream.service.kafka import check_reachable, ensure_topics, make_producer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.redis_client import redis_client
from fraudstream.service.schemas import Alert
from fraudstream.service.settings import Settings

NOW = datetime.now(UTC).replace(microsecond=0)
USER, PASSWORD = next(iter(KAFKA_USERS.items()))
#: Addresses where nothing listens, for tests that never reach that server.
NO_KAFKA, NO_REDIS = "127.0.0.1:1", "redis://127.0.0.1:1/0"


def _sasl(
    kafka: KafkaServer, protocol: str, mechanism: str, password: str = PASSWORD
) -> dict[str, Any]:
    return {
        "bootstrap_servers": kafka.bootstrap_for(protocol),
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": USER,
        "kafka_sasl_password": password,
    }


def _mutual_tls(kafka: KafkaServer, pki: TestPki) -> dict[str, Any]:
    return {
        "bootstrap_servers": kafka.bootstrap_for("SSL"),
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": pki.ca_cert,
        "kafka_ssl_certfile": pki.client_cert,
        "kafka_ssl_keyfile": pki.client_key,
        "kafka_ssl_keyfile_password": pki.client_key_password,
    }


def _scored_end_to_end(
    settings: Settings,
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    make_transaction: Callable[..., tuple[bytes, bytes]],
) -> list[Alert]:
    """Produce transactions, let the real Application score them, read the alerts back.

    Every client (admin, producers, consumers) goes over the settings' security.
    """
    run_app(settings)
    records = [
        make_transaction(f"sec-{i}", f"card-{i % 3}", "T1", 10.0 + i, NOW - timedelta(minutes=i))
        for i in range(6)
    ]
    produce(settings, settings.topic_transactions, records)
    alerts = consume(settings, settings.topic_alerts, at_least=6, timeout_s=120)
    return [Alert.model_validate_json(r.value or b"") for r in alerts]


def test_scoring_over_sasl_plaintext_with_plain_and_redis_with_a_password(
    secured_kafka: KafkaServer,
    secured_redis: RedisServer,
    make_settings: Callable[..., Settings],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    make_transaction: Callable[..., tuple[bytes, bytes]],
) -> None:
    settings = make_settings(
        **_sasl(secured_kafka, "SASL_PLAINTEXT", "PLAIN"),
        redis_url=secured_redis.url,
        alert_threshold=0.0,  # every scored transaction alerts
    )
    alerts = _scored_end_to_end(settings, run_app, produce, consume, make_transaction)
    assert sorted(a.transaction_id for a in alerts) == [f"sec-{i}" for i in range(6)]


def test_scoring_over_mutual_tls_with_redis_over_tls(
    secured_kafka: KafkaServer,
    secured_redis: RedisServer,
    test_pki: TestPki,
    make_settings: Callable[..., Settings],
    run_app: Callable[[Settings], AppUnderTest],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    make_transaction: Callable[..., tuple[bytes, bytes]],
) -> None:
    settings = make_settings(
        **_mutual_tls(secured_kafka, test_pki),
        redis_url=secured_redis.tls_url,
        redis_ssl_ca_certs=test_pki.ca_cert,
        redis_ssl_certfile=test_pki.client_cert,
        redis_ssl_keyfile=test_pki.client_key,
        redis_ssl_keyfile_password=test_pki.client_key_password,
        alert_threshold=0.0,
    )
    alerts = _scored_end_to_end(settings, run_app, produce, consume, make_transaction)
    assert len({a.transaction_id for a in alerts}) == 6
    # The features really are in the TLS Redis: the card's state was written there.
    client = redis_client(settings)
    try:
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"
        assert list(client.scan_iter(f"{settings.redis_prefix}:*", count=1000))
    finally:
        client.close()


def test_the_cli_produces_over_sasl_ssl_with_scram(
    secured_kafka: KafkaServer,
    test_pki: TestPki,
    make_settings: Callable[..., Settings],
    consume: Callable[..., list[ConsumerRecord]],
    tmp_path: Path,
) -> None:
    settings = make_settings(
        **_sasl(secured_kafka, "SASL_SSL", "SCRAM-SHA-512"),
        kafka_ssl_cafile=test_pki.ca_cert,
        redis_url=NO_REDIS,  # not used by `produce`
    )
    rows = tmp_path / "tx.jsonl"
    rows.write_bytes(
        b"".join(
            orjson.dumps({"transaction_id": f"f{i}", "card_id": "c1", "terminal_id": "t1",
                          "amount": 5 + i, "timestamp": 1_700_000_000_000 + i}) + b"\n"
            for i in range(5)
        )
    )  # fmt: skip
    env = settings_env(settings)
    result = CliRunner().invoke(main, ["produce", str(rows), "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    sent = consume(settings, settings.topic_transactions, at_least=5)
    assert sorted(orjson.loads(r.value or b"")["transaction_id"] for r in sent) == [
        f"f{i}" for i in range(5)
    ]


@pytest.fixture
def no_kafka_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if a kafka-python client is built: the errors must come first."""
    from fraudstream.service.kafka import clients

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Kafka client was built although the login cannot succeed")

    for name in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(clients, name, refuse)
    yield


def test_a_wrong_sasl_password_is_one_line_at_once_not_a_bootstrap_timeout(
    secured_kafka: KafkaServer,
    test_pki: TestPki,
    make_settings: Callable[..., Settings],
    no_kafka_client: None,
) -> None:
    # kafka-python retries a refused login until its 30 s bootstrap timeout and then
    # says only "Unable to bootstrap": the login is checked before any client is built.
    for protocol, mechanism, extra in (
        ("SASL_PLAINTEXT", "PLAIN", {}),
        ("SASL_SSL", "SCRAM-SHA-256", {"kafka_ssl_cafile": test_pki.ca_cert}),
    ):
        settings = make_settings(
            **_sasl(secured_kafka, protocol, mechanism, password="not-the-password"),
            **extra,
            redis_url=NO_REDIS,
        )
        address = secured_kafka.bootstrap_for(protocol)
        result = CliRunner().invoke(
            main, ["alerts", "tail", "--idle-timeout", "1"], env=settings_env(settings)
        )
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith(
            f"Error: Kafka at {address} refused user '{USER}' ({mechanism}): authentication "
            "failed (Authentication failed"
        )
        assert lines[0].endswith(
            "; check FRAUDSTREAM_KAFKA_SASL_USERNAME and FRAUDSTREAM_KAFKA_SASL_PASSWORD"
        )
        assert "not-the-password" not in result.output
        with pytest.raises(AuthenticationFailedError, match="authentication failed"):
            make_producer(settings, client_id="t")


def test_the_service_stops_at_once_on_a_refused_sasl_login(
    secured_kafka: KafkaServer,
    secured_redis: RedisServer,
    make_settings: Callable[..., Settings],
    no_kafka_client: None,
) -> None:
    settings = make_settings(
        **_sasl(secured_kafka, "SASL_PLAINTEXT", "SCRAM-SHA-512", password="wrong"),
        redis_url=secured_redis.url,
    )
    with pytest.raises(AuthenticationFailedError, match=r"refused user .*authentication failed"):
        Application(settings).run()


def test_tls_and_protocol_mistakes_name_the_setting_to_fix(
    secured_kafka: KafkaServer, test_pki: TestPki, make_settings: Callable[..., Settings]
) -> None:
    def problem(**values: Any) -> str:
        with pytest.raises(ConfigurationError) as raised:
            check_reachable(make_settings(**values, redis_url=NO_REDIS))
        return str(raised.value)

    ssl_at = secured_kafka.bootstrap_for("SSL")
    untrusted = problem(bootstrap_servers=ssl_at, kafka_security_protocol="SSL")
    assert untrusted == (
        f"Kafka at {ssl_at} presented a certificate this client does not trust (unable to get "
        "local issuer certificate): set FRAUDSTREAM_KAFKA_SSL_CAFILE to the CA certificate "
        "that signed it"
    )
    no_client_certificate = problem(
        bootstrap_servers=ssl_at, kafka_security_protocol="SSL", kafka_ssl_cafile=test_pki.ca_cert
    )
    assert no_client_certificate == (
        f"Kafka at {ssl_at} requires a client certificate (mutual TLS): set "
        "FRAUDSTREAM_KAFKA_SSL_CERTFILE and FRAUDSTREAM_KAFKA_SSL_KEYFILE"
    )
    wrong_key_password = problem(
        **{**_mutual_tls(secured_kafka, test_pki), "kafka_ssl_keyfile_password": "nope"}
    )
    assert "cannot be loaded" in wrong_key_password
    assert "is FRAUDSTREAM_KAFKA_SSL_KEYFILE_PASSWORD right?" in wrong_key_password
    plaintext_on_tls = problem(bootstrap_servers=ssl_at)
    assert "this listener speaks TLS: use SSL or SASL_SSL" in plaintext_on_tls
    sasl_at = secured_kafka.bootstrap_for("SASL_PLAINTEXT")
    plaintext_on_sasl = problem(bootstrap_servers=sasl_at)
    assert plaintext_on_sasl.startswith(f"Kafka at {sasl_at} did not answer a Kafka request")
    assert "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL" in plaintext_on_sasl


def _cli_line(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(main, list(args), env=settings_env(settings))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_a_wrong_redis_password_says_authentication_failed(
    secured_redis: RedisServer, make_settings: Callable[..., Settings]
) -> None:
    wrong = secured_redis.url.replace(REDIS_PASSWORD, "wrong-pass-9")
    masked = wrong.replace("wrong-pass-9", "***")
    # Redis is checked first: no Kafka is needed to be refused.
    settings = make_settings(redis_url=wrong, bootstrap_servers=NO_KAFKA)
    expected = (
        f"Error: Redis at {masked}: authentication failed (invalid username-password pair or "
        "user is disabled): fix the password in FRAUDSTREAM_REDIS_URL "
        "(redis://[user]:password@host:port/db)"
    )
    assert _cli_line(settings, "state", "status") == expected
    assert _cli_line(settings, "model", "list") == expected
    none_given = make_settings(
        redis_url=secured_redis.url.replace(f":{REDIS_PASSWORD}@", ""),
        bootstrap_servers=NO_KAFKA,
    )
    assert "authentication failed (Authentication required)" in _cli_line(
        none_given, "state", "status"
    )
    # The service refuses to start instead of waiting for a password that will not change...
    with pytest.raises(AuthenticationFailedError) as refused:
        Application(settings).run()
    assert str(refused.value) == expected.removeprefix("Error: ")
    # ...and once running, readiness says why (a password rotated under it).
    app = Application(settings)
    app._redis = redis_client(settings)
    try:
        ready, reason = app.ready()
        assert not ready and "authentication failed" in reason and "wrong-pass-9" not in reason
    finally:
        app._redis.close()


def test_redis_tls_mistakes_name_the_setting_to_fix(
    secured_redis: RedisServer, test_pki: TestPki, make_settings: Callable[..., Settings]
) -> None:
    untrusted = make_settings(redis_url=secured_redis.tls_url, bootstrap_servers=NO_KAFKA)
    line = _cli_line(untrusted, "state", "status")
    masked = secured_redis.tls_url.replace(REDIS_PASSWORD, "***")
    assert line.startswith(f"Error: Redis at {masked} presented a certificate")
    assert "certificate this client does not trust" in line
    assert line.endswith("set FRAUDSTREAM_REDIS_SSL_CA_CERTS to the CA that signed it")
    assert secured_redis.tls is not None
    plain_on_tls = make_settings(
        redis_url=f"redis://:{REDIS_PASSWORD}@127.0.0.1:{secured_redis.tls.port}/0",
        bootstrap_servers=NO_KAFKA,
    )
    assert "is it a TLS port? (write rediss://" in _cli_line(plain_on_tls, "state", "status")
    trusted = make_settings(
        redis_url=secured_redis.tls_url,
        redis_ssl_ca_certs=test_pki.ca_cert,
        bootstrap_servers=NO_KAFKA,
    )
    client = redis_client(trusted)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_alerts_tail_reads_over_sasl_ssl(
    secured_kafka: KafkaServer,
    test_pki: TestPki,
    make_settings: Callable[..., Settings],
    produce: Callable[..., None],
) -> None:
    settings = make_settings(
        **_sasl(secured_kafka, "SASL_SSL", "PLAIN"),
        kafka_ssl_cafile=test_pki.ca_cert,
        redis_url=NO_REDIS,
    )
    ensure_topics(settings, {settings.topic_alerts: 1})
    alert = {"alert_id": "a1", "score": 0.9, "card_id": "c9", "event_time": NOW.isoformat()}
    produce(settings, settings.topic_alerts, [(b"c9", orjson.dumps(alert))])
    result = CliRunner().invoke(
        main,
        ["alerts", "tail", "--from-beginning", "--json", "-n", "1", "--idle-timeout", "30"],
        env=settings_env(settings),
    )
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output.strip().splitlines()[-1])["alert_id"] == "a1"
