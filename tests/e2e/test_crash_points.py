"""The scorer crashed at each named point of its batch loop and restarted: nothing lost or doubled.

Opt-in (``-m slow``): ``.venv/bin/python -m pytest -m slow tests/e2e/test_crash_points.py``.

``test_faults.py`` SIGKILLs the scorer at random moments, which may never land
between two particular steps. Here each case runs the scorer through
``tests/crash_at.py``, which ends it with ``os._exit(137)`` (no ``finally``, like
SIGKILL) exactly at one point (:data:`crash_at.POINTS`), the sixth time it gets
there, with earlier batches committed (or the first time: a crash in the group's
first batch, nothing committed). In some cases the restarted scorer crashes too,
at the first call of a second point, while it replays what the first crash
left, or a few batches later; in others two scorers of one group crash, each at
its own fourth call of the point. Normal scorers (as many as crashed together)
then drain the stream,
and the case checks what ``test_faults.py`` checks: every transaction scored
and counted once in its card's history in Redis, every alert published (at
least once; in exactly-once mode once per record to ``read_committed``
readers), the group's offsets at the end of the log, no dead letters; and that
every snapshot (the features a transaction was scored with) equals the one a
run without a crash stores for the same stream.

The stream (one partition, so that every run counts in the same order) has
cards repeated within each batch, transactions a little out of their card's
order, and records sent twice (at once, and much later). A few cases run on
three partitions, with each card on terminals of its own, so that what a
transaction finds still does not depend on how the partitions interleave; there
"committed" is per partition. It is in the topic
before the scorer starts, so the scorer is behind and the pipelined loop has
two batches in flight. Every case runs at the same time as the others (each with
its own topics, group, transactional id and Redis prefix); the tests then check
each.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
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
    committed_offsets,
    isolated_names,
    lag_of,
    read_all,
    spawn_serve,
    stop_processes,
    sweep_selection,
)

from fraudstream.service.app import Application
from fraudstream.service.features.definitions import FeatureConfig, feature_names
from fraudstream.service.redis_client import redis_client
from fraudstream.service.settings import Settings
from fraudstream.service.snapshots import Snapshot, SnapshotStore
from fraudstream.service.stores import snapshot_store

# The first test runs every selected case at once (about 5 minutes for all of them
# on this machine, more on a busy one): past the suite's 300 s per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ALO, EOS = "at_least_once", "exactly_once"
#: At least once with ``overlap_batches`` off: one batch at a time, as exactly-once runs.
ALO_SEQ = "at_least_once_sequential"
#: The crash comes at the point's sixth (counted) call: batches before it are committed.
NTH = 6
BATCH = 40
#: Cases run at once (each mostly waits: for the group to drop the crashed member).
PARALLEL = 6

#: Points of the pipelined scorer (at-least-once, overlapping batches: the default).
ALO_POINTS = [
    "features-sent",
    "features-ran-unread",
    "features-read",
    "snapshots-sent",
    "snapshots-written-unacked",
    "snapshots-acked",
    "produced",
    "flushed",
    "commit-sent",
    "commit-confirmed",
    "next-features-in-flight-before-settle",
    "next-features-in-flight-before-commit",
    "next-features-in-flight-after-commit",
]
#: Points of the one-at-a-time scorer (exactly-once; at-least-once without overlap has
#: the same but the transaction's offsets, and a commit of its own).
EOS_POINTS = [
    "features-ran-unread-sync",
    "features-read-sync",
    "snapshots-written-unacked-sync",
    "snapshots-acked-sync",
    "produced",
    "flushed",
    "offsets-in-transaction",
    "commit-confirmed",
]


@dataclass(frozen=True)
class Case:
    """One scorer run: crashed at ``point`` (none: the clean run), then drained.

    The crash comes at the point's ``nth`` call, in each of ``scorers`` processes of
    one group started together (each crashes at its own ``nth`` call; the one that
    crashes later has taken over the other's partitions by then, or is taking them
    over). With ``again``, the restarted scorer crashes too, at the ``again_nth``
    call of that point (the first: while it replays what the first crash left;
    later: after it has replayed it and gone on), and a last run drains the stream.
    """

    guarantee: str
    point: str = ""
    nth: int = NTH
    again: str = ""
    again_nth: int = 1
    partitions: int = 1
    scorers: int = 1
    cluster: bool = False

    @property
    def name(self) -> str:
        name = f"{self.guarantee}-{self.point or 'clean'}"
        if self.nth != NTH:
            name += f"-call-{self.nth}"
        if self.again:
            name += f"-then-{self.again}"
            if self.again_nth != 1:
                name += f"-call-{self.again_nth}"
        if self.partitions > 1:
            name += f"-{self.partitions}-partitions"
        if self.scorers > 1:
            name += f"-{self.scorers}-scorers"
        return name + ("-cluster" if self.cluster else "")

    @property
    def crashes(self) -> list[tuple[str, int]]:
        """The crashes, in order: (point, call), one per scorer process."""
        crashes = [(self.point, self.nth)] * self.scorers if self.point else []
        return crashes + ([(self.again, self.again_nth)] if self.again else [])

    @property
    def clean(self) -> Case:
        """The run without a crash this case is compared with."""
        return Case(self.guarantee, partitions=self.partitions, cluster=self.cluster)


ALO_SEQ_POINTS = [
    *(p for p in EOS_POINTS if p != "offsets-in-transaction"),
    "commit-sent",
]

#: A crash in the group's first batch: nothing committed yet, the restart starts from
#: the topic's beginning (``auto_offset_reset``).
FIRST_BATCH = [
    Case(ALO, "features-read", nth=1),
    Case(ALO, "commit-sent", nth=1),
    Case(EOS, "features-read-sync", nth=1),
    Case(EOS, "offsets-in-transaction", nth=1),
    Case(ALO_SEQ, "commit-sent", nth=1),
]
#: Two crashes in a row: the restarted scorer crashes while it replays what the first
#: crash left counted without a snapshot (kept found state read, not written again).
TWICE = [
    Case(ALO, "features-read", again="features-read"),
    Case(ALO, "snapshots-sent", again="features-ran-unread"),
    Case(ALO, "next-features-in-flight-before-settle", again="snapshots-written-unacked"),
    Case(EOS, "features-read-sync", again="features-read-sync"),
    Case(EOS, "snapshots-written-unacked-sync", again="offsets-in-transaction"),
    Case(ALO_SEQ, "features-ran-unread-sync", again="features-read-sync"),
]
#: Two crashes, the second a few batches after the restart: the replay of what the first
#: left is done (its snapshots written, kept found state replaced) and new batches
#: counted when the second comes.
TWICE_LATER = [
    Case(ALO, "features-read", again="features-read", again_nth=4),
    Case(
        ALO, "snapshots-written-unacked", again="next-features-in-flight-before-commit", again_nth=3
    ),
    Case(EOS, "features-read-sync", again="produced", again_nth=3),
    Case(ALO_SEQ, "features-read-sync", again="commit-sent", again_nth=3),
]
#: Three partitions: offsets committed per partition, batches across them.
SEVERAL_PARTITIONS = [
    Case(ALO, "features-read", partitions=3),
    Case(ALO, "snapshots-acked", partitions=3),
    Case(ALO, "commit-sent", partitions=3),
    Case(ALO, "next-features-in-flight-after-commit", partitions=3),
    Case(EOS, "features-read-sync", partitions=3),
    Case(EOS, "offsets-in-transaction", partitions=3),
    Case(ALO_SEQ, "commit-sent", partitions=3),
]
#: Two scorers of one group on three partitions, both crashing (a machine that ran both
#: lost): the one crashing later replays what the first left, or is doing so.
SEVERAL_SCORERS = [
    Case(ALO, "features-read", nth=4, partitions=3, scorers=2),
    Case(ALO, "snapshots-acked", nth=4, partitions=3, scorers=2),
    Case(ALO, "commit-sent", nth=4, partitions=3, scorers=2),
    Case(EOS, "features-read-sync", nth=4, partitions=3, scorers=2),
    Case(EOS, "offsets-in-transaction", nth=4, partitions=3, scorers=2),
    Case(ALO_SEQ, "features-read-sync", nth=4, partitions=3, scorers=2),
]
#: On a real Redis Cluster (3 masters, 3 replicas): between the feature rounds, and after.
ON_A_CLUSTER = [
    Case(ALO, "rounds-cards-counted", cluster=True),
    Case(ALO, "rounds-terminals-counted", cluster=True),
    Case(ALO, "rounds-settled", cluster=True),
    Case(ALO, "snapshots-acked-sync", cluster=True),
    Case(ALO, "commit-sent", cluster=True),
    Case(EOS, "rounds-terminals-counted", cluster=True),
    Case(EOS, "offsets-in-transaction", cluster=True),
]
CLEAN = {ALO: Case(ALO), EOS: Case(EOS), ALO_SEQ: Case(ALO_SEQ)}
CLEAN_RUNS = [
    *CLEAN.values(),
    *dict.fromkeys(case.clean for case in SEVERAL_PARTITIONS + SEVERAL_SCORERS + ON_A_CLUSTER),
]
CASES = (
    [Case(ALO, p) for p in ALO_POINTS]
    + [Case(EOS, p) for p in EOS_POINTS]
    + [Case(ALO_SEQ, p) for p in ALO_SEQ_POINTS]
    + FIRST_BATCH
    + TWICE
    + TWICE_LATER
    + SEVERAL_PARTITIONS
    + SEVERAL_SCORERS
    + ON_A_CLUSTER
)


@dataclass
class Outcome:
    """What a case's run left, for its test to check."""

    settings: Settings
    log: Path
    #: Per crash (one, or two with ``Case.again``): exit code and crash marker.
    crash_codes: list[int | None] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)
    error: str = ""
    took_s: float = 0.0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    #: Transactions a crashed scorer counted in Redis (id claimed) without their snapshot.
    pending: set[str] = field(default_factory=set)
    #: Offsets committed before the first crash (summed over partitions).
    committed: int = 0
    #: The stream as the topic holds it: (partition, offset, transaction id).
    placed: list[tuple[int, int, str]] = field(default_factory=list)
    #: Transactions below the committed offsets without a snapshot when a scorer crashed.
    unscored_below_committed: list[str] = field(default_factory=list)


