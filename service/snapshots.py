"""Feature snapshots: the ``x`` of each scored transaction, kept until its label arrives.

A label arrives days after its transaction; by then the card's rolling features
have moved on. So the scorer stores, at scoring time, exactly what the model
saw, and the learner learns from that (no look-ahead).

Encoding (little endian, version byte first so the layout can evolve)::

    u8  version (=2)      8 bytes content digest of the transaction
    u32 feature-set id (CRC32 of the names)
    u32 model version     f32 score          i64 event_time_ms
    u16 n features        u16 len(card_id)   u16 len(terminal_id)
    card_id, terminal_id (UTF-8), n x f32 features

Version 1 (no digest) is still read. The first 9 bytes alone (version and
digest) are an **id claim**: before a batch is counted, the scorer claims every
transaction id with its :attr:`~fraudstream.service.schemas.Transaction.content_digest`
(:meth:`SnapshotStore.claim_many_ids`; on a single Redis node the scorer's
feature script makes the same claims in its own call, with ``claim_id`` from
``features/claims.lua``, the one home of the rule). An id seen before with the same digest
is a replay (harmless: nothing is counted twice); with another digest it is a
conflict, and the transaction is dead-lettered instead of being counted as a
second transaction with the same id (and the same alert id). The snapshot
written after scoring replaces the claim; a claim never followed by a
snapshot reads as "no snapshot". The feature script appends to the claim what
the transaction found (:data:`FOUND_MARK`, then its card history and terminal
ring: see ``claims.lua``), so that a replay before the snapshot is written is
computed as the first count was; that too reads as "no snapshot".

Keys: ``{prefix}:{x:<transaction_id>}`` for the snapshot and
``{prefix}:{x:<transaction_id>}:claim`` for the label claim. The hash tag makes
both keys of one transaction live in one Redis Cluster slot, and every script
touches one transaction's keys only.

A label is claimed with a token (the learner's pending model version) and its
verdict. A claim held by a *stale* token -- a learner that crashed before
publishing the model that learnt it -- may be taken over, so that label is
learnt again instead of lost; a claim held by the current or a published token
is a duplicate when the verdicts agree and a **conflict** when they do not (a
label corrected after review, or a labelling bug upstream: the model cannot
unlearn the first, the caller dead-letters the second). A claim written before
claims kept the verdict (the token alone) agrees with either.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import redis

from fraudstream.service.redis_client import read_script_reply, send_script
from fraudstream.service.schemas import Transaction

#: Layout version written in the first byte.
SNAPSHOT_VERSION = 2
#: Bytes of an id claim: the version byte and the content digest.
CLAIM_BYTES = 9

_HEADER_V1 = struct.Struct("<BIIfqHHH")
_HEADER = struct.Struct("<B8sIIfqHHH")

_VERSION_BYTE = bytes([SNAPSHOT_VERSION])

#: Bytes 9-16 of an id claim followed by what its transaction found (``keep_found``
#: in ``features/claims.lua``): read as feature set and model version 0xFFFFFFFF,
#: which the snapshot script replaces even where it keeps an existing snapshot.
FOUND_MARK = b"\xff" * 8

#: Model version of a snapshot written by a state rebuild (``fraudstream state
#: rebuild``): its features are exact, but no model scored it (score NaN).
REBUILT_MODEL_VERSION = 0xFFFFFFFF

#: Outcomes of :meth:`SnapshotStore.claim_many_ids`, one per transaction.
CLAIM_NEW, CLAIM_REPLAY, CLAIM_CONFLICT = 0, 1, 2

#: The claim of one id (``claim_id``), shared with the feature script, which
#: claims a batch's ids in the same call as it counts them (single node).
CLAIM_LUA = (
    resources.files("fraudstream.service.features").joinpath("claims.lua").read_text("utf-8")
)

# KEYS[i] = snapshot key of transaction i; ARGV[1] = ttl_s, ARGV[2] = the 9-byte
# claims (version byte + content digest), concatenated in key order.
# Returns one byte per key: CLAIM_NEW, CLAIM_REPLAY or CLAIM_CONFLICT.
_CLAIM_IDS_LUA = (
    CLAIM_LUA
    + """
