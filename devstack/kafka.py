"""A real single-node Apache Kafka (KRaft, broker + controller) run from Maven jars."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fraudstream.devstack.ports import ManagedServer, port_is_free, quiet_kafka_logs, tail
from fraudstream.service.errors import DevStackError
from fraudstream.service.kafka import accepts_connections

KAFKA_VERSION = "4.1.1"
_JAVA_MIN_MAJOR = 17


def _java_major(java: str) -> int:
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        raise DevStackError(f"could not read the Java version from `{java} -version`.")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """Path of a Java >= 17 runtime (``JAVA_HOME`` first, then ``PATH``)."""
    java_home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(java_home) / "bin" / "java")] if java_home else []
    candidates += [found] if (found := shutil.which("java")) else []
    for java in candidates:
        if Path(java).exists() and _java_major(java) >= _JAVA_MIN_MAJOR:
            return java
    raise DevStackError(
        "Java 17 or newer is needed to run the local Kafka broker and none was found: "
        "install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME."
    )


def fetch_kafka_jars(
    cache_dir: Path,
    version: str = KAFKA_VERSION,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Download Kafka's broker jars with Maven into ``cache_dir`` (once) and return the folder.

    The jars land in ``cache_dir/kafka-<version>/libs``; Maven's own local
    repository (``~/.m2``) keeps them across clones, so a warm fetch only copies.
    ``progress`` receives a line every few seconds while Maven downloads
    (files and megabytes so far), so a cold fetch is not silent.
    """
    cache_dir = cache_dir.resolve()
    libs = cache_dir / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevStackError(
            "Maven (mvn) is needed to fetch the Kafka jars and is not installed: "
            "apt-get install maven, or use docker compose up."
        )
    work = cache_dir / f"kafka-{version}"
    work.mkdir(parents=True, exist_ok=True)
    pom = resources.files("fraudstream.devstack").joinpath("kafka-pom.xml").read_text()
    (work / "pom.xml").write_text(pom.replace("@KAFKA_VERSION@", version))
    if libs.exists():
        shutil.rmtree(libs)
    command = [
        mvn,
        "-B",
        "-f",
        str(work / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    returncode, output = _run_maven(command, progress)
    if returncode != 0:
        lines = [line for line in output.splitlines() if "ERROR" in line]
        detail = lines[0] if lines else output.strip()[-300:]
        raise DevStackError(
            f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} ({detail}): "
            "check network access to Maven Central (or a mirror in ~/.m2/settings.xml)."
        )
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise DevStackError(f"Maven finished but no Kafka jar is in {libs}.")
    marker.write_text(version)
    return libs


_DOWNLOADED = re.compile(r"^(?:\[INFO\] )?Downloaded from \S+: \S+ \(([\d.]+) (B|kB|MB)")
_SIZE = {"B": 1e-6, "kB": 1e-3, "MB": 1.0}


def _run_maven(command: list[str], progress: Callable[[str], None] | None) -> tuple[int, str]:
    """Run Maven; report downloads to ``progress`` every 3 s; return (exit code, output)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    lines: list[str] = []
    files, megabytes, last_report = 0, 0.0, time.monotonic()
    for line in process.stdout:
        lines.append(line)
        found = _DOWNLOADED.match(line)
        if found:
            files += 1
            megabytes += float(found.group(1)) * _SIZE[found.group(2)]
        if progress is not None and files and time.monotonic() - last_report >= 3:
            progress(f"maven: {files} files downloaded ({megabytes:.1f} MB)...")
            last_report = time.monotonic()
    returncode = process.wait()
    if progress is not None and files:
        progress(f"maven: {files} files downloaded ({megabytes:.1f} MB)")
    return returncode, "".join(lines)


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (like Kafka's)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners={listeners},CONTROLLER://{host}:{controller_port}
advertised.listeners={listeners}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{protocol_map}
log.dirs={log_dirs}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
log.retention.bytes=-1
message.max.bytes=2097152
"""

_LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""


#: SASL mechanisms the secured listeners accept; every user exists for each.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class BrokerSecurity:
    """Secured listeners of a local broker, next to its PLAINTEXT one.

    A listener is opened for each port given: ``SASL_PLAINTEXT``, ``SSL``
    (mutual TLS: a client certificate signed by ``truststore`` is required)
    and ``SASL_SSL``. SASL accepts PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for
    every user of ``users`` (SCRAM credentials are written when the storage is
    formatted). The PLAINTEXT listener stays for the broker's own traffic.

    Parameters
    ----------
    users
        Username -> password.
    keystore
        PEM file with the broker's private key (unencrypted PKCS#8) and
        certificate chain; needed by the TLS listeners.
    truststore
        PEM file of the CA certificates client certificates must chain to.
    sasl_port, ssl_port, sasl_ssl_port
        Ports of the listeners to open (``None``: not opened).
    """

    users: Mapping[str, str] = field(default_factory=dict)
    keystore: Path | None = None
    truststore: Path | None = None
    sasl_port: int | None = None
    ssl_port: int | None = None
    sasl_ssl_port: int | None = None

    def listeners(self) -> dict[str, int]:
        """Listener name (= its security protocol) -> port, of the listeners to open."""
        ports = {
            "SASL_PLAINTEXT": self.sasl_port,
            "SSL": self.ssl_port,
            "SASL_SSL": self.sasl_ssl_port,
        }
        return {name: port for name, port in ports.items() if port is not None}

    def properties(self) -> str:
        """Broker properties of the secured listeners."""
        lines: list[str] = []
        listeners = self.listeners()
        if "SSL" in listeners or "SASL_SSL" in listeners:
            if self.keystore is None or self.truststore is None:
                raise DevStackError("TLS listeners need a keystore and a truststore (PEM files)")
            lines += [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={self.keystore}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.truststore}",
                "listener.name.ssl.ssl.client.auth=required",
            ]
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        for name in ("SASL_PLAINTEXT", "SASL_SSL"):
            if name not in listeners:
                continue
            prefix = f"listener.name.{name.lower()}"
            lines += [
                f"{prefix}.sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
                f"{prefix}.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
                *(
                    f"{prefix}.{mechanism.lower()}.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    for mechanism in SASL_MECHANISMS[1:]
                ),
            ]
        return "\n".join(lines) + "\n" if lines else ""

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create every user's SCRAM credentials."""
        if "SASL_PLAINTEXT" not in self.listeners() and "SASL_SSL" not in self.listeners():
            return []
        return [
            f"--add-scram={mechanism}=[name={name},password={password}]"
            for name, password in self.users.items()
            for mechanism in SASL_MECHANISMS[1:]
        ]


