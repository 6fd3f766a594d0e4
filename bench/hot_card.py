"""A hot card: batches in which one card takes a share of every transaction (card testing).

``fraudstream bench hot-card`` counts ``--batches`` batches of 2,000 simulated
transactions through the Redis feature store (one ``EVALSHA`` and the numpy
features per batch, as the scorer does), ``--hot-share`` of each on one card
200 ms apart, the rest on cards of their own. It prints, per batch, the wall time,
the hot card's history (records) and the process's peak RSS. Without a bound on
a card's history its every transaction costs time and memory in proportion to
all of it; ``--cap`` sets ``card_history_max`` (0: the setting's default).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import SecretStr

from fraudstream.devstack.servers import redis_given_or_started
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import RECORD_SIZE, RedisFeatureStore
from fraudstream.service.redis_client import redis_client
from fraudstream.service.schemas import Transaction
from fraudstream.service.settings import Settings

START_MS = 1_700_000_000_000
BATCH = 2000


@dataclass(frozen=True, slots=True)
class HotCardBatch:
    """One batch's figures."""

    batch: int
    seconds: float
    hot_records: int
    max_rss_mb: float


def hot_card_batches(
    redis_url: str | None, batches: int, hot_share: float, cap: int
) -> Iterator[HotCardBatch]:
    """Count the batches (see the module docstring), yielding each one's figures."""
    with redis_given_or_started(redis_url) as url:
        client = redis_client(Settings(redis_url=SecretStr(url)))
        config = FeatureConfig(prefix="bench-hot")
        if cap:
            config = FeatureConfig(prefix="bench-hot", card_history_max=cap)
        for key in client.scan_iter(match="bench-hot:*"):
            client.delete(key)
        store = RedisFeatureStore(client, config)
        hot_key = store.card_key("hot")
        k = 0
        for b in range(batches):
            transactions = []
            for i in range(BATCH):
                card = "hot" if (i % 1000) < hot_share * 1000 else f"c{k}"
                transactions.append(
                    Transaction(
                        transaction_id=f"t{k}",
                        card_id=card,
                        terminal_id=f"T{k % 500}",
                        amount=1.0,
                        timestamp=START_MS + k * 200,
                    )
                )
                k += 1
            started = time.perf_counter()
            store.update_and_compute(transactions)
            seconds = time.perf_counter() - started
            held = client.strlen(hot_key) // RECORD_SIZE
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            yield HotCardBatch(b, seconds, int(held), rss_mb)
        client.close()
