"""The Redis feature store: one round trip per batch, features vectorised in numpy.

:class:`RedisFeatureStore` implements the semantics of
:mod:`fraudstream.service.features.definitions` (the same as the reference store) with two
Lua scripts shipped next to this module:

* ``update.lua`` (one ``EVALSHA`` per batch): per transaction, dedupe, insert and
  trim the card history, bump the terminal's day bucket, and return the card
  history as of that transaction plus the terminal buckets. Lua does only cheap
  string work; Python computes every window feature for the whole batch at once.
* ``labels.lua`` (one ``EVALSHA`` per batch of labels): flag the card record as
  labelled (and fraud) and count the label in the terminal's bucket of the
  transaction's day.

Both count in a terminal's day buckets with ``count_at_terminal`` from
``buckets.lua`` and keep the card history with ``history.lua``
(``add_to_history``, ``flag_label``; the Redis Cluster scripts use the same
functions), loaded in front of each of them. With ``claim_ttl_s``
set, ``update.lua`` also claims every transaction id (``claim_id`` from
``claims.lua``, the rule of :mod:`fraudstream.service.snapshots`) before
counting it, so the scorer's id claims cost no round trip of their own; an id
claimed before with other content is not counted (``FeatureBatch.is_conflict``).
The call that claims an id also keeps, after the claim, the card history and
terminal ring the transaction found (``keep_found``, until its snapshot replaces
them), so that a replay before the snapshot is written (the scorer crashed in
between, or a duplicate arrived in the next pipelined batch) is computed from
what the first count found, not from a state that has since counted more.

A script runs atomically, so each transaction is atomic, two scorers sharing a
terminal never race, and a replayed batch (after a crash) counts nothing twice:
the card history itself is the dedupe set.

Keys and layouts
----------------
``{prefix}:{c:<card_id>}`` — a string: the card's history, records of 28 bytes,
little-endian, sorted by event time (ties in arrival order)::

    0  u32  CRC-32 of transaction_id  ┐ the dedupe needle: id hash + event time,
    4  u48  event time, epoch ms      ┘ matched at a record boundary
    10 u8   flags: 1 = fraud label received, 2 = has lat/lon, 4 = label received
            (8, 16: a round pending on a Redis Cluster, see cluster_store.py)
    11 u8   reserved (0)
    12 u32  CRC-32 of terminal_id      (card_new_terminal)
    16 f32  amount
    20 f32  lat  (0 when absent)
    24 f32  lon  (0 when absent)

A typical card (60 transactions in 30 days) takes 1680 bytes of payload; MEMORY
USAGE measures about 1.9 KB per such card. TTL: retention + 1 day, refreshed once
per event day. In-order events are appended in place (``APPEND``; the string is
copied to an exact-size allocation when APPEND outgrew it, since Redis would
double it). Records older than ``newest - retention`` are trimmed lazily, once 4
have gone stale; until then the reading side ignores them. A card keeps at most
``card_history_max`` valid records: past it the oldest go, and a transaction
older than the oldest kept is too late (``history.lua``), so a card-testing
burst costs a bounded history per transaction.

``{prefix}:{t:<terminal_id>}`` — a string of ``16 * slots`` bytes: a ring of day
buckets ``(u32 day, u32 transactions, u32 labels, u32 fraud labels)``, day ``k``
at index ``k % slots`` (a ring of another size, e.g. written by an older
release, is read as empty and replaced on the next count). O(1) work per
transaction whatever the terminal's traffic (two small ``GETRANGE``/``SETRANGE``
sized writes). TTL: longest terminal window +
lateness, refreshed when a bucket starts a new day.

Each transaction gets its card history and terminal ring *as it found them*
(before its own update), so a card or terminal seen several times in one batch
still gets as-of values; Python adds the transaction itself.

Redis Cluster
-------------
Every key carries the hash tag of its entity (``{c:...}``, ``{t:...}``), so a
card's and a terminal's state each live in one slot. This module targets a single
node, where one script touches both. On a cluster,
:class:`~fraudstream.service.features.cluster_store.ClusterFeatureStore` runs the
same contract in rounds of per-master calls (the card part, marking each new
record "terminal pending" with a spare flag bit; then the terminal part; then the
pending bits cleared), so that a replay after a crash between rounds redoes
exactly the pending terminal increments: nothing counted twice, nothing lost.

Examples
--------
>>> record = pack_record(3, 1522540800000, 7, 12.5, None, None)
>>> len(record), record[:10] == pack_needle(3, 1522540800000)
(28, True)
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import numpy as np
import redis

from fraudstream.service.features.definitions import (
    BIG_AMOUNT_FACTOR,
    DAY_MS,
    EARTH_RADIUS_KM,
    LABEL_WINDOW_S,
    MIN_SPEED_HOURS,
    MIN_STD,
    FeatureConfig,
    StoreCounters,
    feature_names,
    no_previous_s,
    stable_hash32,
)
from fraudstream.service.features.store import FeatureBatch, LabelFact
from fraudstream.service.redis_client import read_script_reply, send_script
from fraudstream.service.schemas import Transaction
from fraudstream.service.snapshots import id_claims, snapshot_key
from fraudstream.service.state import StateLostError, lost_message, marker_key

#: Size of one card history record (see the module docstring).
RECORD_SIZE = 28
#: Most history records :meth:`RedisFeatureStore.compute_update` expands at once
#: (~150 bytes of numpy temporaries each). A batch of many transactions of cards
#: with long histories (a card-testing burst: up to ``card_history_max`` records
#: per transaction) is computed a slice of transactions at a time.
ROWS_PER_PASS = 200_000
#: Layout of a record, for ``np.frombuffer``.
RECORD_DTYPE = np.dtype(
    {
        "names": ["tx", "ts_lo", "ts_hi", "flags", "terminal", "amount", "lat", "lon"],
        "formats": ["<u4", "<u4", "<u2", "u1", "<u4", "<f4", "<f4", "<f4"],
        "offsets": [0, 4, 8, 10, 12, 16, 20, 24],
        "itemsize": RECORD_SIZE,
    }
)
FLAG_FRAUD = 1
FLAG_LOCATION = 2
FLAG_LABELLED = 4
#: Bytes per terminal day bucket (see the module docstring).
BUCKET_SIZE = 16

#: Card outcomes returned by ``update.lua`` (bits 0-1 of a status byte; bit 2 is
#: "counted at the terminal", bit 3 "id conflict: nothing counted", bit 4 "a
#: replay: the rest of the status, the history and the ring are what its first
#: count returned").
APPENDED, DUPLICATE, TOO_LATE, INSERTED = 0, 1, 2, 3
CONFLICT_BIT = 8
REPLAY_BIT = 16
#: Default ``found_budget``: a batch of 2,000 typical transactions keeps ~4 MB; a
#: card-testing burst on a card at its cap would keep ~28 KB per transaction.
FOUND_BUDGET = 8 << 20

_RECORD = struct.Struct("<IIHBBIfff")
_NEEDLE = struct.Struct("<IIH")


def pack_record(
    tx_hash: int,
    ts_ms: int,
    terminal_hash: int,
    amount: float,
    lat: float | None,
    lon: float | None,
) -> bytes:
    """One card history record (the layout of the module docstring).

    >>> pack_record(1, 2, 3, 4.0, 5.0, 6.0).hex()
    '01000000020000000000020003000000000080400000a0400000c040'
    """
    located = lat is not None and lon is not None
    return _RECORD.pack(
        tx_hash, ts_ms & 0xFFFFFFFF, ts_ms >> 32, FLAG_LOCATION if located else 0, 0,
        terminal_hash, amount, lat if located else 0.0, lon if located else 0.0,
    )  # fmt: skip


def pack_needle(tx_hash: int, ts_ms: int) -> bytes:
    """The 10 bytes that identify a transaction in its card's history.

    >>> pack_needle(1, 2).hex()
    '01000000020000000000'
    """
    return _NEEDLE.pack(tx_hash, ts_ms & 0xFFFFFFFF, ts_ms >> 32)


def haversine_km_np(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Vectorised :func:`~fraudstream.service.features.definitions.haversine_km`.

    >>> haversine_km_np(np.array([48.8566]), np.array([2.3522]),
    ...                 np.array([51.5074]), np.array([-0.1278])).round(1)
    array([343.6])
    """
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return cast(np.ndarray, 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a))))