local ttl = ARGV[1]
local claims = ARGV[2]
local out = {}
local sub, char = string.sub, string.char
for i = 1, #KEYS do
  out[i] = char(claim_id(KEYS[i], sub(claims, (i - 1) * 9 + 1, i * 9), ttl))
end
return table.concat(out)
"""
)

#: :meth:`SnapshotStore.claim_many`'s answers: another token holds the label, this
#: call claimed it, the same token held it already, a claim holds the other verdict.
LABEL_TAKEN, LABEL_CLAIMED, LABEL_HELD, LABEL_CONFLICT = 0, 1, 2, 3

# KEYS = label claim keys; ARGV[1] = token, ARGV[2] = ttl_s, ARGV[3] = one verdict
# byte per key ('1' fraud, '0' genuine), ARGV[4...] = stale tokens. A claim holds
# "<token>:<verdict>" (the token alone if written before verdicts were kept).
# Returns one byte per key: LABEL_TAKEN, _CLAIMED, _HELD or _CONFLICT, in key
# order (a key repeated sees what its earlier occurrence claimed).
_CLAIM_LUA = """
local token, ttl, verdicts = ARGV[1], ARGV[2], ARGV[3]
local stale = {}
for i = 4, #ARGV do stale[ARGV[i]] = true end
local out = {}
local sub, find, char = string.sub, string.find, string.char
for i = 1, #KEYS do
  local verdict = sub(verdicts, i, i)
  local held = redis.call('GET', KEYS[i])
  local answer = 1
  if held then
    local by, was = held, nil
    local sep = find(held, ':', 1, true)
    if sep then by, was = sub(held, 1, sep - 1), sub(held, sep + 1) end
    if by == token then answer = 2 elseif not stale[by] then answer = 0 end
    if answer ~= 1 and was and was ~= verdict then answer = 3 end
  end
  if answer == 1 then
    redis.call('SET', KEYS[i], token .. ':' .. verdict, 'EX', ttl)
  end
  out[i] = char(answer)
end
return table.concat(out)
"""


#: Writes a batch of snapshots in one call. Per-command pipelining cost the
#: scorer ~10 µs of Python per transaction in redis-py (half the batch time in
#: the profile); one script call with flat arguments costs well under 1 µs.
#: ARGV: ttl, one '0'/'1' per key (1 = keep an existing snapshot), the values.
#: An id claim alone, or a snapshot a state rebuild wrote (model version
#: 0xFFFFFFFF at bytes 13-16), is not kept: the scorer's own snapshot replaces it.
_PUT_LUA = """
local ttl = ARGV[1]
local keep = ARGV[2]
for i = 1, #KEYS do
  local write = string.byte(keep, i) ~= 49
  if not write then
    local version = redis.call('GETRANGE', KEYS[i], 13, 16)
    write = #version < 4 or version == '\\255\\255\\255\\255'
  end
  if write then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ttl)
  end
end
return #KEYS
"""


def snapshot_key(prefix: str, transaction_id: str) -> str:
    """Redis key of a transaction's snapshot and id claim (hash-tagged by transaction).

    >>> snapshot_key("fs", "t1")
    'fs:{x:t1}'
    """
    return f"{prefix}:{{x:{transaction_id}}}"


def id_claims(transactions: Sequence[Transaction]) -> bytes:
    """The id claims of a batch, :data:`CLAIM_BYTES` per transaction, in batch order.

    >>> from fraudstream.service.schemas import Transaction
    >>> tx = Transaction(transaction_id="t", card_id="c", terminal_id="m", amount=1,
    ...                  timestamp=1522540800000)
    >>> claims = id_claims([tx, tx])
    >>> len(claims), claims[0] == SNAPSHOT_VERSION, claims[1:9] == tx.content_digest
    (18, True, True)
    """
    return b"".join(_VERSION_BYTE + tx.content_digest for tx in transactions)


def feature_set_id(names: Sequence[str]) -> int:
    """CRC32 of the feature names in order: a snapshot is only read with the same names.

    >>> feature_set_id(["a", "b"]) == feature_set_id(["a", "b"]) != feature_set_id(["b", "a"])
    True
    """
    return zlib.crc32("\x1f".join(names).encode())


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the scorer knew about a transaction when it scored it."""

    transaction_id: str
    card_id: str
    terminal_id: str
    event_time_ms: int
    score: float
    model_version: int
    feature_set: int
    features: np.ndarray  # float32, in the scorer's feature order

    def x(self, names: Sequence[str]) -> dict[str, float]:
        """The features as a River ``x`` dict (``names`` must match the feature set)."""
        if feature_set_id(names) != self.feature_set:
            raise ValueError("snapshot was stored with another feature set")
        return dict(zip(names, self.features.astype(np.float64).tolist(), strict=True))