@dataclass
class KafkaServer(ManagedServer):
    """A single-node KRaft Kafka broker owned by fraudstream.

    Parameters
    ----------
    data_dir
        Storage, config, pid file and log of this broker.
    cache_dir
        Where the jars are fetched (shared by every broker).
    port, controller_port
        Client and controller listener ports on 127.0.0.1.
    heap_mb
        Java heap; 512 MB is plenty for tests and the demo.
    security
        Secured listeners (SASL, TLS) opened next to the PLAINTEXT one
        (default: none).
    """

    cache_dir: Path = Path(".cache")
    port: int = 9092
    controller_port: int = 9093
    heap_mb: int = 512
    host: str = "127.0.0.1"
    version: str = KAFKA_VERSION
    security: BrokerSecurity | None = None

    name = "Kafka"
    pid_name = "kafka.pid"
    log_name = "server.log"

    def _logs(self) -> str:
        return f"{super()._logs()}\n{tail(self.data_dir / 'stdout.log')}"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` of the PLAINTEXT listener."""
        return f"{self.host}:{self.port}"

    def listener_ports(self) -> dict[str, int]:
        """Security protocol -> port of every client listener (PLAINTEXT first)."""
        secured = self.security.listeners() if self.security is not None else {}
        return {"PLAINTEXT": self.port, **secured}

    def bootstrap_for(self, protocol: str) -> str:
        """``host:port`` of the listener speaking ``protocol`` (e.g. ``SASL_SSL``)."""
        ports = self.listener_ports()
        if protocol not in ports:
            raise DevStackError(f"this broker has no {protocol} listener (it has {list(ports)})")
        return f"{self.host}:{ports[protocol]}"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        ports = self.listener_ports()
        config.write_text(
            _SERVER_PROPERTIES.format(
                host=self.host,
                listeners=",".join(f"{name}://{self.host}:{port}" for name, port in ports.items()),
                protocol_map=",".join(f"{name}:{name}" for name in ports),
                controller_port=self.controller_port,
                log_dirs=self.data_dir / "logs",
            )
            + (self.security.properties() if self.security is not None else "")
        )
        (self.data_dir / "log4j.properties").write_text(
            _LOG4J_PROPERTIES.format(log_file=self.log_file)
        )
        return config

    def start(self, timeout_s: float = 60.0) -> None:
        """Fetch jars if needed, format storage on first start, start, wait for metadata."""
        if self.running_pid() is not None:
            return
        java = find_java()
        for port in (*self.listener_ports().values(), self.controller_port):
            if not port_is_free(port, self.host):
                raise DevStackError(
                    f"Kafka port {port} is taken by another process: stop it or choose "
                    "other ports (--kafka-port/--controller-port)."
                )
        libs = fetch_kafka_jars(self.cache_dir, self.version)
        config = self._write_config()
        classpath = f"{libs}/*"
        if not (self.data_dir / "logs" / "meta.properties").exists():
            result = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    # "=" form: an id may start with "-", which argparse would
                    # otherwise take for an option.
                    f"--cluster-id={_random_cluster_id()}",
                    "-c",
                    str(config),
                    "--ignore-formatted",
                    *(self.security.scram_arguments() if self.security is not None else []),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise DevStackError(
                    f"formatting Kafka storage in {self.data_dir} failed: "
                    f"{(result.stderr or result.stdout).strip()[-400:]}"
                )
        with open(self.data_dir / "stdout.log", "ab") as out:
            self._launch(
                [
                    java,
                    f"-Xmx{self.heap_mb}m",
                    f"-Xms{min(256, self.heap_mb)}m",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(config),
                ],
                output=out,
            )
        self._await_ready(self.answers_metadata, "metadata requests", timeout_s, every_s=0.25)

    @quiet_kafka_logs()
    def await_group_coordinator(self, timeout_s: float = 60.0) -> None:
        """Wait until the broker coordinates consumer groups (its offsets topic exists).

        A fresh broker creates ``__consumer_offsets`` on the first group request;
        the first groups formed meanwhile rebalance more than once.
        """
        from kafka.errors import KafkaError

        from fraudstream.service.kafka import make_admin

        deadline = time.monotonic() + timeout_s
        admin = make_admin(self.bootstrap_servers, client_id="fraudstream-devstack")
        try:
            while True:
                try:
                    admin.list_group_offsets({"fraudstream-devstack-warm-up": None})
                    return
                except KafkaError:
                    if time.monotonic() > deadline:
                        raise DevStackError(
                            f"Kafka at {self.bootstrap_servers} does not coordinate consumer "
                            f"groups after {timeout_s:.0f} s; {self._logs()}"
                        ) from None
                    time.sleep(0.25)
        finally:
            admin.close()

    @quiet_kafka_logs()
    def answers_metadata(self) -> bool:
        """Whether the broker answers a metadata request with itself as a live broker."""
        return self.describe() is not None

    @quiet_kafka_logs()
    def describe(self) -> dict[str, object] | None:
        """Cluster id and brokers, or ``None`` when the broker does not answer."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        if not accepts_connections(self.port, self.host):
            return None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                request_timeout_ms=3000,
                client_id="fraudstream-devstack",
            )
        except (KafkaError, OSError, ValueError, TypeError):
            return None
        try:
            cluster = admin.describe_cluster()
            return {
                "cluster_id": cluster.get("cluster_id"),
                "brokers": len(cluster.get("brokers", [])),
                "version": self.version,
            }
        except (KafkaError, OSError):
            return None
        finally:
            admin.close()