def _stream(shared_terminals: bool = True) -> list[tuple[bytes, bytes]]:
    """Twelve cards, 70 transactions each, interleaved; some late, some sent twice.

    Event times are ten minutes apart per card (a few seconds apart between
    cards), on five terminals shared by every card (or, with ``shared_terminals``
    false, five of each card's own), from a day ago. Every 23rd record goes 30
    places later (after two later ones of its card), every 31st is sent again at once, and
    every 47th again 300 records later (a replay in a later batch).
    """
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    records: list[tuple[bytes, bytes]] = []
    for i in range(70):
        for c in range(12):
            at = start + timedelta(minutes=10 * i, seconds=3 * c)
            card = f"k{c}"
            amount = 5.0 + (i * 17 + c * 7) % 90
            terminal = f"T{(c + i) % 5}" if shared_terminals else f"T{card}-{i % 5}"
            records.append(_transaction(f"{card}-{i}", card, terminal, amount, at))
    for k in range(len(records) - 31, 0, -23):
        records.insert(k + 30, records.pop(k))
    out: list[tuple[bytes, bytes]] = []
    later: dict[int, tuple[bytes, bytes]] = {}
    for k, record in enumerate(records):
        out.append(record)
        if k % 31 == 7:
            out.append(record)
        if k % 47 == 11:
            later[k + 300] = record
        if k in later:
            out.append(later.pop(k))
    return out + list(later.values())


