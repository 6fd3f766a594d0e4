"""Operating fraudstream, end to end on real Kafka and Redis.

With `fraudstream serve` as a process: the dashboard's metrics exist on /metrics, `status` reads
the endpoint, `alerts tail --json` follows the alerts, the logs are JSON lines without per-event
spam, and the README's case-queue consumer keeps one case per alert id.

One service and one stream serve every test of the module (starting them is
the slow part).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import isolated_names, settings_env, stop_processes
from kafka_extras import delivered

from fraudstream.devstack import free_port
from fraudstream.devstack.dashboard import DASHBOARD, metric_names, panel_queries
from fraudstream.producers.labels import LabelDelay
from fraudstream.producers.simulator import SimulationConfig, simulate
from fraudstream.producers.stream import label_rows, label_simulation, stream_simulation
from fraudstream.service.cli_status import parse_exposition, value
from fraudstream.service.kafka import make_producer
from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.schemas import Alert
from fraudstream.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
Completed = subprocess.CompletedProcess[str]


def _cli(settings: Settings, *args: str, timeout_s: float = 120) -> Completed:
    return subprocess.run(
        [sys.executable, "-m", "fraudstream", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
    )


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())


@dataclass
class Running:
    settings: Settings
    url: str
    log: Path
    process: subprocess.Popen[bytes]
    transactions: int


@pytest.fixture(scope="module")
def running(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    suffix = os.urandom(5).hex()
    port = free_port()
    settings = Settings(
        _env_file=None,
        bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        redis_prefix=f"ops{suffix}",
        **isolated_names(lambda role: f"{role}-{suffix}"),
        topic_partitions=2,
        metrics_port=port,
        log_format="json",
        min_labels_for_model=100,
        publish_every_labels=300,
        alert_threshold=0.3,
    )
    log = tmp_path_factory.mktemp("ops") / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudstream", "serve"],
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "service not ready in 90 s:\n" + log.read_text()
            time.sleep(0.5)
        config = SimulationConfig(seed=4, n_customers=150, n_terminals=300, n_days=12)
        stats = stream_simulation(settings, config, label_delay=None)
        producer = make_producer(kafka_bootstrap, client_id="ops-test")
        delivered(producer.send(settings.topic_transactions, key=b"x", value=b"{not json"), 30)

        def wait_until(metric: str, at_least: float) -> None:
            deadline = time.monotonic() + 180
            while (seen := value(parse_exposition(_metrics(url)), metric)) < at_least:
                assert time.monotonic() < deadline, f"{metric} {seen} < {at_least}"
                time.sleep(0.5)

        wait_until("fraudstream_transactions_processed_total", stats.transactions)
        # Labels once every snapshot is stored (sent together, a label can
        # overtake its transaction's scoring and would wait for it).
        sim = simulate(config)
        labels = label_simulation(sim, LabelDelay(delay_s=86_400))
        for label in label_rows(sim, labels, np.argsort(labels.labeled_ms)):
            producer.send(settings.topic_labels, key=label["card_id"].encode(),
                          value=orjson.dumps(label))  # fmt: skip
        producer.flush(timeout=60)
        producer.close()
        wait_until("fraudstream_learner_model_version", 1)
        deadline = time.monotonic() + 30
        while {"scorer", "learner"} - {  # lag is reported every 5 s once partitions are assigned
            dict(labels).get("role")
            for name, labels in parse_exposition(_metrics(url))
            if name == "fraudstream_consumer_lag"
        }:
            assert time.monotonic() < deadline, "no consumer lag reported"
            time.sleep(0.5)
        yield Running(settings, url, log, process, stats.transactions)
    finally:
        stop_processes([process])


def test_every_metric_a_dashboard_panel_queries_exists(running: Running) -> None:
    exposed = {name for name, _ in parse_exposition(_metrics(running.url))}
    dashboard = json.loads(DASHBOARD.read_text())
    missing = {
        (title, name)
        for title, expr in panel_queries(dashboard)
        for name in metric_names(expr)
        if name not in exposed
    }
    assert not missing, (
        f"panels query metrics the service does not export: {sorted(missing)}\n"
        + running.log.read_text()[-3000:]
    )


def test_latency_histogram_counts_every_transaction(running: Running) -> None:
    samples = parse_exposition(_metrics(running.url))
    count = value(samples, "fraudstream_end_to_end_latency_seconds_count")
    assert count == value(samples, "fraudstream_transactions_processed_total")
    assert count >= running.transactions


def test_status_reads_the_running_service(running: Running) -> None:
    result = _cli(running.settings, "status", "--url", running.url, "--interval", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["ready"] is True and info["ready_reason"] == "ready"
    assert info["transactions_scored"] >= running.transactions
    assert info["learner_model_version"] > 0
    assert info["dead_letters"]["DecodeError"] == 1  # the one bad record sent
    assert set(info["lag"]) == {"scorer", "learner"}
    assert info["insecure_signing_key"] is True
    text = _cli(running.settings, "status", "--url", running.url, "--interval", "0")
    assert text.returncode == 0 and text.stdout.startswith(f"fraudstream at {running.url}: READY")
    assert "lag          scorer" in text.stdout


def test_alerts_tail_json_follows_the_alerts_topic(
    running: Running, consume: Callable[..., list[ConsumerRecord]]
) -> None:
    s = running.settings
    published = consume(
        s.bootstrap_servers, s.topic_alerts, at_least=1, settle_s=2, read_committed=True
    )
    assert published
    result = _cli(s, "alerts", "tail", "--json", "--from-beginning", "--idle-timeout", "4")
    assert result.returncode == 0, result.stderr
    tailed = [Alert.model_validate_json(line) for line in result.stdout.splitlines()]
    assert {a.alert_id for a in tailed} == {
        Alert.model_validate_json(r.value or b"").alert_id for r in published
    }
    # Without --json: stdout is a pipe here, so JSON lines all the same. Following (no
    # --idle-timeout) until SIGTERM, as a supervisor stops it: whole lines, exit status 0.
    expected = [a.score for a in tailed if a.score >= 0.6]
    follower = subprocess.Popen(
        [sys.executable, "-m", "fraudstream", "alerts", "tail", "--from-beginning",
         "--min-score", "0.6"],
        env=settings_env(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert follower.stdout is not None
    lines = [follower.stdout.readline() for _ in expected]
    if not expected:
        time.sleep(5)  # nothing to wait for: let it start and reach the end of the topic
    follower.terminate()
    rest, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert "Traceback" not in err.decode()
    scores = [orjson.loads(line)["score"] for line in [*lines, *rest.splitlines()]]
    assert scores == expected
    few = _cli(s, "alerts", "tail", "--json", "--from-beginning", "-n", "2")
    assert few.returncode == 0 and len(few.stdout.splitlines()) == 2


def test_json_logs_one_line_per_lifecycle_event(running: Running) -> None:
    lines = running.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    messages = [e["message"] for e in entries]
    assert any(m.startswith("INSECURE: model versions are signed") for m in messages)
    assert any(m.startswith("fraudstream serving (role all)") for m in messages)
    assert any(m.startswith("published model version") for m in messages)
    # lifecycle only: far fewer lines than the thousands of transactions scored
    assert len(lines) < 100, "\n".join(messages)


def test_case_queue_example_keeps_one_case_per_alert(
    running: Running, consume: Callable[..., list[ConsumerRecord]], tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("case_queue", ROOT / "examples/case_queue.py")
    assert spec and spec.loader
    case_queue = importlib.util.module_from_spec(spec)
    sys.modules["case_queue"] = case_queue  # its dataclass looks its module up there
    spec.loader.exec_module(case_queue)
    s = running.settings
    published = consume(
        s.bootstrap_servers, s.topic_alerts, at_least=1, settle_s=2, read_committed=True
    )
    queue = case_queue.CaseQueue(tmp_path / "cases.sqlite")
    group = f"cases-{os.urandom(4).hex()}"
    first = case_queue.run(s.bootstrap_servers, queue, topic=s.topic_alerts, group=group,
                           idle_timeout_s=3)  # fmt: skip
    assert first.queued == len(published) and first.duplicates == 0
    # The same alerts delivered again (a replay of the transactions, a retried batch):
    producer = make_producer(s.bootstrap_servers, client_id="ops-replay")
    replayed = published[:5]
    for record in replayed:
        producer.send(s.topic_alerts, key=record.key, value=record.value)
    producer.flush(timeout=30)
    producer.close()
    again = case_queue.run(s.bootstrap_servers, queue, topic=s.topic_alerts, group=group,
                           idle_timeout_s=3)  # fmt: skip
    assert again.read == len(replayed) and again.queued == 0
    assert again.duplicates == len(replayed)
    assert len(queue.open_cases()) == len(published)
    queue.close()


def test_status_of_a_stopped_service_is_one_line(running: Running) -> None:
    running.process.terminate()
    running.process.wait(timeout=60)
    result = _cli(running.settings, "status", "--url", running.url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: nothing answers at {running.url} ([Errno 111] Connection refused): is "
        "`fraudstream serve` running there? Point --url at its metrics endpoint "
        "(FRAUDSTREAM_METRICS_HOST/PORT)"
    ]
    assert '"message": "fraudstream stopped"' in running.log.read_text()
