"""A broken start gives one clear line saying what is wrong and what to do."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fraudstream.devstack import KafkaServer, RedisServer, fetch_kafka_jars, free_port
from fraudstream.devstack.kafka import find_java
from fraudstream.service.errors import DevStackError


def test_missing_java_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DevStackError, match=r"Java 17 or newer .* install it") as info:
        find_java()
    assert "\n" not in str(info.value)


def test_missing_maven_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DevStackError, match=r"Maven \(mvn\) is needed .* apt-get install maven"):
        fetch_kafka_jars(tmp_path)


def test_unreachable_maven_repository_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A stand-in mvn that fails the way Maven does when Central is unreachable.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    mvn = fake_bin / "mvn"
    mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Failed to execute goal: Could not transfer artifact "
        "org.apache.kafka:kafka_2.13:pom:4.1.1 from/to central: Connection refused'\nexit 1\n"
    )
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")
    with pytest.raises(
        DevStackError, match=r"Maven could not fetch .*Connection refused.*Maven Central"
    ):
        fetch_kafka_jars(tmp_path / "cache")


@pytest.fixture
def taken_port() -> object:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_taken_kafka_port_is_one_clear_line(taken_port: int, tmp_path: Path) -> None:
    server = KafkaServer(tmp_path, tmp_path, port=taken_port, controller_port=free_port())
    with pytest.raises(DevStackError, match=f"Kafka port {taken_port} is taken"):
        server.start()


def test_taken_redis_port_is_one_clear_line(taken_port: int, tmp_path: Path) -> None:
    with pytest.raises(DevStackError, match=f"Redis port {taken_port} is taken"):
        RedisServer(tmp_path, port=taken_port).start()