def _ids(stream: list[tuple[bytes, bytes]]) -> list[str]:
    return [orjson.loads(value)["transaction_id"] for _, value in stream]


def _settings(case: Case, bootstrap: str, redis_url: str) -> Settings:
    tag = f"{case.name}-{time.time_ns() % 10**9}"
    return Settings(
        _env_file=None,
        bootstrap_servers=bootstrap,
        redis_url=redis_url,
        redis_cluster=case.cluster,
        redis_prefix=f"cp{abs(hash(tag)) % 10**10}",
        **isolated_names(lambda role: f"{role}-{tag}"),
        topic_partitions=case.partitions,
        guarantee=ALO if case.guarantee == ALO_SEQ else case.guarantee,
        overlap_batches=case.guarantee != ALO_SEQ,
        transactional_id=f"scorer-{tag}",  # the restart aborts the crashed one's transaction
        alert_threshold=0.0,  # every decision is an alert
        max_batch_size=BATCH,
        session_timeout_ms=6000,
        metrics_port=0,
    )


def _spawn(settings: Settings, log: Path, *crash: str, scorer: int = 0) -> subprocess.Popen[bytes]:
    """Scorer number ``scorer`` of the case (its own transactional id, kept on restarts)."""
    if scorer:
        settings = settings.model_copy(
            update={"transactional_id": f"{settings.transactional_id}-{scorer}"}
        )
    return spawn_serve(settings, log, "scorer", *crash)