#: Lua loaded in front of every script: Redis scripts cannot import each other.
_PRELUDE = ("buckets.lua", "claims.lua", "history.lua")


#: The error a script returns when the state marker is missing (see service/state.py).
_STATE_LOST = "FRAUDSTREAM_STATE_LOST"


class _Script:
    """A Lua script (after :data:`_PRELUDE`) run by EVALSHA.

    It is loaded again when the server lost it (NOSCRIPT).
    """

    def __init__(self, client: redis.Redis, name: str, lost_message: str = "") -> None:
        self._client = client
        self._lost_message = lost_message
        folder = resources.files("fraudstream.service.features")
        self._source = "".join(
            folder.joinpath(part).read_text("utf-8") for part in (*_PRELUDE, name)
        )
        self.sha = hashlib.sha1(self._source.encode("utf-8")).hexdigest()

    def __call__(self, keys: list[str], args: list[Any]) -> Any:
        try:
            try:
                return self._client.evalsha(self.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                # The server restarted or ran SCRIPT FLUSH. Nothing ran: retrying is safe.
                self.load()
                return self._client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            raise self._translate(exc) from None

    def load(self) -> None:
        """Load the script into the server (again)."""
        self._client.script_load(self._source)

    def send(self, connection: redis.Connection, keys: list[str], args: list[Any]) -> None:
        """Send the call on ``connection`` without waiting; :meth:`read` takes its reply."""
        send_script(connection, self.sha, keys, args)

    def read(self, connection: redis.Connection) -> Any:
        """The reply of the oldest call sent on ``connection`` (see :func:`read_script_reply`).

        Raises
        ------
        StateLostError
            When the state marker is missing (nothing was counted).
        """
        try:
            return read_script_reply(connection, self.load)
        except redis.ResponseError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: redis.ResponseError) -> Exception:
        if str(exc).startswith(_STATE_LOST):
            return StateLostError(self._lost_message)
        return exc


