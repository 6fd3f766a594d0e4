"""Benchmark of the Redis feature store against a naive per-event implementation.

Starts its own ``redis-server`` on a free port, feeds simulated events (about 60
transactions per card over 30 days, shuffled within the lateness bound, 1 %
replays) in batches, and prints per transaction: Redis CPU (``INFO
commandstats`` for EVALSHA, and the server process's CPU), Python CPU of the
scorer process, wall time, and the memory of a card's key.

Usage::

    python -m fraudstream.bench.features --events 200000
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from fraudstream.devstack import redis_given_or_started
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import RedisFeatureStore
from fraudstream.service.schemas import Transaction

START_MS = 1_522_540_800_000
DAY_MS = 86_400_000


def simulate(events: int, seed: int = 0, per_card: int = 60, days: int = 30) -> list[Transaction]:
    """Handbook-like events: cards with a home area, 10 terminals per card on average."""
    rng = random.Random(seed)
    cards = max(1, events // per_card)
    terminals = max(10, cards * 2)
    home = [(rng.uniform(40, 50), rng.uniform(-5, 10)) for _ in range(cards)]
    made = []
    for i in range(events):
        card = rng.randrange(cards)
        ts = START_MS + int(rng.random() * days * DAY_MS)
        lat, lon = home[card]
        made.append(
            (
                ts + rng.random() * 600_000,  # arrival: up to 10 minutes late
                Transaction(
                    transaction_id=f"tx{i}",
                    card_id=f"card{card}",
                    terminal_id=f"term{rng.randrange(terminals)}",
                    amount=round(rng.lognormvariate(3.5, 1.0), 2),
                    timestamp=ts,
                    lat=lat + rng.uniform(-0.5, 0.5),
                    lon=lon + rng.uniform(-0.5, 0.5),
                ),
            )
        )
    made.sort(key=lambda pair: pair[0])
    stream = [tx for _, tx in made]
    for _ in range(events // 100):
        j = rng.randrange(len(stream))
        stream.insert(min(len(stream), j + rng.randrange(1, 1000)), stream[j])
    return stream


class NaiveFeatureStore:
    """Per-event Redis calls: what one writes first (a sorted set per card).

    Per event: SET NX (dedupe), ZADD + ZRANGEBYSCORE (card history), HINCRBY +
    HMGET (terminal day counters): five round trips, windows scanned in Python.
    """

    def __init__(self, client: redis.Redis, config: FeatureConfig) -> None:
        self.client = client
        self.config = config

    def update_one(self, tx: Transaction) -> list[float]:
        """The features of ``tx`` after recording it, one round trip per command."""
        c, cfg = self.client, self.config
        p, t = cfg.prefix, tx.event_time_ms
        new = c.set(f"{p}:seen:{tx.transaction_id}", 1, nx=True, ex=cfg.retention_s)
        key = f"{p}:{{c:{tx.card_id}}}:z"
        if new:
            c.zadd(key, {struct.pack("<dq", tx.amount, t) + tx.terminal_id.encode(): t})
        history: list[bytes] = c.zrangebyscore(key, t - max(cfg.windows_s) * 1000, t)  # type: ignore[assignment]
        row: list[float] = []
        for w in cfg.windows_s:
            amounts = [
                struct.unpack_from("<dq", m)[0]
                for m in history
                if struct.unpack_from("<dq", m)[1] > t - w * 1000
            ]
            row += [len(amounts), sum(amounts), sum(amounts) / max(1, len(amounts))]
        day = t // DAY_MS
        tkey = f"{p}:{{t:{tx.terminal_id}}}:h"
        if new:
            c.hincrby(tkey, str(day), 1)
        days = [str(day - k) for k in range(max(cfg.terminal_window_days))]
        counts = [int(v or 0) for v in c.hmget(tkey, days)]
        row += [sum(counts[:d]) for d in cfg.terminal_window_days]
        return row


def redis_cpu_s(client: redis.Redis) -> float:
    """Redis server CPU seconds so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    """Total microseconds and calls of EVALSHA so far."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return int(stats["usec"]), int(stats["calls"])


def measure(client: redis.Redis, n: int, run: Callable[[], Any]) -> dict[str, float]:
    """Run ``run`` and return µs per transaction: wall, Python CPU, Redis CPU, EVALSHA."""
    client.config_resetstat()
    cpu0, wall0, py0 = redis_cpu_s(client), time.perf_counter(), time.process_time()
    run()
    wall, py = time.perf_counter() - wall0, time.process_time() - py0
    cpu = redis_cpu_s(client) - cpu0
    usec, calls = evalsha_usec(client)
    return {
        "wall_us": wall / n * 1e6,
        "python_cpu_us": py / n * 1e6,
        "redis_cpu_us": cpu / n * 1e6,
        "evalsha_us": usec / n,
        "evalsha_calls": calls,
        "tx_per_s": n / wall,
    }


def card_memory(client: redis.Redis, prefix: str, sample: int = 300) -> tuple[float, float]:
    """Mean MEMORY USAGE and mean history records of up to ``sample`` card keys."""
    usage, records = [], []
    for key in client.scan_iter(f"{prefix}:{{c:*", count=1000):
        usage.append(int(client.memory_usage(key, samples=0) or 0))
        records.append(len(client.get(key) or b"") / 28)
        if len(usage) >= sample:
            break
    return statistics.fmean(usage), statistics.fmean(records)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the feature-store benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--naive-events", type=int, default=10_000)
    parser.add_argument("--redis-url", default=None, help="Use this Redis instead of starting one.")
    args = parser.parse_args(argv)

    print(f"simulating {args.events} events ...", flush=True)
    stream = simulate(args.events)
    with redis_given_or_started(args.redis_url) as url:
        client = redis.Redis.from_url(url)
        try:
            config = FeatureConfig(prefix="bench")
            store = RedisFeatureStore(client, config)
            batches = [stream[i : i + args.batch] for i in range(0, len(stream), args.batch)]
            # Warm up on the first batch (script load), then time the rest.
            store.update_and_compute(batches[0])
            timed = sum(len(b) for b in batches[1:])
            redis_wall = 0.0
            call = store._update

            def timed_call(keys: list[str], argv: list[Any]) -> Any:
                nonlocal redis_wall
                t0 = time.perf_counter()
                try:
                    return call(keys, argv)
                finally:
                    redis_wall += time.perf_counter() - t0

            store._update = timed_call  # type: ignore[assignment]

            def run_batched() -> None:
                for batch in batches[1:]:
                    store.update_and_compute(batch)

            fast = measure(client, timed, run_batched)
            fast["python_wall_us"] = fast["wall_us"] - redis_wall / timed * 1e6
            mem, records = card_memory(client, "bench")
            print(f"batched ({args.batch}/batch, {timed} tx): {store.counters}")

            naive_store = NaiveFeatureStore(client, FeatureConfig(prefix="naive"))
            naive_events = stream[: args.naive_events]
            naive = measure(
                client,
                len(naive_events),
                lambda: [naive_store.update_one(tx) for tx in naive_events],
            )
            naive["python_wall_us"] = float("nan")
        finally:
            client.close()

    rows = [
        ("tx/s (wall)", "tx_per_s", "{:>12,.0f}"),
        ("wall µs/tx", "wall_us", "{:>12.2f}"),
        ("Python CPU µs/tx", "python_cpu_us", "{:>12.2f}"),
        ("Python wall (excl. Redis) µs/tx", "python_wall_us", "{:>12.2f}"),
        ("Redis CPU µs/tx (INFO cpu)", "redis_cpu_us", "{:>12.2f}"),
        ("EVALSHA µs/tx (commandstats)", "evalsha_us", "{:>12.2f}"),
    ]
    print(f"\n{'':34}{'batched':>12}{'naive':>12}")
    for label, key, fmt in rows:
        print(f"{label:34}{fmt.format(fast[key])}{fmt.format(naive[key])}")
    print(f"{'speed-up (wall)':34}{fast['tx_per_s'] / naive['tx_per_s']:>12.1f}x")
    print(f"\ncard key: {mem:.0f} bytes (MEMORY USAGE) for {records:.1f} records on average")


if __name__ == "__main__":
    main()