def _claimed_without_snapshot(
    client: redis.Redis, snapshots: SnapshotStore, ids: list[str]
) -> set[str]:
    """Ids whose key holds the feature script's claim but no snapshot: counted, not stored."""
    pipe = client.pipeline(transaction=False)
    for tx in ids:
        pipe.exists(snapshots.key(tx))
    exists = pipe.execute()
    got = snapshots.get_many(ids)
    return {tx for tx, there, s in zip(ids, exists, got, strict=True) if there and s is None}


def _crash(
    case: Case,
    outcome: Outcome,
    crashes: list[tuple[str, int]],
    markers: list[Path],
    snapshots: SnapshotStore,
    ids: list[str],
) -> dict[int, int]:
    """Run scorers that crash at their ``(point, nth)`` together; the offsets committed then."""
    settings = outcome.settings
    crashing = [
        _spawn(settings, outcome.log, point, str(nth), str(marker), scorer=j)
        for j, ((point, nth), marker) in enumerate(zip(crashes, markers, strict=True))
    ]
    try:
        for process in crashing:
            outcome.crash_codes.append(process.wait(timeout=120))
    finally:
        for process in crashing:
            if process.poll() is None:
                process.kill()
                process.wait()
    committed: dict[int, int] = {}
    for marker in markers:
        said = marker.read_text().strip() if marker.exists() else ""
        outcome.markers.append(said)
        # Exactly-once commits are synchronous: the process saw each (the marker
        # says); at-least-once ones may be in flight: what the group holds (below).
        for each in said.split()[3].split(",") if said and said.split()[3] != "-" else ():
            partition, seen = each.split("=")
            committed[int(partition)] = max(committed.get(int(partition), 0), int(seen))
    outcome.pending |= _claimed_without_snapshot(snapshots.client, snapshots, ids)
    if case.guarantee != EOS:
        for tp, held in committed_offsets(settings)[0].items():
            committed[tp.partition] = max(committed.get(tp.partition, 0), held)
    return committed


def _drain(
    case: Case, outcome: Outcome, snapshots: SnapshotStore, ids: list[str]
) -> dict[str, Snapshot]:
    """Run as many scorers as crashed together (each with its transactional id) to the end."""
    scorers = [_spawn(outcome.settings, outcome.log, scorer=j) for j in range(case.scorers)]
    try:
        deadline = time.monotonic() + 150
        while True:
            got = snapshots.get_many(ids)
            if all(s is not None for s in got) and lag_of(outcome.settings) == 0:
                return {tx: s for tx, s in zip(ids, got, strict=True) if s is not None}
            for scorer in scorers:
                if scorer.poll() is not None:
                    raise AssertionError(f"a restarted scorer ended ({scorer.returncode})")
            if time.monotonic() > deadline:
                missing = sum(s is None for s in got)
                raise AssertionError(f"not drained in 150 s: {missing} transactions unscored")
            time.sleep(0.3)
    finally:
        stop_processes(scorers)