@dataclass(frozen=True, slots=True)
class PreparedUpdate:
    """A batch ready for the feature script: its columns, KEYS and ARGV (none when empty)."""

    batch: _BatchColumns | None
    keys: list[str]
    args: list[Any]


class RedisFeatureStore:
    """:class:`~fraudstream.service.features.store.FeatureStore` on a single Redis node.

    Parameters
    ----------
    client
        A Redis client (bytes responses, i.e. ``decode_responses=False``).
    config
        Windows, lateness and key prefix.
    check_state
        Refuse to count anything when the state marker of the prefix is missing
        (:class:`~fraudstream.service.state.StateLostError`), checked atomically in
        each script call. On in the service; off for a rebuild, benchmarks and
        evaluations, which build their state from nothing.
    claim_ttl_s
        Claim every transaction id (its snapshot key, with its content digest,
        for this many seconds: ``Settings.snapshot_ttl_s``) in the same script
        call, before counting it, as :meth:`SnapshotStore.claim_many_ids
        <fraudstream.service.snapshots.SnapshotStore.claim_many_ids>` would: an
        id held with other content is not counted and is flagged in
        ``FeatureBatch.is_conflict``. ``None`` (default): no claims.
    found_budget
        With claims: most bytes of card histories and terminal rings one call
        keeps after its new claims (``keep_found`` in ``claims.lua``), so that a
        replay before the snapshot is computed from what the first count found;
        past it, and with 0, a replay is computed from the state as it is now.

    Attributes
    ----------
    counters
        What this instance did: inserted, duplicates, too late, terminal dropped.
    """

    def __init__(
        self,
        client: redis.Redis,
        config: FeatureConfig,
        *,
        check_state: bool = False,
        claim_ttl_s: int | None = None,
        found_budget: int = FOUND_BUDGET,
    ) -> None:
        self.config = config
        self.counters = StoreCounters()
        self._client = client
        self._names = feature_names(config)
        lost = lost_message(config.prefix)
        self._update = _Script(client, "update.lua", lost)
        self._labels = _Script(client, "labels.lua", lost)
        # The marker goes last in KEYS, with a flag in the last ARGV.
        self._marker = [marker_key(config.prefix)] if check_state else []
        self._check = [b"1" if check_state else b"0"]
        self._card_key = f"{config.prefix}:{{c:%s}}"
        self._terminal_key = f"{config.prefix}:{{t:%s}}"
        self._slots = config.terminal_slots
        self._fixed_args = [
            config.retention_s * 1000,
            config.card_ttl_s * 1000,
            self._slots,
            config.terminal_ttl_s * 1000,
            config.card_history_max,
        ]
        self._claim_ttl_s = claim_ttl_s
        self._found_budget = found_budget

    @property
    def client(self) -> redis.Redis:
        """The Redis client the store runs its scripts with."""
        return self._client

    @property
    def claims_ids(self) -> bool:
        """Whether :meth:`update_and_compute` claims the ids too (``claim_ttl_s`` given)."""
        return self._claim_ttl_s is not None

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in column order."""
        return self._names

    def card_key(self, card_id: str) -> str:
        """Redis key of a card's history."""
        return self._card_key % card_id

    def terminal_key(self, terminal_id: str) -> str:
        """Redis key of a terminal's day buckets."""
        return self._terminal_key % terminal_id

    # -- update ----------------------------------------------------------------------

    def update_and_compute(self, transactions: Sequence[Transaction]) -> FeatureBatch:
        """Count each new transaction once and return every transaction's features.

        One ``EVALSHA`` for the whole batch, which also claims the ids when
        :attr:`claims_ids`. The same as :meth:`prepare_update`, the script call
        and :meth:`compute_update` one after the other.
        """
        update = self.prepare_update(transactions)
        if update.keys:
            return self.compute_update(update, self._update(update.keys, update.args))
        return self.compute_update(update, None)

    def prepare_update(self, transactions: Sequence[Transaction]) -> PreparedUpdate:
        """What the feature script needs for ``transactions``, before it is sent.

        A caller that overlaps the script's run with other work sends it with
        :meth:`send_update` and hands the reply to :meth:`compute_update`;
        calls must reach the server in batch order.
        """
        n = len(transactions)
        if n == 0:
            return PreparedUpdate(None, [], [])
        batch = _BatchColumns(transactions, self._card_key, self._terminal_key)
        keys, claim_args = batch.keys, []
        if self._claim_ttl_s is not None:
            prefix = self.config.prefix
            keys = [""] * (3 * n)
            keys[0::3] = batch.keys[0::2]
            keys[1::3] = batch.keys[1::2]
            keys[2::3] = [snapshot_key(prefix, tx.transaction_id) for tx in transactions]
            claim_args = [id_claims(transactions), self._claim_ttl_s, self._found_budget]
        return PreparedUpdate(
            batch,
            keys + self._marker,
            [batch.records.tobytes(), *self._fixed_args, *self._check, *claim_args],
        )

    def send_update(self, connection: redis.Connection, update: PreparedUpdate) -> bool:
        """Send the feature script of ``update`` on ``connection``; ``False`` when there is none."""
        if not update.keys:
            return False
        self._update.send(connection, update.keys, update.args)
        return True

    def read_update(self, connection: redis.Connection) -> Any:
        """The reply of the oldest feature script sent on ``connection`` and not read yet."""
        return self._update.read(connection)

    def load_scripts(self) -> None:
        """Load the feature script into the server (before sending it with :meth:`send_update`)."""
        self._update.load()

    def compute_update(self, update: PreparedUpdate, reply: Any) -> FeatureBatch:
        """The features of a prepared batch from the feature script's reply."""
        claiming = self._claim_ttl_s is not None
        batch = update.batch
        if batch is None:
            return FeatureBatch(
                self._names,
                np.empty((0, len(self._names))),
                np.zeros(0, bool),
                np.zeros(0, bool) if claiming else None,
            )
        n = len(batch.ts_ms)
        status = np.frombuffer(reply[0], dtype=np.uint8)
        conflict = (status & CONFLICT_BIT) != 0
        # A conflict counted nothing: computed as a too-late event with no
        # history (its row is dropped by the caller).
        outcome = np.where(conflict, TOO_LATE, status & 3)
        # A replay is computed as its first count was, from what that found.
        replayed = (status & REPLAY_BIT) != 0
        counted = (status & 4) != 0
        now = ~conflict & ~replayed
        self._count(outcome[now], counted[now])
        self.counters.duplicates += int(replayed.sum())

        # Terminal rings before each transaction, plus its own increment: one
        # (transaction, slot) array per bucket field (day, transactions, labels,
        # fraud labels), each contiguous for the window sums.
        size = BUCKET_SIZE * self._slots
        empty = bytes(size)
        rings = (
            np.frombuffer(
                b"".join([t if len(t) == size else empty for t in reply[1 : n + 1]]), dtype="<u4"
            )
            .reshape(n, self._slots, 4)
            .transpose(2, 0, 1)
            .astype(np.int64, order="C")
        )
        day = batch.ts_ms // DAY_MS
        i = np.flatnonzero(counted)
        slot = day[i] % self._slots
        same_day = rings[0, i, slot] == day[i]
        rings[1, i, slot] = np.where(same_day, rings[1, i, slot] + 1, 1)
        for field in (2, 3):
            rings[field, i, slot] = np.where(same_day, rings[field, i, slot], 0)
        rings[0, i, slot] = day[i]

        # Card histories as each transaction found them. An appended transaction
        # is not in its history (the script does not copy it back): like a too-late
        # one, it is added to its own features as a "virtual" record.
        histories = reply[n + 1 :]
        lengths = np.fromiter(map(len, histories), np.int64, n) // RECORD_SIZE
        if int(lengths.sum()) <= ROWS_PER_PASS:
            records = np.frombuffer(b"".join(histories), dtype=RECORD_DTYPE)
            values = self._compute(batch, outcome, lengths, records, rings)
        else:  # long histories (cards near their cap): a slice of transactions at a time
            values = np.empty((n, len(self._names)), dtype=np.float64)
            for lo, hi in record_slices(lengths, ROWS_PER_PASS):
                records = np.frombuffer(b"".join(histories[lo:hi]), dtype=RECORD_DTYPE)
                values[lo:hi] = self._compute(
                    batch.rows(lo, hi), outcome[lo:hi], lengths[lo:hi], records, rings[:, lo:hi]
                )
        return FeatureBatch(
            self._names, values, (outcome == DUPLICATE) | replayed, conflict if claiming else None
        )

    def _count(self, outcome: np.ndarray, counted: np.ndarray) -> None:
        counts = np.bincount(outcome, minlength=4)
        new = int(counts[APPENDED] + counts[INSERTED])
        self.counters.inserted += new
        self.counters.duplicates += int(counts[DUPLICATE])
        self.counters.too_late += int(counts[TOO_LATE])
        self.counters.terminal_dropped += new - int(counted.sum())

    def _compute(
        self,
        batch: _BatchColumns,
        outcome: np.ndarray,
        lengths: np.ndarray,
        history: np.ndarray,
        rings: np.ndarray,
    ) -> np.ndarray:
        """All features of the batch from the histories and rings, vectorised.

        The histories are ragged: one flat array of records, each transaction's
        ``lengths`` of them in batch order; ``per_record`` repeats a value of each
        transaction for each of its records. Every per-transaction sum is one
        column of a matrix reduced by segment with a single ``np.add.reduceat``.
        """
        config = self.config
        n = len(outcome)
        windows_ms = [w * 1000 for w in config.windows_s]
        t = batch.ts_ms
        virtual = (outcome == APPENDED) | (outcome == TOO_LATE)  # not in its history

        def per_record(values: np.ndarray) -> np.ndarray:
            return np.repeat(values, lengths)

        ends = np.cumsum(lengths)
        starts = ends - lengths
        pos = np.arange(len(history)) - per_record(starts)
        ts = history["ts_lo"].astype(np.int64) | (history["ts_hi"].astype(np.int64) << 32)
        amount = history["amount"].astype(np.float64)
        tt = per_record(t)

        # The newest event: the history's last record, or the appended transaction.
        # Older records than newest - retention are stale (trimmed lazily): ignored.
        last = ts[np.maximum(ends - 1, 0)] if len(ts) else np.zeros(n, np.int64)
        newest = np.where(outcome == APPENDED, t, last)
        valid = ts > per_record(newest) - config.retention_s * 1000
        at_or_before = (ts <= tt) & valid
        is_self = (history["tx"] == per_record(batch.tx_hash)) & (ts == tt)
        recent = at_or_before & (ts > tt - max(windows_ms))

        # Pass 1: the position of each transaction in its history (virtual ones go
        # after every record with ts <= t), and the window sums.
        columns = [np.where(is_self, pos, 0), ts <= tt]
        for w in windows_ms:
            inside = at_or_before & (ts > tt - w)
            columns += [inside, np.where(inside, amount, 0.0)]
        columns.append(
            ((history["flags"] & FLAG_FRAUD) != 0)
            & at_or_before
            & (ts > tt - LABEL_WINDOW_S * 1000)
        )
        sums = _segment_sums(columns, starts, lengths)
        position = np.where(virtual, sums[:, 1], sums[:, 0]).astype(np.int64)

        # Pass 2: sums over the earlier records H[:p].
        earlier = (pos < per_record(position)) & valid
        earlier_recent = earlier & recent
        seen = earlier & (history["terminal"] == per_record(batch.terminal_hash))
        columns = [
            earlier_recent,
            np.where(earlier_recent, amount, 0.0),
            np.where(earlier_recent, amount * amount, 0.0),
            seen,
        ]
        sums2 = _segment_sums(columns, starts, lengths)

        out = np.empty((n, len(self._names)), dtype=np.float64)
        col = 0
        amount32 = np.where(virtual, batch.amount32, 0.0)
        for k in range(len(windows_ms)):
            count = sums[:, 2 + 2 * k] + virtual
            total = sums[:, 3 + 2 * k] + amount32
            out[:, col], out[:, col + 1], out[:, col + 2] = count, total, total / count
            col += 3

        prev = np.where(position > 0, starts + position - 1, 0)
        if len(history):
            has_prev = (position > 0) & valid[prev]
            prev_ts = ts[prev]
        else:
            has_prev, prev_ts = np.zeros(n, bool), np.zeros(n, np.int64)
        gap_ms = (t - prev_ts).astype(np.float64)
        out[:, col] = np.where(has_prev, gap_ms / 1000.0, no_previous_s(config))

        n_earlier = sums2[:, 0]
        mean = sums2[:, 1] / np.maximum(n_earlier, 1)
        # E[x^2] - mean^2 can go a hair negative by rounding; the std floor hides it.
        var = np.maximum(sums2[:, 2] / np.maximum(n_earlier, 1) - mean * mean, 0.0)
        std = np.maximum(np.sqrt(var), MIN_STD)
        out[:, col + 1] = np.where(n_earlier >= 2, (batch.amount - mean) / std, 0.0)
        ratio = batch.amount / np.where(mean > 0, mean, 1.0)
        out[:, col + 2] = np.where(n_earlier >= 1, ratio, 1.0)
        col += 3
        # Pass 3: earlier records with a big amount (against that mean), per window.
        big = (
            earlier & (per_record(n_earlier) >= 1) & (amount > BIG_AMOUNT_FACTOR * per_record(mean))
        )
        big_windows = config.big_amount_windows_s
        if big_windows:
            columns = [big & (ts > tt - w * 1000) for w in big_windows]
            out[:, col : col + len(big_windows)] = _segment_sums(columns, starts, lengths)
            col += len(big_windows)

        if len(history):
            located = has_prev & ((history["flags"][prev] & FLAG_LOCATION) != 0) & batch.located
            distance = haversine_km_np(
                history["lat"][prev].astype(np.float64), history["lon"][prev].astype(np.float64),
                batch.lat32, batch.lon32,
            )  # fmt: skip
            distance = np.where(located, distance, 0.0)
        else:
            distance = np.zeros(n)
        out[:, col] = distance
        hours = np.maximum(gap_ms / 3_600_000.0, MIN_SPEED_HOURS)
        out[:, col + 1] = np.where(distance > 0, distance / hours, 0.0)
        out[:, col + 2] = sums2[:, 3] == 0
        out[:, col + 3] = sums[:, -1]
        col += 4
        col = self._terminal_features(out, col, t, rings)

        hour = (t % DAY_MS) // 3_600_000
        out[:, col] = batch.amount
        out[:, col + 1] = hour
        out[:, col + 2] = hour < 6
        out[:, col + 3] = (t // DAY_MS + 3) % 7 >= 5
        return out

    def _terminal_features(
        self, out: np.ndarray, col: int, t: np.ndarray, rings: np.ndarray
    ) -> int:
        """Terminal traffic and label features from the day rings; the next column.

        ``rings``: the bucket fields (day, transactions, labels, fraud labels), one
        ``(transaction, slot)`` array each. A bucket is inside a window of ``d``
        days when its age in days (``day - bucket_day``, integers) is in ``[0, d)``.
        """
        config = self.config
        day = (t // DAY_MS)[:, None]
        bucket_day, bucket_tx, bucket_labels, bucket_fraud = rings
        age = day - bucket_day
        past = age >= 0
        for d in config.terminal_window_days:
            inside = past & (age < d)
            out[:, col] = (bucket_tx * inside).sum(axis=1)
            col += 1
        for d in config.terminal_label_window_days:
            inside = past & (age < d)
            labelled = (bucket_labels * inside).sum(axis=1).astype(np.float64)
            frauds = (bucket_fraud * inside).sum(axis=1).astype(np.float64)
            out[:, col] = frauds
            out[:, col + 1] = np.where(labelled > 0, frauds / np.maximum(labelled, 1.0), 0.0)
            col += 2
        longest = max(config.terminal_label_window_days)
        fraud_day = (bucket_fraud > 0) & past & (age < longest)
        any_fraud = fraud_day.any(axis=1)
        last = np.where(fraud_day, bucket_day, -1).max(axis=1)
        first = np.where(fraud_day, bucket_day, np.iinfo(np.int64).max).min(axis=1)
        episode = (bucket_day >= first[:, None]) & past
        labelled = (bucket_labels * episode).sum(axis=1).astype(np.float64)
        frauds = (bucket_fraud * episode).sum(axis=1).astype(np.float64)
        today = day[:, 0]
        out[:, col] = np.where(any_fraud, today - last, longest + 1)
        out[:, col + 1] = np.where(any_fraud, today - first, -1)
        out[:, col + 2] = np.where(any_fraud, frauds / np.maximum(labelled, 1.0), 0.0)
        out[:, col + 3] = np.where(any_fraud, labelled, 0.0)
        return col + 4

    # -- labels ----------------------------------------------------------------------

    def record_labels(self, labels: Sequence[LabelFact]) -> None:
        """Count labels for their terminal (and fraud labels for their card), one ``EVALSHA``."""
        if not labels:
            return
        keys: list[str] = []
        needles: list[bytes] = []
        for label in labels:
            keys += [self.card_key(label.card_id), self.terminal_key(label.terminal_id)]
            needles.append(pack_needle(stable_hash32(label.transaction_id), label.event_time_ms))
        self._labels(
            keys + self._marker,
            [
                b"".join(needles),
                bytes(49 if label.is_fraud else 48 for label in labels),
                self.config.retention_s * 1000,
                self._slots,
                self.config.terminal_ttl_s * 1000,
                *self._check,
            ],
        )


def record_slices(lengths: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges of transactions holding at most ``budget`` history records each.

    A range holds one transaction at least, whatever its history.

    >>> record_slices(np.array([3, 3, 3, 10, 1]), 6)
    [(0, 2), (2, 3), (3, 4), (4, 5)]
    >>> record_slices(np.array([], dtype=np.int64), 6)
    []
    """
    ends = np.cumsum(lengths)
    ranges: list[tuple[int, int]] = []
    lo = 0
    while lo < len(lengths):
        before = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, before + budget, side="right")))
        ranges.append((lo, hi))
        lo = hi
    return ranges


def _segment_sums(columns: list[np.ndarray], starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-segment sums of each column: shape ``(len(starts), len(columns))``.

    >>> _segment_sums([np.array([1, 2, 3])], np.array([0, 1, 3]), np.array([1, 2, 0]))
    array([[1.],
           [5.],
           [0.]])
    """
    # One row per column, each written and summed contiguously: the same additions
    # in the same order as down the columns of a matrix of one row per record, ~5x
    # faster than that (whose reduceat adds a few numbers at a time, row by row).
    # A zero at the end of each row keeps every start index inside the array
    # (reduceat needs that); an empty segment yields its start's value, so it is zeroed.
    matrix = np.zeros((len(columns), len(columns[0]) + 1))
    for j, column in enumerate(columns):
        matrix[j, :-1] = column
    sums = np.add.reduceat(matrix, starts, axis=1).T
    sums[lengths == 0] = 0.0
    return sums


class _BatchColumns:
    """The columns of a batch that the script and the numpy code need."""

    __slots__ = (
        "amount", "amount32", "keys", "lat32", "located", "lon32", "records", "terminal_hash",
        "ts_ms", "tx_hash",
    )  # fmt: skip

    def __init__(
        self, transactions: Sequence[Transaction], card_key: str, terminal_key: str
    ) -> None:
        n = len(transactions)
        # Column by column with builtins (map, fromiter): a Python-level loop
        # body per transaction would cost several times more.
        cards = [tx.card_id for tx in transactions]
        terminals = [tx.terminal_id for tx in transactions]
        keys: list[str] = [""] * (2 * n)
        keys[0::2] = [card_key % c for c in cards]
        keys[1::2] = [terminal_key % c for c in terminals]
        ts = np.fromiter([tx.event_time_ms for tx in transactions], np.int64, n)
        amount = np.fromiter([tx.amount for tx in transactions], np.float64, n)
        lat = np.array([tx.lat for tx in transactions], dtype=np.float64)  # None -> nan
        lon = np.array([tx.lon for tx in transactions], dtype=np.float64)
        located = ~(np.isnan(lat) | np.isnan(lon))
        lat, lon = np.where(located, lat, 0.0), np.where(located, lon, 0.0)
        ids = [tx.transaction_id for tx in transactions]
        tx_hash = np.fromiter(map(zlib.crc32, map(str.encode, ids)), np.uint32, n)
        terminal_hash = np.fromiter(map(zlib.crc32, map(str.encode, terminals)), np.uint32, n)
        records = np.zeros(n, RECORD_DTYPE)
        records["tx"] = tx_hash
        records["ts_lo"] = ts & 0xFFFFFFFF
        records["ts_hi"] = ts >> 32
        records["flags"] = np.where(located, FLAG_LOCATION, 0)
        records["terminal"] = terminal_hash
        records["amount"] = amount
        records["lat"] = lat
        records["lon"] = lon
        self.keys = keys
        self.records = records
        self.ts_ms = ts
        self.amount = amount
        self.amount32 = records["amount"].astype(np.float64)
        self.lat32 = records["lat"].astype(np.float64)
        self.lon32 = records["lon"].astype(np.float64)
        self.located = located
        self.tx_hash = tx_hash
        self.terminal_hash = terminal_hash

    def rows(self, lo: int, hi: int) -> _BatchColumns:
        """The columns of transactions ``lo`` to ``hi`` (views, no copy)."""
        part = object.__new__(_BatchColumns)
        for name in self.__slots__:
            if name != "keys":  # two keys per transaction
                setattr(part, name, getattr(self, name)[lo:hi])
        part.keys = self.keys[2 * lo : 2 * hi]
        return part
