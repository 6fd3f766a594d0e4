"""The feature store on a Redis Cluster: the card and the terminal of a transaction in rounds.

:class:`ClusterFeatureStore` is :class:`~fraudstream.service.features.redis_store.RedisFeatureStore`
(same interface, same keys and layouts, the same Python feature computation) whose two
script calls are each replaced by rounds of per-node calls
(:class:`~fraudstream.service.redis_cluster.NodeRounds`, one round trip per round
whatever the number of masters). A card's keys and a terminal's keys live in
their own slots, usually on different masters, so a transaction cannot be
counted at both in one atomic step. Instead, per batch of transactions:

1. ``card.lua`` on the masters of the card keys: dedupe, too late, insert or
   append, exactly ``update.lua``'s card part, each new record carrying a spare
   flag bit, "terminal pending" (8). It returns each card history as found, and
   which transactions the terminal must count: the new ones, and those whose
   record still carries the flag from a run of this batch that failed.
2. ``terminal.lua`` on the masters of the terminal keys, every transaction in
   batch order (each gets its ring as found): counts those to count, each
   once; a mark per operation in the terminal's ``:n`` hash keeps what it
   counted and the ring it found; ``WAIT``.
3. ``pending.lua clear`` on the card masters: the pending flags go; ``WAIT``.
4. ``pending.lua forget`` on the terminal masters: the ``:n`` marks go.

A round is not atomic across masters, nor is a script on its master: Redis
keeps what a script wrote before an error (a master refusing a key of a slot
being resharded: "non local key"). So a round may be done on some masters, or
for some keys, and not the others; the batch is then retried whole. A failure
(or a crash) before 3 leaves pending flags, and the replay of the batch reports
and computes what its first run did: a still-pending record is reported new at
its first occurrence in the call, and each history is returned without the
records the failed run wrote for later transactions (nor is a record that an
earlier one of the call found trimmed); at the terminal an operation whose mark
is there counts nothing again and returns the ring it found then. Nothing is
counted twice or lost, and the features are those of one run (tested, with
slots moved between batches and between rounds). Rounds 3 and 4 only clear
flags and drop marks, so a refused one runs once more in place, grouped by the
reloaded slot map: a slot moved whole costs the batch nothing. Refused again
in 3 (a slot still migrating; the flags cleared on the other masters, and on
the refusing one for the keys before the refused one), the batch fails, and
its replay reports the transactions whose flag went as duplicates (counted
once, their features from the state as found), the others as the first run
did. After 3 nothing is pending, and a replay is one of duplicates; so round 4
failing does not fail the batch (a retry would count again each label counted
every time, at the terminals whose marks were dropped already): the marks
still there expire (``terminal_ttl``), as do those of a crash before 4 and
those of a failed run that its replay found settled. Until then a later duplicate of
the same transaction at that terminal may be given the ring a mark keeps, and a
later label of it without a record (a mark of round 4 refused) counts nothing.
Labels go the same way (``label_card.lua``, flag 16 "label pending", then
rounds 2-4 with label marks; a label counted every time is marked per
occurrence in its call).

Every round runs the feature scripts on the keys of one master only, and each
checks the state markers of the slots it touches (see
:mod:`fraudstream.service.redis_cluster`). The features are the single-node
store's, value for value (tested on the same stream).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from fraudstream.service.errors import is_dependency_error
from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import (
    _PRELUDE,
    _STATE_LOST,
    RECORD_SIZE,
    RedisFeatureStore,
)
from fraudstream.service.redis_cluster import Call, Group, NodeRounds, NodeScript, slot_marker_key
from fraudstream.service.state import StateLostError, lost_message

log = logging.getLogger(__name__)

#: Flag bits of a card record used by the rounds (see the module docstring).
FLAG_TERMINAL_PENDING = 8
FLAG_LABEL_PENDING = 16
#: Status bit returned by card.lua: the terminal has to count the transaction.
_TO_COUNT = 8
#: terminal.lua's mark byte of each operation kind, and the kinds marked per occurrence.
_MARKS = {ord("t"): ord("T"), ord("G"): ord("L"), ord("F"): ord("L"), ord("r"): ord("R"),
          ord("g"): ord("l"), ord("f"): ord("l")}  # fmt: skip
_PER_OCCURRENCE = frozenset(b"rgf")
#: terminal.lua's kind of a label operation, by (fraud, count once).
_LABEL_KINDS = {(False, False): ord("g"), (True, False): ord("f"), (False, True): ord("G"),
                (True, True): ord("F")}  # fmt: skip


def mark_fields(kinds: bytes, needles: np.ndarray) -> np.ndarray:
    r"""The marks of one ``terminal.lua`` call: a 12-byte field per operation (see there).

    The mark byte of its kind, its needle, and for the kinds done every time
    ('r', 'g', 'f') how many earlier operations of the call have the same
    needle and mark (so that each occurrence has its own mark); 0 for the others.

    >>> needles = np.zeros((3, 10), np.uint8)
    >>> [bytes(f[:1]) + bytes([f[11]]) for f in mark_fields(b"trr", needles)]
    [b'T\x00', b'R\x00', b'R\x01']
    """
    fields = np.zeros((len(kinds), 12), np.uint8)
    fields[:, 0] = [_MARKS[k] for k in kinds]
    fields[:, 1:11] = needles
    seen: dict[bytes, int] = {}
    for j, kind in enumerate(kinds):
        if kind in _PER_OCCURRENCE:
            field = fields[j, :11].tobytes()
            fields[j, 11] = min(seen.get(field, 0), 255)
            seen[field] = seen.get(field, 0) + 1
    return fields


def _script(*names: str) -> NodeScript:
    folder = resources.files("fraudstream.service.features")
    return NodeScript("".join(folder.joinpath(name).read_text("utf-8") for name in names))


class ClusterFeatureStore(RedisFeatureStore):
    """:class:`RedisFeatureStore` on a Redis Cluster (see the module docstring).

    Parameters
    ----------
    client
        A :class:`redis.cluster.RedisCluster` client (bytes responses).
    config
        Windows, lateness and key prefix.
    check_state
        Refuse to count anything in a slot whose state marker is missing.
    wait_replicas
        Replicas that must hold a batch's writes before it returns (``WAIT``).
    """

    def __init__(
        self,
        client: RedisCluster,
        config: FeatureConfig,
        *,
        check_state: bool = False,
        wait_replicas: int = 0,
    ) -> None:
        super().__init__(client, config, check_state=check_state)  # type: ignore[arg-type]
        self._rounds = NodeRounds(client, wait_replicas)
        self._lost = lost_message(config.prefix) + " (on at least one slot of the cluster)"
        self._card_script = _script("history.lua", "card.lua")
        self._label_card_script = _script("history.lua", "label_card.lua")
        self._terminal_script = _script(*_PRELUDE, "terminal.lua")
        self._pending_script = _script("history.lua", "pending.lua")
        # The single-node script calls, replaced by the rounds with the same contract.
        self._update = self._update_in_rounds  # type: ignore[assignment]
        self._labels = self._labels_in_rounds  # type: ignore[assignment]

    # -- rounds ----------------------------------------------------------------------

    def _markers(self, slots: set[int]) -> list[str]:
        if self._check[0] != b"1":
            return []
        prefix = self.config.prefix
        return [slot_marker_key(prefix, slot) for slot in sorted(slots)]

    def _run(self, calls: Sequence[Call], wait: bool = False) -> list[Any]:
        try:
            return [replies[0] for replies in self._rounds.run(calls, wait=wait)]
        except redis.ResponseError as exc:
            if str(exc).startswith(_STATE_LOST):
                raise StateLostError(self._lost) from None
            raise

    def _update_in_rounds(self, keys: list[str], args: list[Any]) -> list[bytes]:
        """``update.lua``'s contract (see there), in the rounds of the module docstring."""
        retention, card_ttl, slots, terminal_ttl, cap = args[1:6]
        check = args[6]
        records = np.frombuffer(args[0], dtype=np.uint8).reshape(-1, RECORD_SIZE).copy()
        records[:, 10] |= FLAG_TERMINAL_PENDING
        n = len(records)
        needles = records[:, :10]
        cards, terminals = keys[0 : 2 * n : 2], keys[1 : 2 * n : 2]

        # 1. cards
        card_groups = self._rounds.group(cards)
        calls: list[Call] = []
        for node, idx, used in card_groups:
            command = self._card_script.command(
                [cards[i] for i in idx] + self._markers(used),
                [records[idx].tobytes(), retention, card_ttl, cap, check],
            )
            calls.append((node, [command]))
        status = bytearray(n)
        histories: list[bytes] = [b""] * n
        hints = np.zeros(n, "<u4")
        for (_, idx, _), reply in zip(card_groups, self._run(calls), strict=True):
            for j, i in enumerate(idx):
                status[i] = reply[0][j]
                histories[i] = reply[j + 1]
            hints[idx] = np.frombuffer(reply[-1], "<u4")

        # 2. terminals, every transaction in batch order
        to_count = [bool(s & _TO_COUNT) for s in status]
        terminal_groups = self._rounds.group(terminals)
        calls = []
        marks = []
        for node, idx, used in terminal_groups:
            kinds = bytes(ord("t") if to_count[i] else ord("r") for i in idx)
            fields = mark_fields(kinds, needles[idx])
            command = self._terminal_script.command(
                [terminals[i] for i in idx] + self._markers(used),
                [kinds, needles[idx].tobytes(), slots, terminal_ttl, terminal_ttl, check,
                 fields[:, 11].tobytes()],
            )  # fmt: skip
            calls.append((node, [command]))
            marks.append(fields)
        rings: list[bytes] = [b""] * n
        for (_, idx, _), reply in zip(terminal_groups, self._run(calls, wait=True), strict=True):
            for j, i in enumerate(idx):
                status[i] = (status[i] & 3) | (4 if reply[0][j] else 0)
                rings[i] = reply[j + 1]

        # 3. and 4. the pending flags, then the marks
        self._settle(
            (card_groups, cards),
            (terminal_groups, terminals, marks),
            (needles, hints),
            to_count,
            FLAG_TERMINAL_PENDING,
        )
        return [bytes(status), *rings, *histories]

    def _settle(
        self,
        cards: tuple[list[Group], Sequence[str]],
        terminals: tuple[list[Group], Sequence[str], list[np.ndarray]],
        records: tuple[np.ndarray, np.ndarray],
        pending: Sequence[bool],
        flag: int,
    ) -> None:
        """Rounds 3 and 4: clear ``flag`` on the records of ``pending``, then drop the marks.

        ``cards`` and ``terminals``: the groups of rounds 1 and 2 (positions in
        ``records``) and the keys, with the marks round 2 wrote per group;
        ``records``: the needles, and the offsets where round 1 found or wrote
        each record.
        """
        needles, hints = records
        card_groups, card_keys = cards

        def clear(idx: list[int]) -> tuple[Any, ...] | None:
            keep = [i for i in idx if pending[i]]
            if not keep:
                return None
            args = [
                b"clear",
                needles[keep].tobytes(),
                bytes([flag]) * len(keep),
                hints[keep].tobytes(),
            ]
            return self._pending_script.command([card_keys[i] for i in keep], args)

        if any(pending):
            self._settling_round(card_keys, clear, wait=True, groups=card_groups)
        terminal_groups, terminal_keys, marks = terminals
        keys = [terminal_keys[i] + ":n" for _, idx, _ in terminal_groups for i in idx]
        if keys:
            self._forget(keys, np.concatenate(marks))

    def _forget(self, keys: Sequence[str], fields: np.ndarray) -> None:
        """Round 4: drop the marks ``fields`` (one row per key) of a batch counted whole.

        Its failure does not fail the batch: retried, the batch would be counted
        again where round 4 had dropped the marks (a label without a record
        counts at its terminal every time). The marks a round refused twice
        leaves expire with ``terminal_ttl``.
        """
        try:
            self._settling_round(
                keys,
                lambda idx: self._pending_script.command(
                    [keys[i] for i in idx], [b"forget", fields[idx].tobytes()]
                ),
                wait=False,
            )
        except redis.RedisError as exc:
            if not is_dependency_error(exc):
                raise
            log.warning(
                "Redis Cluster: some marks of a batch counted whole were not dropped "
                "(%s); they expire with the terminals' TTL",
                exc,
            )

    def _settling_round(
        self,
        keys: Sequence[str],
        command: Callable[[list[int]], tuple[Any, ...] | None],
        *,
        wait: bool,
        groups: list[Group] | None = None,
    ) -> None:
        """Round 3 or 4 on the masters of ``keys``, run once more if a master refused it.

        ``command(positions)`` is the call for the keys at those positions of
        ``keys`` that one master holds (``None``: nothing to do there);
        ``groups``, the keys' grouping by master if the caller has it. These
        rounds only clear flags or drop marks, so running one again where it
        ran changes nothing: refused (a slot moved, and the slot map is
        reloaded; a master away), it is grouped again and run once more, so a
        slot moved whole costs the batch nothing. Refused again (a slot still
        migrating, a master still away), the error is raised.
        """
        for attempt in (1, 2):
            try:
                grouped = (
                    groups if attempt == 1 and groups is not None else self._rounds.group(keys)
                )
                calls = [(node, [call]) for node, idx, _ in grouped if (call := command(idx))]
                if calls:
                    self._run(calls, wait=wait)
                return
            except redis.RedisError as exc:
                if attempt == 2 or not is_dependency_error(exc):
                    raise

    def _labels_in_rounds(self, keys: list[str], args: list[Any]) -> int:
        """``labels.lua``'s contract (see there), in the rounds of the module docstring."""
        kinds = bytes(args[1])
        retention, slots, terminal_ttl, check = args[2:6]
        n = len(kinds)
        needles = np.frombuffer(args[0], dtype=np.uint8).reshape(n, 10)
        cards, terminals = keys[0 : 2 * n : 2], keys[1 : 2 * n : 2]

        card_groups = self._rounds.group(cards)
        calls: list[Call] = []
        for node, idx, used in card_groups:
            command = self._label_card_script.command(
                [cards[i] for i in idx] + self._markers(used),
                [needles[idx].tobytes(), bytes(kinds[i] for i in idx), retention, check],
            )
            calls.append((node, [command]))
        todo = bytearray(n)
        hints = np.zeros(n, "<u4")
        for (_, idx, _), reply in zip(card_groups, self._run(calls), strict=True):
            for j, i in enumerate(idx):
                todo[i] = reply[0][j]
            hints[idx] = np.frombuffer(reply[1], "<u4")

        ops = [i for i in range(n) if todo[i]]
        if not ops:
            return 0
        terminal_groups = [
            (node, [ops[j] for j in idx], used)
            for node, idx, used in self._rounds.group([terminals[i] for i in ops])
        ]
        calls = []
        marks = []
        for node, idx, used in terminal_groups:
            # terminal.lua's kinds: f/g a fraud/genuine label every time, F/G once.
            kind = bytes(_LABEL_KINDS[kinds[i] == 49, todo[i] == 2] for i in idx)
            fields = mark_fields(kind, needles[idx])
            command = self._terminal_script.command(
                [terminals[i] for i in idx] + self._markers(used),
                [kind, needles[idx].tobytes(), slots, terminal_ttl, terminal_ttl, check,
                 fields[:, 11].tobytes()],
            )  # fmt: skip
            calls.append((node, [command]))
            marks.append(fields)
        counted = sum(sum(reply[0]) for reply in self._run(calls, wait=True))
        pending = [t == 2 for t in todo]
        self._settle(
            (card_groups, cards),
            (terminal_groups, terminals, marks),
            (needles, hints),
            pending,
            FLAG_LABEL_PENDING,
        )
        return counted