def _run(
    case: Case, settings: Settings, stream: list[tuple[bytes, bytes]], folder: Path
) -> Outcome:
    """Crash the scorer at the case's point, restart it, let it drain the stream."""
    started = time.monotonic()
    outcome = Outcome(settings, folder / f"{case.name}.log")
    ids = sorted(set(_ids(stream)))
    client = redis_client(settings)
    snapshots = snapshot_store(client, settings.redis_prefix, settings.snapshot_ttl_s)
    try:
        Application(settings).ensure_topics()
        _produce(settings.bootstrap_servers, settings.topic_transactions, stream)
        outcome.placed = [
            (r.partition, r.offset, orjson.loads(r.value or b"")["transaction_id"])
            for r in read_all(settings.bootstrap_servers, settings.topic_transactions)
        ]
        # The first crash's scorers together, then the restarted one's crash.
        crashes = case.crashes
        steps = [crashes[: case.scorers], crashes[case.scorers :]] if case.point else []
        for k, step in enumerate(s for s in steps if s):
            markers = [folder / f"{case.name}.crashed-{k}-{j}" for j in range(len(step))]
            committed = _crash(case, outcome, step, markers, snapshots, ids)
            if k == 0:
                outcome.committed = sum(committed.values())
            below = [tx for p, off, tx in outcome.placed if off < committed.get(p, 0)]
            outcome.unscored_below_committed += [
                tx for tx, s in zip(below, snapshots.get_many(below), strict=True) if s is None
            ]
        outcome.snapshots = _drain(case, outcome, snapshots, ids)
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
        outcome.took_s = time.monotonic() - started
    return outcome


class Sweep:
    """Runs the selected cases (and the clean runs they are compared with) at once, lazily."""

    def __init__(
        self, bootstrap: str, redis_urls: tuple[str, str], folder: Path, selected: list[Case]
    ):
        """``redis_urls``: a node's, and a cluster's ('' when no selected case needs one)."""
        self.bootstrap, self.redis_urls, self.folder = bootstrap, redis_urls, folder
        self._streams = {True: _stream(shared_terminals=True), False: _stream(False)}
        self.selected = selected
        self.outcomes: dict[Case, Outcome] = {}
        self.started_at = 0.0
        self._lock = threading.Lock()

    def stream(self, case: Case) -> list[tuple[bytes, bytes]]:
        """The stream ``case`` runs on (cards on shared terminals on one partition)."""
        return self._streams[case.partitions == 1]

    def outcome(self, case: Case) -> Outcome:
        with self._lock:
            if not self.outcomes:
                self._run_all()
        return self.outcomes[case]

    def _run_all(self) -> None:
        started = time.monotonic()
        cases = list(
            dict.fromkeys(
                [*CLEAN.values(), *(case.clean for case in self.selected), *self.selected]
            )
        )
        with ThreadPoolExecutor(PARALLEL) as pool:
            futures = {
                case: pool.submit(
                    _run,
                    case,
                    _settings(case, self.bootstrap, self.redis_urls[case.cluster]),
                    self.stream(case),
                    self.folder,
                )
                for case in cases
            }
            self.outcomes = {case: future.result() for case, future in futures.items()}
        took = time.monotonic() - started
        print(f"\n{len(cases)} scorer runs in {took:.0f} s (logs in {self.folder})")
        for case, outcome in self.outcomes.items():
            print(
                f"  {case.name}: {outcome.took_s:.0f} s, crash markers {outcome.markers!r},"
                f" {len(outcome.pending)} counted without a snapshot {outcome.error}"
            )


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
        tmp_path_factory.mktemp("crash-points"),
        selected,
    )