def encode(
    card_id: str,
    terminal_id: str,
    event_time_ms: int,
    score: float,
    model_version: int,
    feature_set: int,
    features: np.ndarray,
    digest: bytes = bytes(8),
) -> bytes:
    """Binary snapshot of one transaction (``digest``: its content digest).

    >>> b = encode("c1", "t1", 1522540800000, 0.25, 3, 7, np.array([1.5, 2.0]))
    >>> len(b), decode("tx", b).features.tolist(), decode("tx", b).score
    (47, [1.5, 2.0], 0.25)
    """
    card = card_id.encode()
    term = terminal_id.encode()
    feats = np.ascontiguousarray(features, dtype="<f4")
    return (
        _HEADER.pack(
            SNAPSHOT_VERSION,
            digest,
            feature_set,
            model_version,
            score,
            event_time_ms,
            len(feats),
            len(card),
            len(term),
        )
        + card
        + term
        + feats.tobytes()
    )


def encode_many(
    transactions: Sequence[Transaction],
    X32: np.ndarray,
    scores: Sequence[float],
    model_version: int,
    feature_set: int,
) -> list[bytes]:
    """:func:`encode` of every row of a batch (``X32``: contiguous ``<f4``, one row each).

    The same bytes as :func:`encode` row by row, without a numpy call per row.

    >>> from fraudstream.service.schemas import Transaction
    >>> tx = Transaction(transaction_id="t", card_id="c1", terminal_id="t1", amount=1,
    ...                  timestamp=1522540800000)
    >>> X = np.array([[1.5, 2.0]], dtype="<f4")
    >>> encode_many([tx], X, [0.25], 3, 7) == [
    ...     encode("c1", "t1", tx.event_time_ms, 0.25, 3, 7, X[0], tx.content_digest)]
    True
    """
    n_features = X32.shape[1] if X32.ndim == 2 else 0
    row_bytes = 4 * n_features
    blob = X32.tobytes()
    pack = _HEADER.pack
    out = []
    for i, (tx, score) in enumerate(zip(transactions, scores, strict=True)):
        card = tx.card_id.encode()
        term = tx.terminal_id.encode()
        header = pack(
            SNAPSHOT_VERSION,
            tx.content_digest,
            feature_set,
            model_version,
            score,
            tx.event_time_ms,
            n_features,
            len(card),
            len(term),
        )
        out.append(b"".join((header, card, term, blob[i * row_bytes : (i + 1) * row_bytes])))
    return out


def decode(transaction_id: str, data: bytes) -> Snapshot:
    """Inverse of :func:`encode` (versions 1 and 2).

    ``ValueError`` on an unknown version, a bad length, or an id claim without
    a snapshot.
    """
    if not data or data[0] not in (1, SNAPSHOT_VERSION):
        raise ValueError(f"unknown snapshot version {data[:1]!r}")
    if data[0] == 1:
        _, fset, mver, score, t_ms, n, lc, lt = _HEADER_V1.unpack_from(data)
        off = _HEADER_V1.size
    else:
        if len(data) <= CLAIM_BYTES or data[CLAIM_BYTES : CLAIM_BYTES + 8] == FOUND_MARK:
            raise ValueError("an id claim, no snapshot yet")
        _, _, fset, mver, score, t_ms, n, lc, lt = _HEADER.unpack_from(data)
        off = _HEADER.size
    if len(data) != off + lc + lt + 4 * n:
        raise ValueError("snapshot has the wrong length")
    card = data[off : off + lc].decode()
    term = data[off + lc : off + lc + lt].decode()
    feats = np.frombuffer(data, dtype="<f4", count=n, offset=off + lc + lt)
    return Snapshot(transaction_id, card, term, t_ms, float(score), mver, fset, feats)


