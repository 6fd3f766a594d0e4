"""The learner crashed at each named point of its loop and restarted: no label lost or learnt twice.

Opt-in (``-m slow``): ``.venv/bin/python -m pytest -m slow tests/e2e/test_learner_crash_points.py``.

``test_learning.py`` SIGKILLs the learner once, at a moment of the test's choosing.
Here each case scores a stream first (a scorer process, to the end), then runs
the learner through ``tests/crash_at.py``, which ends it with ``os._exit(137)``
(like SIGKILL) exactly at one point of its loop (:data:`POINTS`), at the point's
``nth`` call: a batch's labels claimed for the version being learnt, counted in
the card and terminal features, learnt in memory, a version published, the
offsets committed. A normal learner then goes on to the end, and the case checks
against a run without a crash: the newest version learnt every label once
(``labels_learnt``, ``frauds_learnt``), each terminal day counts each label once
(labels and frauds), each card record carries its label once, and nothing went
to the labels' dead-letter topic but the contradicting labels, and no label is
left waiting. Labels are sent twice too (at once, and much later), as a label
feed redelivers them, and a few again with the opposite verdict (a label
corrected after review: never learnt nor counted, dead-lettered); in some
cases the labels of the last transactions come first and wait in Redis for
their snapshots (crashes while they are parked, learnt, taken off); in others
the features are on a real Redis Cluster (crashes between the label rounds);
in others a second learner stands by from the start and takes over from the
one that crashed (no learner is restarted).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import orjson
import pytest
import redis
from conftest import (
    _produce,
    _transaction,
    isolated_names,
    lag_of,
    read_all,
    spawn_serve,
    stop_processes,
    sweep_selection,
)

from fraudstream.service.app import Application
from fraudstream.service.learner_lease import lease_holder
from fraudstream.service.redis_client import redis_client
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Settings
from fraudstream.service.stores import snapshot_store
from fraudstream.service.waiting_labels import WaitingLabels

# The first test runs every selected case at once (about 5 minutes for all of them
# on this machine, more on a busy one): past the suite's 300 s per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

#: Labels per learner batch.
BATCH = 30
CARDS, PER_CARD = 10, 24
#: Transactions scored only once the learner has parked their labels (``waiting`` cases).
LATE = 40
#: Cases run at once.
PARALLEL = 6


@dataclass(frozen=True)
class Case:
    """A learner run crashed at ``point``'s ``nth`` call (none: the clean run), then resumed."""

    point: str = ""
    nth: int = 3
    #: The labels of the last transactions come before them: they wait for their snapshots.
    waiting: bool = False
    #: On a real Redis Cluster (3 masters, 3 replicas).
    cluster: bool = False
    #: A second learner stands by from the start and takes over (none is restarted).
    standby: bool = False

    @property
    def name(self) -> str:
        name = f"learner-{self.point or 'clean'}" + (f"-call-{self.nth}" if self.nth != 3 else "")
        name += ("-waiting" if self.waiting else "") + ("-cluster" if self.cluster else "")
        return name + ("-standby" if self.standby else "")

    @property
    def clean(self) -> Case:
        """The run without a crash this case is compared with."""
        return Case(waiting=self.waiting, cluster=self.cluster)


CLEAN = Case()
CASES = [
    Case("labels-claimed"),
    Case("labels-recorded"),
    Case("labels-learnt"),
    Case("version-published", nth=2),
    Case("commit-sent", nth=2),
    Case("commit-confirmed", nth=2),
    Case("labels-recorded", nth=1),
    Case("version-published", nth=1),
    Case("labels-waiting", nth=1, waiting=True),
    Case("waiting-labels-learnt", nth=1, waiting=True),
    Case("waiting-labels-removed", nth=1, waiting=True),
    Case("version-published", nth=4, waiting=True),
    # Between the label rounds on a cluster (flags written, terminals counted, settled).
    Case("label-rounds-cards-flagged", cluster=True),
    Case("rounds-terminals-counted", cluster=True),
    Case("rounds-settled", cluster=True),
    Case("labels-learnt", cluster=True),
    # The learner that crashes holds the lease; a standby takes over from it.
    Case("labels-claimed", standby=True),
    Case("labels-learnt", standby=True),
    Case("version-published", nth=2, standby=True),
    Case("commit-sent", nth=2, standby=True),
    Case("waiting-labels-learnt", nth=1, waiting=True, standby=True),
]