def _check_counts(outcome: Outcome, stream: list[tuple[bytes, bytes]]) -> list[str]:
    """Cards and terminal days in Redis that do not count each transaction exactly once.

    A card's history holds each of its transactions once (a 28-byte record whose
    first 10 bytes are its needle); a terminal's day buckets count each of its
    transactions of that day once.
    """
    s = outcome.settings
    unique = {orjson.loads(value)["transaction_id"]: orjson.loads(value) for _, value in stream}
    per_card = Counter(tx.rsplit("-", 1)[0] for tx in unique)
    per_terminal_day = Counter(
        (t["terminal_id"], int(datetime.fromisoformat(t["timestamp"]).timestamp()) // 86_400)
        for t in unique.values()
    )
    client = redis_client(s)
    try:
        problems = []
        for card, n in sorted(per_card.items()):
            history = client.get(f"{s.redis_prefix}:{{c:{card}}}") or b""
            needles = [history[k : k + 10] for k in range(0, len(history), 28)]
            if len(needles) != n or len(set(needles)) != n:
                problems.append(f"{card}: {len(needles)} records ({len(set(needles))} distinct)")
        counted: Counter[tuple[str, int]] = Counter()
        for terminal in sorted({terminal for terminal, _ in per_terminal_day}):
            ring = cast(bytes, client.get(f"{s.redis_prefix}:{{t:{terminal}}}") or b"")
            for day, transactions, _, _ in np.frombuffer(ring, "<u4").reshape(-1, 4).tolist():
                if transactions:
                    counted[terminal, day] += transactions
        if counted != per_terminal_day:
            problems.append(f"terminal days counted {dict(counted)}, are {dict(per_terminal_day)}")
        return problems
    finally:
        client.close()


def _feature_differences(outcome: Outcome, clean: Outcome) -> list[str]:
    """Transactions whose snapshot differs from the clean run's: which features, how."""
    names = feature_names(FeatureConfig.from_settings(outcome.settings))
    out = []
    for tx, snapshot in sorted(outcome.snapshots.items()):
        reference = clean.snapshots[tx]
        if np.array_equal(snapshot.features, reference.features) and (
            snapshot.score == reference.score
        ):
            continue
        differ = np.flatnonzero(snapshot.features != reference.features)
        what = ", ".join(
            f"{names[k]} {snapshot.features[k]:g} (clean {reference.features[k]:g})" for k in differ
        )
        out.append(f"{tx}: {what or 'score'}")
    return out


def _check(sweep: Sweep, case: Case) -> None:
    outcome = sweep.outcome(case)
    s, stream = outcome.settings, sweep.stream(case)
    assert outcome.error == "", f"{case.name}: {outcome.error} (log: {outcome.log})"
    if case.point:
        expected = case.crashes
        assert outcome.crash_codes == [137] * len(expected), f"exits, log: {outcome.log}"
        said = [(m.split()[0], int(m.split()[1])) for m in outcome.markers]
        assert said == expected
        committed = outcome.committed
        if case.nth == 1:
            assert committed <= BATCH, f"not in the first batch: {committed} committed"
        else:
            assert 0 < committed < len(stream) // 2, f"not mid-stream: {committed} committed"
        assert outcome.unscored_below_committed == [], "committed past unscored transactions"
    ids = _ids(stream)
    assert sorted(outcome.snapshots) == sorted(set(ids)), "a transaction was never scored"
    assert _check_counts(outcome, stream) == [], "not counted exactly once"
    assert lag_of(s) == 0
    assert read_all(s.bootstrap_servers, s.topic_transactions_dlq) == [], "dead letters"
    if case.guarantee == EOS:
        alerts = read_all(s.bootstrap_servers, s.topic_alerts, read_committed=True)
        seen = Counter(orjson.loads(r.value or b"")["transaction_id"] for r in alerts)
        assert seen == Counter(ids), "read_committed: an alert lost or seen twice"
    else:
        alerts = read_all(s.bootstrap_servers, s.topic_alerts)
        seen = Counter(orjson.loads(r.value or b"")["transaction_id"] for r in alerts)
        assert set(seen) == set(ids), "an alert lost"
        short = [tx for tx, n in Counter(ids).items() if seen[tx] < n]
        assert short == [], "a transaction sent twice alerted once"


def _check_features(sweep: Sweep, case: Case, *, replayed: bool) -> None:
    """Snapshots equal the clean run's, of the crash's counted-unstored transactions or the rest.

    ``replayed``: of the transactions the crash left counted without a snapshot;
    otherwise of all the others.
    """
    outcome, clean = sweep.outcome(case), sweep.outcome(case.clean)
    assert outcome.error == clean.error == "", f"{outcome.error} {clean.error}"
    assert len(outcome.snapshots) == len(clean.snapshots) == len(set(_ids(sweep.stream(case))))
    if replayed and not outcome.pending:
        raise RuntimeError("the crash left no transaction counted without its snapshot")
    differences = [
        d
        for d in _feature_differences(outcome, clean)
        if (d.split(":", 1)[0] in outcome.pending) == replayed
    ]
    names = sorted(
        {part.split()[0] for d in differences for part in d.split(": ", 1)[1].split(", ")}
    )
    assert differences == [], (
        f"{len(differences)} snapshots differ from a run without crash, in {names}: "
        + "; ".join(differences[:6])
    )


@pytest.mark.parametrize("case", [*CLEAN_RUNS, *CASES], ids=lambda case: case.name)
def test_scorer_crashed_at_a_point_then_restarted_loses_and_doubles_nothing(
    sweep: Sweep, case: Case
) -> None:
    _check(sweep, case)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_what_the_crashed_scorer_did_not_count_is_scored_as_a_clean_run_scores_it(
    sweep: Sweep, case: Case
) -> None:
    _check_features(sweep, case, replayed=False)


#: Points that always leave transactions counted without their snapshot (the script's reply
#: waited for, no snapshot sent).
REPLAY_POINTS = [
    Case(ALO, "features-ran-unread"),
    Case(ALO, "features-read"),
    Case(ALO, "next-features-in-flight-before-settle"),
    Case(EOS, "features-ran-unread-sync"),
    Case(EOS, "features-read-sync"),
    Case(ALO_SEQ, "features-ran-unread-sync"),
    Case(ALO_SEQ, "features-read-sync"),
]
#: The same points in the first batch, on three partitions, with two scorers, and first
#: crashes at them
#: followed by a second.
REPLAY_POINTS += [
    case
    for case in FIRST_BATCH + TWICE + TWICE_LATER + SEVERAL_PARTITIONS + SEVERAL_SCORERS
    if Case(case.guarantee, case.point) in REPLAY_POINTS
]
#: On a cluster, a batch crashed between its feature rounds is counted and computed on
#: its replay as the first run did (the pending flags and the terminals' marks); one
#: crashed after them is computed from the state as it is now (README, Redis Cluster).
REPLAY_POINTS += [case for case in ON_A_CLUSTER if case.point.endswith("-counted")]


@pytest.mark.parametrize("case", REPLAY_POINTS, ids=lambda case: case.name)
def test_what_the_crashed_scorer_counted_without_a_snapshot_is_scored_as_a_clean_run_scores_it(
    sweep: Sweep, case: Case
) -> None:
    """Its replay gets what its first count found (kept after its id claim), not the state now.

    The state now holds what the crashed run counted after it: later transactions of
    its batch (and, pipelined, of batch k + 1) at its terminal, and transactions with an
    earlier event time inserted in its card's history after it.
    """
    _check_features(sweep, case, replayed=True)


@pytest.mark.parametrize("case", [Case(ALO, cluster=True)], ids=lambda case: case.name)
def test_the_clean_run_on_a_cluster_stores_the_single_nodes_features(
    sweep: Sweep, case: Case
) -> None:
    node, cluster = sweep.outcome(CLEAN[ALO]), sweep.outcome(case)
    assert len(node.snapshots) == len(cluster.snapshots) == len(set(_ids(sweep.stream(case))))
    assert _feature_differences(cluster, node) == []


def test_the_clean_runs_of_every_mode_store_the_same_features(sweep: Sweep) -> None:
    alo, eos, seq = (sweep.outcome(CLEAN[mode]) for mode in (ALO, EOS, ALO_SEQ))
    assert len(alo.snapshots) == len(set(_ids(sweep.stream(CLEAN[ALO])))) == len(eos.snapshots)
    assert _feature_differences(alo, eos) == []
    assert _feature_differences(alo, seq) == []
