"""``fraudstream dev up|status|down`` for real: live broker and Redis, nothing left behind."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fraudstream.cli import main
from fraudstream.devstack import free_port
from fraudstream.devstack.ports import pid_alive

REPO_CACHE = Path(__file__).resolve().parents[2] / ".cache"


def test_dev_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    ports = [
        "--home",
        str(tmp_path / "dev"),
        "--cache-dir",
        str(REPO_CACHE),
        "--kafka-port",
        str(free_port()),
        "--controller-port",
        str(free_port()),
        "--redis-port",
        str(free_port()),
    ]
    runner = CliRunner()
    up = runner.invoke(main, ["dev", "up", *ports])
    try:
        assert up.exit_code == 0, up.output
        status = runner.invoke(main, ["dev", "status", *ports])
        assert status.exit_code == 0, status.output
        assert "kafka  UP    Apache Kafka 4.1.1 (KRaft)" in status.output
        assert "1 broker(s)" in status.output
        assert "redis  UP    Redis 7." in status.output
        pids = [int(p.read_text()) for p in (tmp_path / "dev").glob("*/*.pid")]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    finally:
        down = runner.invoke(main, ["dev", "down", *ports])
    assert down.exit_code == 0, down.output
    assert not any(pid_alive(p) for p in pids)
    after = runner.invoke(main, ["dev", "status", *ports])
    assert after.exit_code == 1
    assert "kafka  DOWN" in after.output and "redis  DOWN" in after.output
