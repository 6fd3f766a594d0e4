"""How ``make_consumer`` reads its isolation level (no broker: the client is only built)."""

from __future__ import annotations

import pytest

from fraudstream.service.kafka import make_consumer
from fraudstream.service.settings import Settings


@pytest.mark.parametrize(
    ("target", "told", "isolation"),
    [
        ("127.0.0.1:1", None, "read_committed"),  # no settings: committed only
        (Settings(_env_file=None, bootstrap_servers="127.0.0.1:1"), None, "read_committed"),
        (
            Settings(_env_file=None, bootstrap_servers="127.0.0.1:1", kafka_read_committed=False),
            None,
            "read_uncommitted",
        ),
        (Settings(_env_file=None, bootstrap_servers="127.0.0.1:1"), False, "read_uncommitted"),
        ("127.0.0.1:1", True, "read_committed"),
    ],
)
def test_make_consumer_reads_committed_records_unless_told_otherwise(
    target: str | Settings, told: bool | None, isolation: str
) -> None:
    consumer = make_consumer(
        target, client_id="t", group_id=None, read_committed=told, api_version=(2, 5)
    )
    try:
        assert consumer.config["isolation_level"] == isolation  # type: ignore[attr-defined]
    finally:
        consumer.close()
