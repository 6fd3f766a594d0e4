"""``fraudstream state status|rebuild``: see the Redis state marker, rebuild lost state from Kafka.

See :mod:`fraudstream.service.state` for what the marker is and what a rebuild
replays.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from fraudstream.service.settings import Settings


def _default_since_ms(settings: Settings) -> int:
    """Now minus the longest card window and the allowed lateness (never before 1970)."""
    return max(0, int((time.time() - settings.history_retention_s) * 1000))


def _parse_since(value: str | None, settings: Settings, now_ms: int | None = None) -> int:
    """``--since`` in epoch milliseconds.

    Raises
    ------
    click.BadParameter
        ``value`` is no ISO date or time.
    click.ClickException
        ``value`` is in the future (nothing to replay: the rebuild would mark an
        empty state as rebuilt) or before 1970-01-01 (Kafka's timestamps start there).
    """
    if value is None:
        return _default_since_ms(settings)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T12:00:00Z)",
            param_hint="--since",
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    since_ms = int(parsed.timestamp() * 1000)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if since_ms < 0:
        raise click.ClickException(
            f"--since {value} is before 1970-01-01, where Kafka's timestamps start: "
            "give a time from 1970-01-01 on (or leave --since out for the default)"
        )
    if since_ms > now_ms:
        raise click.ClickException(
            f"--since {value} is in the future (now is {_when(now_ms)}): a rebuild replays "
            "what happened since then, and would mark an empty state as rebuilt; give a past time"
        )
    return since_ms


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("state")
def state() -> None:
    """The feature state in Redis: its marker, and a rebuild from Kafka when it was lost."""


@state.command("status")
@click.pass_obj
def status_cmd(settings: Settings) -> None:
    """Show the state marker (exit 1 when it is missing)."""
    from fraudstream.service.redis_client import redis_client
    from fraudstream.service.state import StateMarker, lost_message

    client = redis_client(settings)
    try:
        marker = StateMarker.read(client, settings.redis_prefix)
        missing = _missing_slots(client, settings.redis_prefix)
    finally:
        client.close()
    if marker is None:
        raise click.ClickException(lost_message(settings.redis_prefix))
    if missing:
        raise click.ClickException(
            f"{lost_message(settings.redis_prefix)} ({len(missing):,} of the cluster's 16,384 "
            f"slots have no state marker, e.g. slot {missing[0]})"
        )
    details = ", ".join(f"{k}={v}" for k, v in sorted(marker.details.items()))
    slots = " (every slot of the cluster has its marker)" if settings.redis_cluster else ""
    click.echo(
        f"state of prefix {settings.redis_prefix!r}: generation {marker.generation}, "
        f"{marker.origin} at {_when(marker.created_at_ms)}"
        + (f" ({details})" if details else "")
        + slots
    )


def _missing_slots(client: object, prefix: str) -> list[int]:
    """Slots without a state marker on a Redis Cluster; empty on a single node."""
    from fraudstream.service.redis_cluster import is_cluster, missing_slot_markers

    if not is_cluster(client):
        return []
    return missing_slot_markers(client, prefix)  # type: ignore[arg-type]


@state.command("rebuild")
@click.option(
    "--since",
    default=None,
    help="Replay from this time (ISO date or time, UTC when no offset). Default: now "
    "minus the longest card window and the allowed lateness.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild even though the state marker is present (the state is then recounted: "
    "nothing is counted twice).",
)
@click.pass_obj
def rebuild_cmd(settings: Settings, since: str | None, force: bool) -> None:
    """Rebuild lost feature state by replaying ``transactions`` and ``labels`` from Kafka.

    Scorers pause while the marker is missing and resume by themselves once the
    rebuild has written a new one.
    """
    from fraudstream.service.features.definitions import FeatureConfig
    from fraudstream.service.kafka import make_consumer
    from fraudstream.service.redis_client import check_eviction, redis_client
    from fraudstream.service.state import StateMarker, rebuild_state
    from fraudstream.service.stores import feature_store, snapshot_store

    since_ms = _parse_since(since, settings)
    client = redis_client(settings)
    consumer = make_consumer(settings, client_id=f"{settings.client_id}-rebuild", group_id=None)
    try:
        check_eviction(client, settings)
        marker = StateMarker.read(client, settings.redis_prefix)
        if marker is not None and not force and not _missing_slots(client, settings.redis_prefix):
            raise click.ClickException(
                f"the state of prefix {settings.redis_prefix!r} is present (generation "
                f"{marker.generation}, {marker.origin}); nothing to rebuild "
                "(--force rebuilds anyway)"
            )
        click.echo(
            f"rebuilding prefix {settings.redis_prefix!r} from {settings.topic_transactions} "
            f"and {settings.topic_labels} since {_when(since_ms)}",
            err=True,
        )
        last = [0.0]

        def progress(message: str) -> None:
            if time.monotonic() - last[0] >= 2.0:
                last[0] = time.monotonic()
                click.echo(f"  {message}", err=True)

        report = rebuild_state(
            client,
            consumer,
            feature_store(
                client,
                FeatureConfig.from_settings(settings),
                wait_replicas=settings.redis_cluster_wait_replicas,
            ),
            snapshot_store(
                client,
                settings.redis_prefix,
                settings.snapshot_ttl_s,
                settings.redis_cluster_wait_replicas,
            ),
            prefix=settings.redis_prefix,
            topic_transactions=settings.topic_transactions,
            topic_labels=settings.topic_labels,
            since_ms=since_ms,
            max_message_bytes=settings.max_message_bytes,
            max_event_ahead_s=settings.max_event_ahead_s,
            batch=settings.max_batch_size,
            progress=progress,
        )
    finally:
        consumer.close()
        client.close()
    click.echo(
        f"rebuilt in {report.seconds:.1f} s: {report.transactions_read:,} transactions read, "
        f"{report.transactions_counted:,} counted ({report.transactions_invalid:,} invalid), "
        f"{report.labels_read:,} labels read, {report.fraud_labels_recorded:,} fraud labels "
        f"recorded ({report.labels_without_transaction:,} for transactions before the replay); "
        f"new generation {report.generation}"
    )
    if report.records_unreadable:
        click.echo(
            f"warning: {report.records_unreadable:,} records could not be read (damaged in the"
            " broker's log) and were skipped: the log above names them",
            err=True,
        )