class SnapshotStore:
    """Feature snapshots in Redis, written and read one pipeline per batch.

    Parameters
    ----------
    client
        A ``redis.Redis`` client (bytes responses).
    prefix
        Key prefix (``Settings.redis_prefix``).
    ttl_s
        Life of a snapshot and of a label claim; longer than the longest label delay.
    """

    def __init__(self, client: Any, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self._claim_labels = client.register_script(_CLAIM_LUA)
        self._claim_ids = client.register_script(_CLAIM_IDS_LUA)
        self._put = client.register_script(_PUT_LUA)

    def key(self, transaction_id: str) -> str:
        """Redis key of a snapshot (hash-tagged by transaction)."""
        return snapshot_key(self.prefix, transaction_id)

    def claim_key(self, transaction_id: str) -> str:
        """Redis key of a label claim (same slot as the snapshot)."""
        return f"{self.prefix}:{{x:{transaction_id}}}:claim"

    def claim_many_ids(self, transactions: Sequence[Transaction]) -> np.ndarray:
        """Claim each transaction id with its content digest, in one round trip.

        Returns
        -------
        numpy.ndarray
            One of :data:`CLAIM_NEW`, :data:`CLAIM_REPLAY`, :data:`CLAIM_CONFLICT`
            per transaction (``uint8``). Within a batch, a later transaction with
            an id already claimed by an earlier one is judged against it.
        """
        if not transactions:
            return np.zeros(0, np.uint8)
        keys = [self.key(tx.transaction_id) for tx in transactions]
        claims = id_claims(transactions)
        # Single node: one call. Keys are hash-tagged per transaction, so a cluster
        # deployment calls this once per node with that node's keys.
        reply = self._claim_ids(keys=keys, args=[self.ttl_s, claims])
        return np.frombuffer(reply, dtype=np.uint8)

    def put_many(
        self,
        transactions: Sequence[Transaction],
        X: np.ndarray,
        scores: np.ndarray,
        model_version: int,
        feature_names: Sequence[str],
        keep_existing: np.ndarray | None = None,
    ) -> None:
        """Store the snapshot of every transaction of a scored batch (one round trip).

        Rows flagged in ``keep_existing`` (replayed transactions) are written only
        if no snapshot exists (an id claim alone is not one): the first snapshot
        is what the transaction was scored with when it was new, and a replay may
        see a little more of its day at the terminal. A replay after a crash that came before the
        snapshot was written still stores one, so its label is not lost.
        """
        keys, args = self.put_arguments(
            transactions, X, scores, model_version, feature_names, keep_existing
        )
        if keys:
            # Single node: one call for the batch. Every key is hash-tagged by its
            # transaction, so a cluster deployment calls this once per key slot.
            self._put(keys=keys, args=args)

    def put_arguments(
        self,
        transactions: Sequence[Transaction],
        X: np.ndarray,
        scores: np.ndarray,
        model_version: int,
        feature_names: Sequence[str],
        keep_existing: np.ndarray | None = None,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the snapshot script for :meth:`put_many` (no keys: nothing to put)."""
        if len(transactions) != len(X) or len(X) != len(scores):
            raise ValueError("transactions, X and scores must have the same length")
        fset = feature_set_id(feature_names)
        X32 = np.ascontiguousarray(X, dtype="<f4")
        keep = np.zeros(len(X), bool) if keep_existing is None else np.asarray(keep_existing)
        keys = [self.key(tx.transaction_id) for tx in transactions]
        values = encode_many(transactions, X32, np.asarray(scores).tolist(), model_version, fset)
        flags = np.where(keep, ord("1"), ord("0")).astype(np.uint8).tobytes()
        return keys, [self.ttl_s, flags, *values]

    def send_put(self, connection: redis.Connection, keys: list[str], args: list[Any]) -> None:
        """Send the snapshot script on ``connection`` without waiting (see :meth:`read_put`)."""
        send_script(connection, self._put.sha, keys, args)

    def read_put(self, connection: redis.Connection) -> None:
        """Wait for the oldest snapshot script sent on ``connection``: its snapshots are written."""
        read_script_reply(connection, self.load_scripts)

    def load_scripts(self) -> None:
        """Load the snapshot script into the server (before :meth:`send_put`)."""
        self.client.script_load(self._put.script)

    def get_many(self, transaction_ids: Sequence[str]) -> list[Snapshot | None]:
        """Snapshots in the order asked, ``None`` where missing or expired (one round trip).

        An undecodable snapshot is also returned as ``None``: the caller dead-letters it.
        """
        if not transaction_ids:
            return []
        # MGET spans slots in a cluster; a non-transactional pipeline of GETs is
        # split per node by the cluster client and is one round trip on one node.
        pipe = self.client.pipeline(transaction=False)
        for tx_id in transaction_ids:
            pipe.get(self.key(tx_id))
        out: list[Snapshot | None] = []
        for tx_id, data in zip(transaction_ids, pipe.execute(), strict=True):
            try:
                out.append(decode(tx_id, data) if data is not None else None)
            except (ValueError, struct.error):
                out.append(None)
        return out

    def claim_many(
        self,
        transaction_ids: Sequence[str],
        is_fraud: Sequence[bool],
        token: str = "1",
        stale: Sequence[str] = (),
    ) -> list[int]:
        """Claim each label once with its verdict, atomically per transaction (one call).

        Parameters
        ----------
        transaction_ids
            Labels to claim; an id repeated in the list is claimed only the first time.
        is_fraud
            Each label's verdict.
        token
            Who claims: the learner's pending model version.
        stale
            Tokens of claims that may be taken over (learners that crashed
            before publishing what they learnt).

        Returns
        -------
        list[int]
            Per label: :data:`LABEL_CLAIMED` where this call claimed it,
            :data:`LABEL_HELD` where ``token`` held it already (an earlier
            occurrence in the list, an earlier call, or a call that failed
            after claiming it), :data:`LABEL_TAKEN` where another token holds
            it, :data:`LABEL_CONFLICT` where a claim holds the other verdict
            (the claim is left as it is).
        """
        if not transaction_ids:
            return []
        keys = [self.claim_key(tx_id) for tx_id in transaction_ids]
        verdicts = bytes(49 if fraud else 48 for fraud in is_fraud)
        if len(verdicts) != len(keys):
            raise ValueError("one verdict per transaction id")
        return list(self._claim_labels(keys=keys, args=[token, self.ttl_s, verdicts, *stale]))


class SnapshotSender:
    """Writes a scorer's snapshots on a connection of its own without waiting for them.

    The scorer that overlaps batches hands this to its pipeline instead of the
    store: :meth:`put_many` sends the snapshot script and returns, and
    :meth:`settle` waits for every write sent so far, before the batch's
    offsets may be committed. Id claims go to the store (one round trip).

    Parameters
    ----------
    store
        The snapshot store (single Redis node).
    connection
        A connection of the store's client pool, used for nothing else.
    """

    def __init__(self, store: SnapshotStore, connection: redis.Connection) -> None:
        self.store = store
        self.connection = connection
        self._sent = 0

    def claim_many_ids(self, transactions: Sequence[Transaction]) -> np.ndarray:
        """Claim ids as :meth:`SnapshotStore.claim_many_ids` (a round trip, waited for)."""
        return self.store.claim_many_ids(transactions)

    def put_many(
        self,
        transactions: Sequence[Transaction],
        X: np.ndarray,
        scores: np.ndarray,
        model_version: int,
        feature_names: Sequence[str],
        keep_existing: np.ndarray | None = None,
    ) -> None:
        """Send the writes of :meth:`SnapshotStore.put_many`; :meth:`settle` waits for them."""
        keys, args = self.store.put_arguments(
            transactions, X, scores, model_version, feature_names, keep_existing
        )
        if keys:
            self.store.send_put(self.connection, keys, args)
            self._sent += 1

    def settle(self) -> None:
        """Wait until every snapshot sent so far is written (raises what a write raised)."""
        while self._sent:
            self._sent -= 1
            self.store.read_put(self.connection)

    def reset(self) -> None:
        """Forget the writes in flight (after a failure): the link and their replies go."""
        self._sent = 0
        self.connection.disconnect()  # type: ignore[no-untyped-call]
