"""``fraudstream serve --scorers 2`` as a real process tree on real Kafka and Redis.

Both scorers own partitions, the learner runs once, every transaction is scored exactly once, and
SIGTERM stops everything with exit code 0; in exactly-once mode too, with one transactional id
configured (each scorer derives its own from it: two producers with one id fence each other).
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from fraudstream.service.kafka.protocols import ConsumerRecord
from fraudstream.service.settings import Settings

START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


# At-least-once is opt-in (-m slow): exactly-once checks the same and its own ids too.
@pytest.mark.parametrize(
    "guarantee", [pytest.param("at_least_once", marks=pytest.mark.slow), "exactly_once"]
)
def test_serve_with_two_scorers_scores_each_transaction_once_and_stops_on_sigterm(
    guarantee: str,
    make_settings: Callable[..., Settings],
    make_transaction: Callable[..., tuple[bytes, bytes]],
    spawn_service: Callable[..., subprocess.Popen[bytes]],
    produce: Callable[..., None],
    consume: Callable[..., list[ConsumerRecord]],
    wait_for: Callable[..., None],
    group_members: Callable[[str, str], dict[str, int]],
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    exactly_once = guarantee == "exactly_once"
    settings = make_settings(
        topic_partitions=4,
        max_batch_size=50,
        publish_scores=True,
        client_id="fs",
        guarantee=guarantee,
        transactional_id=unique_name("pod") if exactly_once else "",
    )
    service = spawn_service(settings, "--scorers", "2")
    bootstrap = settings.bootstrap_servers

    def shared() -> bool:
        members = group_members(bootstrap, settings.consumer_group)
        return (
            sorted(members) == ["fs-1-scorer", "fs-2-scorer"]
            and all(owned > 0 for owned in members.values())
            and sum(members.values()) == 4
        )

    log_path = tmp_path / "serve-0.log"
    try:
        wait_for(shared, 300, "both scorer processes to own partitions")
        wait_for(
            lambda: list(group_members(bootstrap, settings.learner_group)) == ["fs-learner"],
            180,
            "the one learner to join its group",
        )
    except AssertionError as exc:
        members = group_members(bootstrap, settings.consumer_group)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"{exc}; scorer group now {members}; serve log:\n{tail}") from exc

    records = [
        make_transaction(
            f"s{c}-{i}", f"card{c}", f"T{i % 5}", 5.0 + i, START + timedelta(minutes=i, seconds=c)
        )
        for i in range(15)
        for c in range(16)
    ]
    produce(bootstrap, settings.topic_transactions, records)
    scores = consume(
        bootstrap,
        settings.topic_scores,
        at_least=len(records),
        settle_s=3.0,
        read_committed=exactly_once,
    )
    scored = Counter(orjson.loads(r.value or b"")["transaction_id"] for r in scores)
    assert set(scored) == {orjson.loads(v)["transaction_id"] for _, v in records}
    assert set(scored.values()) == {1}, "a transaction was scored more than once"
    assert service.poll() is None, "the supervisor exited early"
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=120) == 0
    log = log_path.read_text()
    for name in ("scorer-1", "scorer-2", "learner"):
        assert f"started {name} (pid" in log
    assert "crashed" not in log and "did not stop" not in log, log[-3000:]
    assert log.count(") stopped\n") == 3, log[-3000:]
