"""The naive per-event scorer of the pipeline benchmark: what one writes first.

:class:`NaiveScorer` computes the same features as the service, one Redis round
trip per feature and one produce-and-flush per event. It is the baseline the
benchmark divides by (``speedup_vs_naive``), so it must do the same job: every
rule and constant comes from :mod:`fraudstream.service.features.definitions`
(windows, retention, TTLs, the z-score and speed floors, the "no previous
event" sentinel, calendar features), and ``tests/integration/bench`` checks its
features against the in-memory reference store on a real Redis.

Where it differs from the reference on purpose (it is the naive design, not a
second implementation of the store):

* **duplicates** (a transaction id already seen) are skipped, not re-scored as
  of their time: :meth:`NaiveScorer.features_one` returns ``None``;
* **terminals**: ``card_new_terminal`` looks at every terminal the card ever
  used (a set), not only at its earlier events within the retention (longest
  window + allowed lateness, 31 days by default, longer than the benchmark's
  30 days of data): it differs for a card back at a terminal after the
  retention, and for out-of-order events;
* **trimming**: the card history is never trimmed (reads are windowed, so counts
  and sums still match) and a too-late event is counted like any other;
* **ties**: two events of a card at the same millisecond are ordered by their
  member string (Redis sorted-set order), not by arrival;
* **amounts and locations** are kept as float64 (the stores keep float32), so
  sums, means, z-scores and distances agree to about 1e-6 relative;
* **labels**: the fraud-label features read counters that only a label path
  would write; the benchmark has none, so they hold their "no label" values
  (as in the reference without labels), and terminal days are never taken
  over by a later day.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from fraudstream.service.features.definitions import (
    BIG_AMOUNT_FACTOR,
    MIN_SPEED_HOURS,
    MIN_STD,
    FeatureConfig,
    calendar_features,
    feature_names,
    haversine_km,
    no_previous_s,
    utc_day,
    window_label,
)
from fraudstream.service.kafka import make_consumer, make_producer
from fraudstream.service.kafka.clients import KafkaTarget
from fraudstream.service.redis_client import redis_client
from fraudstream.service.schemas import Transaction


class NaiveScorer:
    """Per-event Redis calls, River per event, produce+flush per event.

    Per event: ``SET NX`` (dedupe); ``ZADD`` + ``PEXPIRE`` of the card history;
    one ``ZCOUNT`` per card window; one ``ZRANGEBYSCORE`` of the retained history
    (amount sums, previous event, z-score); ``SISMEMBER`` + ``SADD`` (new
    terminal); ``GET`` of the card's fraud-label count; ``HINCRBY`` of the
    terminal's day; one ``HMGET`` per terminal window for counts and one each
    for labelled and fraud days; ``SET`` of the snapshot -- each its own round trip. Then
    ``predict_proba_one`` and one produce of the score record, flushed.

    Parameters
    ----------
    client
        Redis client.
    config
        Windows, lateness and key prefix (the service's
        :class:`~fraudstream.service.features.definitions.FeatureConfig`).
    producer
        Kafka producer of the score records; ``None`` when only
        :meth:`features_one` is used (tests).
    model
        Anything with River's ``predict_proba_one``; ``None`` with ``producer=None``.
    topic_scores
        Topic of the score records.
    threshold
        Score at or above which a decision is an alert.
    snapshot_ttl_s
        Life of the feature snapshot written per event (default 45 days, the
        service's default).
    """

    def __init__(
        self,
        client: redis.Redis,
        config: FeatureConfig,
        *,
        producer: Any = None,
        model: Any = None,
        topic_scores: str = "",
        threshold: float = 0.5,
        snapshot_ttl_s: int = 45 * 86_400,
    ) -> None:
        self.client = client
        self.config = config
        self.producer = producer
        self.model = model
        self.names: tuple[str, ...] = feature_names(config)
        self.prefix = config.prefix
        self.topic_scores = topic_scores
        self.threshold = threshold
        self.snapshot_ttl_s = snapshot_ttl_s
        self.windows_ms = [w * 1000 for w in config.windows_s]
        self.labels = [window_label(w) for w in config.windows_s]
        self.alerts = 0

    def features_one(self, tx: Transaction) -> dict[str, float] | None:
        """Count ``tx`` and return its features, ``None`` when it was seen before."""
        r, p, config = self.client, self.prefix, self.config
        t = tx.event_time_ms
        if not r.set(f"{p}:dedupe:{tx.transaction_id}", 1, nx=True, ex=config.retention_s):
            return None
        card = f"{p}:card:{tx.card_id}"
        r.zadd(card, {f"{tx.transaction_id}|{tx.amount}|{tx.lat}|{tx.lon}": t})
        r.pexpire(card, config.card_ttl_s * 1000)
        longest_ms = max(self.windows_ms)
        x: dict[str, float] = {}
        counts = [float(r.zcount(card, t - w + 1, t)) for w in self.windows_ms]
        # The retained history (longest window + lateness): the previous event may
        # be older than the longest window.
        history: list[tuple[bytes, float]] = r.zrangebyscore(  # type: ignore[assignment]
            card, t - config.retention_s * 1000 + 1, t, withscores=True
        )
        rows = [(m.decode().split("|"), float(s)) for m, s in history]
        for w, count, label in zip(self.windows_ms, counts, self.labels, strict=True):
            total = sum(float(f[1]) for f, s in rows if s > t - w)
            x[f"card_tx_count_{label}"] = count
            x[f"card_amount_sum_{label}"] = total
            x[f"card_amount_mean_{label}"] = total / max(count, 1.0)
        earlier = [(f, s) for f, s in rows if f[0] != tx.transaction_id]
        x["card_seconds_since_prev"] = no_previous_s(config)
        x["card_distance_km_prev"] = 0.0
        x["card_speed_kmh_prev"] = 0.0
        if earlier:
            prev, prev_ts = earlier[-1]
            gap_s = (t - prev_ts) / 1000.0
            x["card_seconds_since_prev"] = gap_s
            if prev[2] != "None" and tx.lat is not None and tx.lon is not None:
                d = haversine_km(float(prev[2]), float(prev[3]), tx.lat, tx.lon)
                x["card_distance_km_prev"] = d
                x["card_speed_kmh_prev"] = d / max(gap_s / 3600.0, MIN_SPEED_HOURS)
        amounts = [float(f[1]) for f, s in earlier if s > t - longest_ms]
        mean = sum(amounts) / len(amounts) if amounts else 0.0
        x["card_amount_zscore"] = 0.0
        if len(amounts) >= 2:
            std = (sum((a - mean) ** 2 for a in amounts) / len(amounts)) ** 0.5
            x["card_amount_zscore"] = (tx.amount - mean) / max(std, MIN_STD)
        x["card_amount_ratio"] = tx.amount / mean if amounts else 1.0
        for w in config.big_amount_windows_s:
            big = [
                f for f, s in earlier if s > t - w * 1000 and float(f[1]) > BIG_AMOUNT_FACTOR * mean
            ]
            x[f"card_big_amounts_{window_label(w)}"] = float(len(big)) if amounts else 0.0
        seen = f"{p}:seen:{tx.card_id}"
        x["card_new_terminal"] = 0.0 if r.sismember(seen, tx.terminal_id) else 1.0
        r.sadd(seen, tx.terminal_id)
        x["card_fraud_labels_30d"] = float(r.get(f"{p}:cardfraud:{tx.card_id}") or 0)
        day = utc_day(t)
        term = f"{p}:term:{tx.terminal_id}"
        r.hincrby(term, str(day), 1)
        for d in config.terminal_window_days:
            fields = [str(day - i) for i in range(d)]
            x[f"terminal_tx_count_{d}d"] = float(sum(int(v or 0) for v in r.hmget(term, fields)))
        # Labels received per day of the transactions (a label path would write them).
        longest = max(config.terminal_label_window_days)
        days = [day - i for i in range(longest)]
        labelled = [int(v or 0) for v in r.hmget(f"{term}:labelled", [str(k) for k in days])]
        frauds = [int(v or 0) for v in r.hmget(f"{term}:fraud", [str(k) for k in days])]
        for d in config.terminal_label_window_days:
            n_frauds, n_labelled = sum(frauds[:d]), sum(labelled[:d])
            x[f"terminal_fraud_labels_{d}d"] = float(n_frauds)
            x[f"terminal_fraud_rate_{d}d"] = n_frauds / n_labelled if n_labelled else 0.0
        fraud_ages = [i for i, f in enumerate(frauds) if f > 0]
        if fraud_ages:
            first = max(fraud_ages)
            episode_labelled = sum(labelled[: first + 1])
            x["terminal_days_since_fraud"] = float(min(fraud_ages))
            x["terminal_fraud_episode_days"] = float(first)
            x["terminal_fraud_rate_episode"] = sum(frauds[: first + 1]) / max(episode_labelled, 1)
            x["terminal_labelled_episode"] = float(episode_labelled)
        else:
            x["terminal_days_since_fraud"] = float(longest + 1)
            x["terminal_fraud_episode_days"] = -1.0
            x["terminal_fraud_rate_episode"] = 0.0
            x["terminal_labelled_episode"] = 0.0
        hour, night, weekend = calendar_features(t)
        x.update(amount=tx.amount, hour_of_day=hour, is_night=night, is_weekend=weekend)
        return x

    def process(self, value: bytes) -> None:
        """Validate, featurise, score, store the snapshot, produce and flush one record."""
        from fraudstream.service.alerts import encode_score_record

        tx = Transaction.model_validate_json(value)
        x = self.features_one(tx)
        if x is None:
            return
        score = self.model.predict_proba_one(x)[True]
        self.client.set(
            f"{self.prefix}:snap:{tx.transaction_id}", orjson.dumps(x), ex=self.snapshot_ttl_s
        )
        alert = score >= self.threshold
        self.alerts += alert
        record = encode_score_record(
            transaction_id=tx.transaction_id,
            card_id=tx.card_id,
            terminal_id=tx.terminal_id,
            amount=tx.amount,
            event_time_ms=tx.event_time_ms,
            score=score,
            threshold=self.threshold,
            is_alert=alert,
            scorer="model",
            model_version=1,
            reasons=[],
            scored_at_ms=time.time() * 1000,
            latency_ms=0.0,
        )
        self.producer.send(self.topic_scores, value=record, key=tx.card_id.encode())
        self.producer.flush()


def measure_naive(
    kafka: KafkaTarget,
    topic: str,
    topic_scores: str,
    expected: int,
    model: Any,
    settings: Any,
    prefix: str,
    group: str,
) -> dict[str, float]:
    """Run :class:`NaiveScorer` on the first ``expected`` records of ``topic``.

    ``kafka`` is where the topics are; ``settings`` gives Redis, the windows,
    lateness, snapshot TTL and threshold; ``prefix`` the Redis key prefix of this run.
    """
    from fraudstream.bench.pipeline import rate_per_s

    client = redis_client(settings)
    producer = make_producer(kafka, client_id="fraudstream-bench-naive")
    consumer = make_consumer(
        kafka,
        client_id="fraudstream-bench-naive",
        group_id=group,
        enable_auto_commit=True,
        topics=[topic],
        batch_decoding=False,  # a hand-wired loop: kafka-python as it comes
    )
    config = FeatureConfig(
        prefix=prefix,
        windows_s=settings.window_lengths_s,
        terminal_window_days=settings.terminal_window_days,
        allowed_lateness_s=settings.allowed_lateness_s,
    )
    naive = NaiveScorer(
        client,
        config,
        producer=producer,
        model=model,
        topic_scores=topic_scores,
        threshold=settings.alert_threshold,
        snapshot_ttl_s=settings.snapshot_ttl_s,
    )
    try:
        count = 0
        first_at = 0.0
        cpu0 = 0.0
        deadline = time.monotonic() + 600
        for record in consumer:
            naive.process(record.value or b"")
            count += 1
            if count == 1:
                first_at, cpu0 = time.perf_counter(), time.process_time()
            if count >= expected or time.monotonic() > deadline:
                break
        seconds = time.perf_counter() - first_at
        return {
            "naive_tx_per_s": rate_per_s(count - 1, seconds),
            "naive_events": count,
            "naive_cpu_us_per_tx": 1e6 * (time.process_time() - cpu0) / max(count - 1, 1),
            "naive_alerts": naive.alerts,
        }
    finally:
        consumer.close()
        producer.close(timeout=30)
        client.close()
