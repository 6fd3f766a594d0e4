"""``fraudstream bench trees``: the real scorer of two checkouts, side by side.

Each checkout's scorer child (the one ``bench pipeline`` times, started with
that checkout's code) scores the same pre-loaded topic in turn, alternating the
order each round, on one broker and one Redis started for the run; each run
has its own consumer group and Redis prefix. ``bad_every`` makes every n-th
transaction invalid (a negative amount), for the cost of bad records.

The figures of ``bench/README.md``'s ninth pass came from this comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

#: Run inside a checkout: its own ``fraudstream`` first on the path.
_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from fraudstream.bench.pipeline import run_scorer_process
result = run_scorer_process(json.loads(sys.argv[2]), target=int(sys.argv[3]), timeout_s=900)
print(json.dumps({k: result.get(k) for k in ("tx_per_s", "cpu_us_per_tx", "processed")}))
"""


def spoil(values: Sequence[bytes], every: int) -> tuple[list[bytes], int]:
    """``values`` with every ``every``-th one (from the first) given a negative amount.

    Returns the values and how many were spoilt; ``every`` 0 spoils none.

    >>> good = b'{"transaction_id":"t","amount":3.0}'
    >>> values, bad = spoil([good] * 5, 2)
    >>> bad, [orjson.loads(v)["amount"] for v in values]
    (3, [-1.0, 3.0, -1.0, 3.0, -1.0])
    """
    out = list(values)
    if every <= 0:
        return out, 0
    for i in range(0, len(out), every):
        document = orjson.loads(out[i])
        document["amount"] = -1.0
        out[i] = orjson.dumps(document)
    return out, len(range(0, len(out), every))


@dataclass(frozen=True)
class TreeRun:
    """One checkout's scorer on the topic: its rate and CPU per scored transaction."""

    round: int
    tree: str
    tx_per_s: float
    cpu_us_per_tx: float
    load_1m: float


def compare_trees(
    trees: dict[str, Path], *, events: int, bad_every: int, rounds: int, cache_dir: Path
) -> Iterator[TreeRun]:
    """Yield each checkout's run, round after round (the order alternates)."""
    from fraudstream.bench.pipeline import (
        bench_servers,
        preload,
        settings_values,
        simulate_records,
    )
    from fraudstream.service.kafka import KafkaConnection, ensure_topics
    from fraudstream.service.settings import Settings

    data = simulate_records(events, 0)
    values, bad = spoil(data.values, bad_every)
    run = uuid.uuid4().hex[:6]
    names = {n: f"trees-{run}-{n}" for n in ("transactions", "alerts", "scores", "dlq")}
    names.update({n: f"trees-{run}-{n}" for n in ("labels", "labels-dlq")})
    with bench_servers(None, None, cache_dir) as (bootstrap, redis_url):
        local = Settings(_env_file=None).with_local_servers(
            bootstrap_servers=bootstrap, redis_url=redis_url
        )
        base: dict[str, Any] = settings_values(local)
        base.update(
            bootstrap_servers=bootstrap,
            redis_url=redis_url,
            topic_transactions=names["transactions"],
            topic_alerts=names["alerts"],
            topic_scores=names["scores"],
            topic_transactions_dlq=names["dlq"],
            topic_labels=names["labels"],
            topic_labels_dlq=names["labels-dlq"],
            topic_partitions=6,
            role="scorer",
            metrics_port=0,
            publish_scores=False,
        )
        kafka = KafkaConnection.from_settings(Settings(_env_file=None, **base))
        ensure_topics(kafka, {name: 6 for name in names.values()})
        preload(kafka, names["transactions"], data.keys, values)
        for r in range(rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for name in order:
                settings = dict(base, consumer_group=f"trees-{run}-{r}-{name}")
                settings["redis_prefix"] = f"trees{run}{r}{name}"
                yield _run_tree(r + 1, name, trees[name], settings, events - bad)


def _run_tree(round_: int, name: str, root: Path, settings: dict[str, Any], target: int) -> TreeRun:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), json.dumps(settings), str(target)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the scorer of {name} ({root}) failed:\n{done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    return TreeRun(
        round_, name, float(result["tx_per_s"]), float(result["cpu_us_per_tx"]), os.getloadavg()[0]
    )
