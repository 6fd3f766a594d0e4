"""What a loop tells /readyz and /healthz, with an injected clock."""

from __future__ import annotations

from kafka.structs import MemberState

from fraudstream.service.loop import LoopHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _scorer(clock: Clock) -> LoopHealth:
    return LoopHealth("scorer", needs_partitions=True, stall_after_s=30.0, clock=clock)


def test_ready_needs_membership_partitions_and_a_commit_or_nothing_to_do() -> None:
    clock = Clock()
    health = _scorer(clock)
    assert health.ready() == (False, "scorer: not in the group yet")
    health.polled(MemberState.REBALANCING, 0)
    assert health.ready() == (False, "scorer: group rebalancing")
    health.polled(MemberState.STABLE, 0)
    assert health.ready() == (False, "scorer: no partitions assigned")
    health.polled(MemberState.STABLE, 2)
    assert health.ready() == (False, "scorer: starting")

    health.lag(40)
    health.done(0)  # idle, but records wait: not fetching them is not "nothing to do"
    assert health.ready() == (False, "scorer: no commit accepted since Kafka was last away")
    health.confirmed()
    assert health.ready() == (False, "scorer: 40 records waiting, none processed yet")
    health.done(20)  # a batch committed
    assert health.ready() == (True, "ready")
    health.lag(0)
    health.done(0)  # idle with nothing to do
    assert health.ready() == (True, "ready")


def test_after_kafka_was_away_ready_waits_for_an_accepted_commit() -> None:
    clock = Clock()
    health = _scorer(clock)
    health.polled(MemberState.STABLE, 2)
    health.lag(0)
    health.done(5)
    assert health.ready()[0]
    health.polled("coordinator unknown", 2)  # the broker went away
    assert health.ready() == (
        False,
        "scorer: group coordinator unknown (broker away or restarting)",
    )
    health.lag(None, "KafkaTimeoutError: timed out")
    health.polled(MemberState.STABLE, 2)  # back, but the broker may have forgotten us
    health.done(0)
    assert health.ready() == (False, "scorer: no commit accepted since Kafka was last away")
    health.confirmed()
    health.lag(0)
    assert health.ready() == (True, "ready")


def test_a_batch_retried_with_records_waiting_is_a_stall_after_the_bound() -> None:
    clock = Clock()
    health = _scorer(clock)
    health.polled(MemberState.STABLE, 2)
    health.done(10)
    health.failed("ConnectionError: redis gone")
    health.lag(25)
    assert health.ready() == (False, "scorer: retrying a batch (ConnectionError: redis gone)")
    clock.now += 29
    health.polled(MemberState.STABLE, 2)
    assert health.live() == (True, "ok")
    clock.now += 2
    health.polled(MemberState.STABLE, 2)
    assert health.live() == (
        False,
        "scorer: stalled, no batch done for 31 s with 25 records waiting; "
        "last error: ConnectionError: redis gone",
    )
    health.done(10)
    assert health.live() == (True, "ok")


def test_idle_with_nothing_to_do_is_never_a_stall_but_a_hung_loop_is() -> None:
    clock = Clock()
    health = LoopHealth("learner", needs_partitions=False, stall_after_s=30.0, clock=clock)
    health.polled(MemberState.STABLE, 0)  # a standby learner: no partitions, healthy
    health.lag(0)
    health.done(0)
    clock.now += 3600
    health.polled(MemberState.STABLE, 0)
    assert health.live() == (True, "ok")
    assert health.ready() == (True, "ready")
    clock.now += 61
    assert health.live() == (False, "learner: loop has not turned for 61 s")


def test_a_loop_inside_one_slow_call_is_not_ready_until_it_polls_again() -> None:
    """A turn blocked in a commit while the broker restarts: its last turn said "done"."""
    clock = Clock()
    health = _scorer(clock)
    health.polled(MemberState.STABLE, 2)
    health.lag(0)
    health.done(30)
    assert health.ready() == (True, "ready")
    clock.now += 5  # the next turn's commit waits on the broker
    assert health.ready() == (True, "ready")
    clock.now += 2
    assert health.ready() == (
        False,
        "scorer: no poll for 7 s (inside a call to Kafka or Redis)",
    )
    assert health.live() == (True, "ok")  # not hung yet
    health.polled(MemberState.STABLE, 2)
    assert health.ready() == (True, "ready")
