"""The peer of the pipeline benchmark: the scorer's job written as a Quix Streams application.

``fraudstream bench pipeline --peer quix`` runs this module in a child process
(``python -m fraudstream.bench.peer_quix spec.json``) on the same pre-loaded
topic as the scorer, in the same run, and times it the same way: from the first
processed record to the ``target``-th, with the process's CPU time over the
same span and its peak RSS. Quix Streams (3.28, confluent-kafka underneath) is a
bench-only optional extra: ``pip install -e '.[bench]'``.

What the application does, per transaction, written as a Quix user would:

1. ``app.topic(..., value_deserializer="json")`` (orjson), keyed by card, so the
   state store is per card;
2. ``sdf.apply(features, stateful=True)``: the card's event times and amounts
   over the longest window live in the state store (RocksDB, with its changelog
   topic, Quix's default durability), kept sorted so out-of-order events land in
   place; from them the count, sum and mean over every card window of the
   settings (1h/1d/7d/30d by default) and the seconds since the previous event,
   plus the amount and the calendar features;
3. a River score: ``predict_proba_one`` of the benchmark's trained model (the
   same learnt ``StandardScaler | LogisticRegression`` the scorer uses; the
   features the peer does not compute are absent, which River treats as 0 after
   scaling, i.e. at their mean);
4. ``sdf.filter(score >= threshold).to_topic(alerts)``: alerts out, keyed by card.

Default Quix settings otherwise (at-least-once, commit every 5 s). What it does
*not* do, compared with the scorer: no terminal or label features, no z-score,
distance, speed or new-terminal features, no deduplication of replays, no
feature snapshots, no dead letters. The comparison is therefore generous to the
peer.
"""

from __future__ import annotations

import bisect
import json
import logging
import pickle
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

#: The extra that installs the peer.
INSTALL_HINT = "pip install -e '.[bench]' (quixstreams==3.28.*)"


def quix_available() -> bool:
    """Whether Quix Streams can be imported here."""
    import importlib.util

    return importlib.util.find_spec("quixstreams") is not None


def event_time_ms(timestamp: str | int | float) -> int:
    """Epoch milliseconds of an RFC 3339 string (with offset) or of epoch milliseconds.

    >>> event_time_ms("2018-04-01T00:00:01.500Z"), event_time_ms(1522540800000)
    (1522540801500, 1522540800000)
    """
    if isinstance(timestamp, int | float):
        return int(timestamp)
    return round(datetime.fromisoformat(timestamp).timestamp() * 1000)


class CardWindows:
    """Per-card rolling windows over a sorted history, as the peer keeps them in its state.

    Parameters
    ----------
    windows_s
        Window lengths in seconds; the history is kept for the longest one.

    Examples
    --------
    >>> w = CardWindows((3600, 86400))
    >>> hist = {"ts": [], "amount": []}
    >>> w.update(hist, 0, 10.0)
    ([1, 1], [10.0, 10.0], None)
    >>> w.update(hist, 1_800_000, 5.0)
    ([2, 2], [15.0, 15.0], 1800.0)
    >>> w.update(hist, 7_200_000, 1.0)   # the first two left the 1h window
    ([1, 3], [1.0, 16.0], 5400.0)
    >>> w.update(hist, 3_600_000, 2.0)   # late: counted in place, only earlier ones seen
    ([2, 3], [7.0, 17.0], 1800.0)
    """

    def __init__(self, windows_s: Sequence[int]) -> None:
        self.windows_ms = [int(w) * 1000 for w in sorted(windows_s)]
        self.retention_ms = max(self.windows_ms)

    def update(
        self, history: dict[str, list[Any]], t: int, amount: float
    ) -> tuple[list[int], list[float], float | None]:
        """Insert ``(t, amount)``; return counts and sums per window and seconds since previous."""
        ts, amounts = history["ts"], history["amount"]
        i = bisect.bisect_right(ts, t)
        ts.insert(i, t)
        amounts.insert(i, amount)
        previous_s = (t - ts[i - 1]) / 1000.0 if i > 0 else None
        counts: list[int] = []
        sums: list[float] = []
        for w in self.windows_ms:
            lo = bisect.bisect_right(ts, t - w, 0, i)
            counts.append(i + 1 - lo)
            sums.append(sum(amounts[lo : i + 1]))
        cut = bisect.bisect_right(ts, ts[-1] - self.retention_ms)
        if cut:
            del ts[:cut]
            del amounts[:cut]
        return counts, sums, previous_s


