"""Security settings.

Refused up front in one line when they cannot work together, secrets never shown, and every Kafka
and Redis client of the project built from them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from fraudstream.cli import main
from fraudstream.service.kafka import KafkaConnection
from fraudstream.service.settings import SaslMechanism, SecurityProtocol, Settings

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = "; fix or unset it (environment or .env); `fraudstream config` shows every setting"


def _refusal(env: dict[str, str]) -> str:
    """The one line a command prints when it refuses to start."""
    result = CliRunner().invoke(main, ["schemas", "--help"], env=env)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_sasl_without_mechanism_user_or_password_is_refused_in_one_line() -> None:
    assert _refusal({"FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}) == (
        "Error: invalid setting FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL: SASL_SSL needs "
        "FRAUDSTREAM_KAFKA_SASL_MECHANISM, FRAUDSTREAM_KAFKA_SASL_USERNAME and "
        "FRAUDSTREAM_KAFKA_SASL_PASSWORD (the mechanism is PLAIN, SCRAM-SHA-256 or "
        "SCRAM-SHA-512)" + SUFFIX
    )
    only_password_missing = {
        "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FRAUDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FRAUDSTREAM_KAFKA_SASL_USERNAME": "app",
    }
    assert "SASL_PLAINTEXT needs FRAUDSTREAM_KAFKA_SASL_PASSWORD (" in _refusal(
        only_password_missing
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"FRAUDSTREAM_KAFKA_SASL_USERNAME": "app", "FRAUDSTREAM_KAFKA_SASL_PASSWORD": "pw"},
            "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT: PLAINTEXT does not use SASL, yet "
            "FRAUDSTREAM_KAFKA_SASL_USERNAME and FRAUDSTREAM_KAFKA_SASL_PASSWORD are set: use "
            "SASL_SSL (or SASL_PLAINTEXT), or unset them",
        ),
        (
            {"FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
             "FRAUDSTREAM_KAFKA_SASL_MECHANISM": "PLAIN", "FRAUDSTREAM_KAFKA_SASL_USERNAME": "a",
             "FRAUDSTREAM_KAFKA_SASL_PASSWORD": "b", "FRAUDSTREAM_KAFKA_SSL_CAFILE": "{ca}"},
            "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT: SASL_PLAINTEXT does not use TLS, "
            "yet FRAUDSTREAM_KAFKA_SSL_CAFILE is set: use SSL or SASL_SSL, or unset them",
        ),
        (
            {"FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "FRAUDSTREAM_KAFKA_SSL_KEYFILE": "{ca}"},
            "FRAUDSTREAM_KAFKA_SSL_KEYFILE={ca}: a client key needs its certificate: set "
            "FRAUDSTREAM_KAFKA_SSL_CERTFILE",
        ),
        (
            {"FRAUDSTREAM_REDIS_SSL_CA_CERTS": "{ca}"},
            "FRAUDSTREAM_REDIS_SSL_CA_CERTS={ca}: TLS files are used with rediss:// URLs only, "
            "and FRAUDSTREAM_REDIS_URL is a redis:// URL: write rediss://host:port/db, or unset "
            "FRAUDSTREAM_REDIS_SSL_CA_CERTS",
        ),
        (
            {"FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_TLS"},
            "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_TLS: Input should be 'PLAINTEXT', 'SSL', "
            "'SASL_PLAINTEXT' or 'SASL_SSL'",
        ),
        (
            {"FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
             "FRAUDSTREAM_KAFKA_SASL_MECHANISM": "GSSAPI"},
            "FRAUDSTREAM_KAFKA_SASL_MECHANISM=GSSAPI: Input should be 'PLAIN', 'SCRAM-SHA-256' "
            "or 'SCRAM-SHA-512'",
        ),
    ],
    ids=[
        "sasl-login-on-plaintext",
        "tls-file-without-tls",
        "key-without-certificate",
        "redis-tls-file-on-redis-url",
        "unknown-protocol",
        "unsupported-mechanism",
    ],
)  # fmt: skip
def test_settings_that_cannot_work_together_are_refused_naming_the_one_to_fix(
    env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    env = {k: v.replace("{ca}", str(ca)) for k, v in env.items()}
    assert _refusal(env) == "Error: invalid setting " + expected.replace("{ca}", str(ca)) + SUFFIX


def test_a_missing_or_unreadable_certificate_file_names_the_setting_and_the_path(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    env = {
        "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
        "FRAUDSTREAM_KAFKA_SSL_CAFILE": str(missing),
    }
    assert _refusal(env) == (
        f"Error: invalid setting FRAUDSTREAM_KAFKA_SSL_CAFILE={missing}: Value error, {missing} "
        "does not exist" + SUFFIX
    )
    url = "rediss://:pw@cache:6380/0"
    folder = {"FRAUDSTREAM_REDIS_URL": url, "FRAUDSTREAM_REDIS_SSL_CA_CERTS": str(tmp_path)}
    assert _refusal(folder) == (
        f"Error: invalid setting FRAUDSTREAM_REDIS_SSL_CA_CERTS={tmp_path}: Value error, "
        f"{tmp_path} is a folder, not a file" + SUFFIX
    )


def test_a_redis_url_of_another_scheme_is_refused_without_showing_its_password() -> None:
    line = _refusal({"FRAUDSTREAM_REDIS_URL": "http://:hunter2@cache:6379/0"})
    assert line == (
        "Error: invalid setting FRAUDSTREAM_REDIS_URL=http://:***@cache:6379/0: Value error, "
        "the URL must start with redis://, rediss:// (TLS) or unix://, not 'http'" + SUFFIX
    )


def test_misspelt_security_variables_are_refused_naming_the_setting_secrets_unshown() -> None:
    line = _refusal({"FRAUDSTREAM_KAFKA_SECURITY_PROTOKOL": "SASL_SSL"})
    assert line.startswith(
        "Error: invalid setting FRAUDSTREAM_KAFKA_SECURITY_PROTOKOL=SASL_SSL: not a setting "
        "(did you mean FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL?)"
    )
    line = _refusal({"FRAUDSTREAM_KAFKA_SASL_PASWORD": "hunter2"})
    assert line.startswith(
        "Error: invalid setting FRAUDSTREAM_KAFKA_SASL_PASWORD=**********: not a setting "
        "(did you mean FRAUDSTREAM_KAFKA_SASL_PASSWORD?)"
    )
    line = _refusal({"FRAUDSTREAM_REDIS_SSL_CA_CERT": "/etc/ca.pem"})
    assert "(did you mean FRAUDSTREAM_REDIS_SSL_CA_CERTS?)" in line


def test_config_shows_the_security_settings_with_every_secret_masked(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {
        "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "FRAUDSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FRAUDSTREAM_KAFKA_SASL_USERNAME": "fraud-app",
        "FRAUDSTREAM_KAFKA_SASL_PASSWORD": "kafka-hunter2",
        "FRAUDSTREAM_KAFKA_SSL_CAFILE": str(ca),
        "FRAUDSTREAM_REDIS_URL": "rediss://:redis-hunter2@cache.internal:6380/0",
        "FRAUDSTREAM_REDIS_SSL_CA_CERTS": str(ca),
    }
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "hunter2" not in out
    for line in (
        "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "FRAUDSTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-512",
        "FRAUDSTREAM_KAFKA_SASL_USERNAME=fraud-app",
        "FRAUDSTREAM_KAFKA_SASL_PASSWORD=**********",
        f"FRAUDSTREAM_KAFKA_SSL_CAFILE={ca}",
        "FRAUDSTREAM_KAFKA_SSL_KEYFILE=",  # unset
        "FRAUDSTREAM_REDIS_URL=rediss://:***@cache.internal:6380/0",
    ):
        assert f"\n{line}\n" in f"\n{out}", line
    # An invalid combination is shown too, secrets still masked, and config exits 1.
    broken = {**env, "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL"}
    shown = CliRunner().invoke(main, ["config"], env=broken)
    assert shown.exit_code == 1 and "hunter2" not in shown.output
    assert (
        "FRAUDSTREAM_KAFKA_SECURITY_PROTOCOL=SSL  <- INVALID: SSL does not use SASL, yet "
        "FRAUDSTREAM_KAFKA_SASL_MECHANISM, FRAUDSTREAM_KAFKA_SASL_USERNAME and "
        "FRAUDSTREAM_KAFKA_SASL_PASSWORD are set"
    ) in shown.output


def test_the_connection_gives_kafka_python_every_security_option_and_never_shows_secrets(
    tmp_path: Path,
) -> None:
    settings = Settings(
        _env_file=None,
        bootstrap_servers="b1:9096,b2:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="app",
        kafka_sasl_password="s3cret",
        kafka_ssl_check_hostname=False,
    )
    connection = KafkaConnection.of(settings)
    options = connection.options()
    assert options.pop("ssl_context").check_hostname is False
    assert options == {
        "bootstrap_servers": "b1:9096,b2:9096",
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": False,
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "app",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(connection) + connection.describe()
    assert KafkaConnection.of("h:1") == KafkaConnection("h:1", SecurityProtocol.PLAINTEXT)
    assert connection.sasl_mechanism is SaslMechanism.SCRAM_SHA_256
    assert connection.sasl_password == SecretStr("s3cret")


#: Where a Kafka or Redis client may be built without the settings' security options,
#: and why. Everything else goes through make_producer/make_consumer/make_admin
#: (given the settings or a KafkaConnection) and redis_client(settings).
ALLOWED = {
    "service/kafka/clients.py": "the one place kafka-python clients are built",
    "service/redis_client.py": "the one place Redis clients are built",
    "devstack/kafka.py": "probes and warms up the dev stack's own PLAINTEXT listener",
    "devstack/redis.py": "pings the dev stack's own plain port",
    "devstack/redis_cluster.py": "joins the dev stack's own cluster nodes",
    "evaluation/prequential.py": "a redis-server the evaluation started itself",
    "bench/features.py": "a redis-server the micro-benchmark started (or --redis-url)",
    "examples/case_queue.py": "a downstream consumer given KafkaConnection.options()",
}
_BUILDERS = {
    "make_producer", "make_consumer", "make_admin", "ensure_topics", "check_reachable",
    "committed_offsets", "verify",
}  # fmt: skip
_DIRECT = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "Redis", "from_url"}


def test_every_client_the_project_builds_gets_the_security_settings() -> None:
    problems = []
    for folder in ("service", "producers", "bench", "devstack", "evaluation", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0] if node.args else None
                if called in _BUILDERS and first is not None:
                    text = ast.unparse(first)
                    if "bootstrap" in text or text.startswith(("f'", 'f"', "'", '"')):
                        problems.append(f"{name}:{node.lineno} {called}({text}, ...)")
                elif called in _DIRECT:
                    problems.append(f"{name}:{node.lineno} {ast.unparse(func)}(...)")
    assert not problems, "clients built without the security settings:\n" + "\n".join(problems)