def _transactions() -> list[tuple[bytes, bytes]]:
    """Ten cards, 24 transactions each, on four terminals, from two days ago; every 8th a fraud."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    return [
        _transaction(
            f"k{c}-{i}",
            f"k{c}",
            f"T{(c + i) % 4}",
            900.0 + i if (c * PER_CARD + i) % 8 == 3 else 10.0 + (i * 7 + c) % 40,
            start + timedelta(minutes=20 * i, seconds=c),
        )
        for i in range(PER_CARD)
        for c in range(CARDS)
    ]


def _label(c: int, i: int, *, flipped: bool = False) -> tuple[bytes, bytes]:
    """The label of transaction ``i`` of card ``c`` (``flipped``: saying the opposite)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    return (
        f"k{c}".encode(),
        orjson.dumps(
            {
                "transaction_id": f"k{c}-{i}",
                "is_fraud": ((c * PER_CARD + i) % 8 == 3) != flipped,
                "labeled_at": (start + timedelta(minutes=i)).isoformat(),
                "source": "review" if flipped else "chargeback",
            }
        ),
    )


#: Labels sent again with the opposite verdict, 40 records after the first (a
#: label corrected after review): (card, transaction), none of the late ones.
FLIPPED = [(c, i) for i in range(PER_CARD - LATE // CARDS) for c in range(CARDS)][11::37]


def _labels() -> list[tuple[bytes, bytes]]:
    """A label for each transaction, in event order, some sent twice, some contradicted.

    Every 13th is sent again at once, every 29th again 60 records later; those
    of :data:`FLIPPED` are followed, 40 records later, by one saying the opposite.
    """
    ids = [(c, i) for i in range(PER_CARD) for c in range(CARDS)]
    out: list[tuple[bytes, bytes]] = []
    later: dict[int, list[tuple[bytes, bytes]]] = {}
    for k, (c, i) in enumerate(ids):
        label = _label(c, i)
        out.append(label)
        if k % 13 == 5:
            out.append(label)
        if k % 29 == 7:
            later.setdefault(k + 60, []).append(label)
        if (c, i) in FLIPPED:
            later.setdefault(k + 40, []).append(_label(c, i, flipped=True))
        out += later.pop(k, [])
    return out + [label for labels in later.values() for label in labels]


@dataclass
class Outcome:
    """What a case's run left."""

    settings: Settings
    log: Path
    crash_code: int | None = None
    marker: str = ""
    error: str = ""
    took_s: float = 0.0
    #: The newest version's labels and frauds learnt.
    learnt: tuple[int, int] = (0, 0)
    #: Per terminal: its (day, transactions, labels, fraud labels) buckets in use.
    terminals: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    #: Per card: each record's flags byte, in history order.
    card_flags: dict[str, bytes] = field(default_factory=dict)
    #: Labels still parked in Redis to wait for their snapshot at the end.
    waiting_left: int = -1
    #: The labels' dead letters: value and error class.
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: A learner took the lease over from another (standby cases).
    took_over: bool = False


def _settings(case: Case, bootstrap: str, redis_url: str) -> Settings:
    tag = f"{case.name}-{time.time_ns() % 10**9}"
    return Settings(
        _env_file=None,
        bootstrap_servers=bootstrap,
        redis_url=redis_url,
        redis_cluster=case.cluster,
        redis_prefix=f"lp{abs(hash(tag)) % 10**10}",
        **isolated_names(lambda role: f"{role}-{tag}"),
        topic_partitions=1,
        max_batch_size=BATCH,
        publish_every_labels=BATCH,
        publish_every_s=1.0,
        min_labels_for_model=40,
        label_wait_s=90,  # looked at again every 5 s
        model_margin_over_prior=-1.0,  # this is about counts, not quality
        session_timeout_ms=6000,
        metrics_port=0,
    )


def _wait(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    *processes: subprocess.Popen[bytes],
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{what}: the process ended ({process.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not in {timeout_s:.0f} s")
        time.sleep(0.3)


Buckets = list[tuple[int, ...]]


def _state(client: redis.Redis, prefix: str) -> tuple[dict[str, Buckets], dict[str, bytes]]:
    """Terminal buckets in use, and each card record's flags byte (history order)."""
    terminals: dict[str, Buckets] = {}
    for t in range(4):
        ring = cast(bytes, client.get(f"{prefix}:{{t:T{t}}}") or b"")
        buckets = np.frombuffer(ring, "<u4").reshape(-1, 4).tolist()
        terminals[f"T{t}"] = sorted(tuple(b) for b in buckets if any(b[1:]))
    cards = {}
    for c in range(CARDS):
        history = cast(bytes, client.get(f"{prefix}:{{c:k{c}}}") or b"")
        cards[f"k{c}"] = bytes(history[k + 10] for k in range(0, len(history), 28))
    return terminals, cards


def _run(case: Case, settings: Settings, folder: Path) -> Outcome:
    """Score the stream, then learn its labels: crashed at the case's point, then to the end."""
    started = time.monotonic()
    outcome = Outcome(settings, folder / f"{case.name}.log")
    client = redis_client(settings)
    snapshots = snapshot_store(client, settings.redis_prefix, settings.snapshot_ttl_s)
    registry = ModelRegistry(client, settings.redis_prefix, settings.model_signing_key)
    transactions, labels = _transactions(), _labels()
    ids = [orjson.loads(value)["transaction_id"] for _, value in transactions]
    # In waiting cases the last transactions are sent once the learner has parked
    # their labels, while the scorer runs on: they are scored under the learner.
    late = LATE if case.waiting else 0
    first, last = transactions[: len(transactions) - late], transactions[len(transactions) - late :]
    waiting = WaitingLabels(client, settings.redis_prefix)
    processes: list[subprocess.Popen[bytes]] = []

    def scored(these: list[tuple[bytes, bytes]]) -> Callable[[], bool]:
        wanted = [orjson.loads(value)["transaction_id"] for _, value in these]
        return lambda: all(s is not None for s in snapshots.get_many(wanted))

    try:
        Application(settings).ensure_topics()
        _produce(settings.bootstrap_servers, settings.topic_transactions, first)
        scorer = spawn_serve(settings, outcome.log, "scorer")
        processes.append(scorer)
        _wait(scored(first), 150, "every transaction scored", scorer)
        if not late:
            stop_processes([scorer])
        if not case.standby:
            _produce(settings.bootstrap_servers, settings.topic_labels, labels)
        marker = folder / f"{case.name}.crashed"
        crash = [case.point, str(case.nth), str(marker)] if case.point else []
        learner = spawn_serve(settings, outcome.log, "learner", *crash)
        processes.append(learner)
        standby = None
        if case.standby:
            # The learner that crashes takes the lease; the other stands by before any label.
            _wait(
                lambda: (
                    f" pid {learner.pid} " in (lease_holder(client, settings.redis_prefix) or "")
                ),
                60,
                "the first learner holding the lease",
                learner,
            )
            standby = spawn_serve(settings, outcome.log, "learner")
            processes.append(standby)
            _wait(
                lambda: b"learner: standing by" in outcome.log.read_bytes(),
                60,
                "the second learner standing by",
                standby,
            )
            _produce(settings.bootstrap_servers, settings.topic_labels, labels)
        if late:
            # (A learner crashing while it parks them parks the rest once restarted.)
            _wait(
                lambda: waiting.count() >= late or learner.poll() is not None,
                120,
                "the late labels parked",
            )
            _produce(settings.bootstrap_servers, settings.topic_transactions, last)
            _wait(scored(last), 150, "the late transactions scored", scorer)
        if case.point:
            try:
                outcome.crash_code = learner.wait(timeout=120)
            finally:
                stop_processes([learner])
            outcome.marker = marker.read_text().strip() if marker.exists() else ""
            if standby is None:
                learner = spawn_serve(settings, outcome.log, "learner")
                processes.append(learner)
            else:
                learner = standby
        expected = len(ids)

        def done() -> bool:
            if (registry.latest_version() or 0) == 0:
                return False
            learnt = registry.load().model.labels_learnt
            return bool(
                learnt >= expected and lag_of(settings, learner=True) == 0 and waiting.count() == 0
            )

        _wait(done, 150, "every label learnt and committed, none left waiting", learner)
        time.sleep(1.5)  # a label learnt twice has time to show in a version
        stop_processes([learner])  # publishes what it learnt since its last version
        model = registry.load().model
        outcome.learnt = (model.labels_learnt, model.frauds_learnt)
        outcome.terminals, outcome.card_flags = _state(client, settings.redis_prefix)
        outcome.waiting_left = waiting.count()
        outcome.dead_letters = [
            (r.value or b"", dict(r.headers).get("fraudstream.error.class", b""))
            for r in read_all(settings.bootstrap_servers, settings.topic_labels_dlq)
        ]
        outcome.took_over = b"learner: took the lease over" in outcome.log.read_bytes()
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_processes(processes)
        client.close()
        outcome.took_s = time.monotonic() - started
    return outcome


class Sweep:
    """Runs the selected cases and the clean run at once, lazily."""

    def __init__(
        self, bootstrap: str, redis_urls: tuple[str, str], folder: Path, selected: list[Case]
    ):
        """``redis_urls``: a node's, and a cluster's ('' when no selected case needs one)."""
        self.bootstrap, self.redis_urls, self.folder = bootstrap, redis_urls, folder
        self.selected = selected
        self.outcomes: dict[Case, Outcome] = {}

    def outcome(self, case: Case) -> Outcome:
        if not self.outcomes:
            cases = list(dict.fromkeys([CLEAN, *(c.clean for c in self.selected), *self.selected]))
            started = time.monotonic()
            with ThreadPoolExecutor(PARALLEL) as pool:
                futures = {
                    c: pool.submit(
                        _run,
                        c,
                        _settings(c, self.bootstrap, self.redis_urls[c.cluster]),
                        self.folder,
                    )
                    for c in cases
                }
                self.outcomes = {c: f.result() for c, f in futures.items()}
            print(f"\n{len(cases)} learner runs in {time.monotonic() - started:.0f} s")
            for c, o in self.outcomes.items():
                print(f"  {c.name}: {o.took_s:.0f} s, marker {o.marker!r}, learnt {o.learnt}")
        return self.outcomes[case]


@pytest.fixture(scope="module")
def sweep(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sweep]:
    selected, cluster_url = sweep_selection(request)
    yield Sweep(
        kafka_bootstrap,
        (redis_url, cluster_url),
        tmp_path_factory.mktemp("learner-crash"),
        selected,
    )


@pytest.mark.parametrize(
    "case", [CLEAN, Case(waiting=True), Case(cluster=True), *CASES], ids=lambda case: case.name
)
def test_learner_crashed_at_a_point_then_restarted_learns_each_label_once(
    sweep: Sweep, case: Case
) -> None:
    outcome, clean = sweep.outcome(case), sweep.outcome(case.clean)
    assert outcome.error == "", f"{case.name}: {outcome.error} (log: {outcome.log})"
    n = CARDS * PER_CARD
    frauds = sum((c * PER_CARD + i) % 8 == 3 for i in range(PER_CARD) for c in range(CARDS))
    assert outcome.learnt == (n, frauds), "a label lost or learnt twice"
    if case.point:
        assert outcome.crash_code == 137, f"exit, log: {outcome.log}"
        assert outcome.marker.split()[:2] == [case.point, str(case.nth)]
        assert outcome.terminals == clean.terminals, "terminal label counts differ"
        assert outcome.card_flags == clean.card_flags, "card records' label flags differ"
    else:
        # Every label counted at its terminal once, every record flagged once.
        labels = sum(b[2] for buckets in outcome.terminals.values() for b in buckets)
        fraud_labels = sum(b[3] for buckets in outcome.terminals.values() for b in buckets)
        assert (labels, fraud_labels) == (n, frauds)
        flags = b"".join(outcome.card_flags.values())
        assert len(flags) == n and all(f & 4 for f in flags)
        assert sum(f & 1 for f in flags) == frauds
    # Each contradicting label dead-lettered, nothing else (once each without a
    # crash; a crash before the commit past one sends it again).
    flipped = sorted((f"k{c}-{i}", (c * PER_CARD + i) % 8 != 3) for c, i in FLIPPED)
    letters = [
        (label["transaction_id"], label["is_fraud"], error)
        for label, error in ((orjson.loads(v), e) for v, e in outcome.dead_letters)
    ]
    assert sorted(set(letters)) == [(*f, b"LabelConflictError") for f in flipped]
    if not case.point:
        assert len(letters) == len(flipped)
    assert outcome.waiting_left == 0, "labels left waiting though learnt"
    assert outcome.took_over == case.standby


@pytest.mark.parametrize("case", [Case(cluster=True)], ids=lambda case: case.name)
def test_the_clean_run_on_a_cluster_counts_the_labels_as_a_single_node_does(
    sweep: Sweep, case: Case
) -> None:
    node, cluster = sweep.outcome(CLEAN), sweep.outcome(case)
    assert node.error == cluster.error == ""
    assert cluster.learnt == node.learnt
    assert cluster.terminals == node.terminals
    assert cluster.card_flags == node.card_flags