def build_application(spec: Mapping[str, Any], on_record: Callable[[], None]) -> Any:
    """The Quix Streams application of the peer (not started).

    ``spec`` holds ``bootstrap_servers``, ``group``, ``topic``, ``alerts_topic``,
    ``windows_s``, ``threshold``, ``model_path`` and ``state_dir``; ``on_record`` is
    called once per processed transaction (the benchmark's clock).
    """
    from quixstreams import Application

    from fraudstream.service.features.definitions import calendar_features, window_label

    with open(spec["model_path"], "rb") as handle:
        model = pickle.load(handle)  # the benchmark's own file, written by the parent
    predict = model.pipeline.predict_proba_one
    windows = CardWindows(spec["windows_s"])
    labels = [window_label(w // 1000) for w in windows.windows_ms]
    no_previous_s = float(windows.retention_ms / 1000)
    threshold = float(spec["threshold"])

    app = Application(
        broker_address=spec["bootstrap_servers"],
        consumer_group=spec["group"],
        auto_offset_reset="earliest",
        state_dir=spec["state_dir"],
        loglevel="WARNING",
    )
    transactions = app.topic(spec["topic"], value_deserializer="json", key_deserializer="bytes")
    alerts = app.topic(spec["alerts_topic"], value_serializer="json", key_serializer="str")

    def score(value: dict[str, Any], state: Any) -> dict[str, Any]:
        t = event_time_ms(value["timestamp"])
        amount = float(value["amount"])
        history = state.get("history") or {"ts": [], "amount": []}
        counts, sums, previous_s = windows.update(history, t, amount)
        state.set("history", history)
        x: dict[str, float] = {}
        for label, count, total in zip(labels, counts, sums, strict=True):
            x[f"card_tx_count_{label}"] = float(count)
            x[f"card_amount_sum_{label}"] = total
            x[f"card_amount_mean_{label}"] = total / count
        x["card_seconds_since_prev"] = no_previous_s if previous_s is None else previous_s
        hour, night, weekend = calendar_features(t)
        x.update(amount=amount, hour_of_day=hour, is_night=night, is_weekend=weekend)
        p = float(predict(x).get(True, 0.0))
        on_record()
        return {
            "alert_id": f"alert-{value['transaction_id']}",
            "transaction_id": value["transaction_id"],
            "card_id": value["card_id"],
            "terminal_id": value["terminal_id"],
            "amount": amount,
            "event_time": value["timestamp"],
            "score": p,
            "threshold": threshold,
            "scored_at_ms": time.time() * 1000,
        }

    sdf = app.dataframe(transactions)
    sdf = sdf.apply(score, stateful=True)
    sdf = sdf.filter(lambda alert: alert["score"] >= threshold)
    sdf.to_topic(alerts, key=lambda alert: alert["card_id"])
    return app


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peer_main(spec_path: str) -> None:
    """Entry of the peer child: run until ``target`` records, print one JSON line."""
    from fraudstream.bench.pipeline import peak_rss_mb, rate_per_s

    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    target = int(spec["target"])
    marks: dict[str, float] = {}
    processed = 0
    app: Any = None

    def on_record() -> None:
        nonlocal processed
        processed += 1
        if processed == 1:
            marks.update(first_at=time.monotonic(), first_cpu=_cpu_s())
        if processed == target:
            marks.update(last_at=time.monotonic(), last_cpu=_cpu_s())
            app.stop()

    with tempfile.TemporaryDirectory(prefix="fraudstream-quix-state-") as state_dir:
        app = build_application({**spec, "state_dir": state_dir}, on_record)
        started = time.perf_counter()
        app.run()
        wall_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "processed": processed,
        "rss_mb": peak_rss_mb(),
        "wall_s": wall_s,
    }
    if "last_at" in marks:
        seconds = marks["last_at"] - marks["first_at"]
        count = target - 1
        result.update(
            seconds=seconds,
            tx_per_s=rate_per_s(count, seconds),
            cpu_us_per_tx=1e6 * (marks["last_cpu"] - marks["first_cpu"]) / max(count, 1),
            # CLOCK_MONOTONIC, the same in every process: the parent places its
            # Redis and broker CPU samples on it.
            window=[marks["first_at"], marks["last_at"]],
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _peer_main(sys.argv[1])
