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
   which transactions the terminal must count: the new ones, and the
   duplicates whose record still carries the flag.
2. ``terminal.lua`` on the masters of the terminal keys, every transaction in
   batch order (each gets its ring as found): counts those to count, each
   once, remembered by its needle in the terminal's ``:n`` hash; ``WAIT``.
3. ``pending.lua clear`` on the card masters: the pending flags go; ``WAIT``.
4. ``pending.lua forget`` on the terminal masters: the ``:n`` marks go.

A crash (or a failed round) after 1 leaves pending flags: the replay of the
batch finds its transactions as duplicates still pending, and round 2 counts at
their terminals those not yet marked there, so nothing is counted twice and
nothing is lost. After 3 nothing is pending: a mark left by a crash before 4 is
never looked at again and expires (``terminal_ttl``). Labels go the same way
(``label_card.lua``, flag 16 "label pending", then rounds 2-4 with label marks).

Every round runs the feature scripts on the keys of one master only, and each
checks the state markers of the slots it touches (see
:mod:`fraudstream.service.redis_cluster`). The features are the single-node
store's, value for value (tested on the same stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster

from fraudstream.service.features.definitions import FeatureConfig
from fraudstream.service.features.redis_store import (
    _PRELUDE,
    _STATE_LOST,
    RECORD_SIZE,
    RedisFeatureStore,
)
from fraudstream.service.redis_cluster import Call, NodeRounds, NodeScript, slot_marker_key
from fraudstream.service.state import StateLostError, lost_message

#: Flag bits of a card record used by the rounds (see the module docstring).
FLAG_TERMINAL_PENDING = 8
FLAG_LABEL_PENDING = 16
#: Status bit returned by card.lua: the terminal has to count the transaction.
_TO_COUNT = 8
#: terminal.lua's kind of a label operation, by (fraud, count once).
_LABEL_KINDS = {(False, False): ord("g"), (True, False): ord("f"), (False, True): ord("G"),
                (True, True): ord("F")}  # fmt: skip


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
        self._card_script = _script("card.lua")
        self._label_card_script = _script("label_card.lua")
        self._terminal_script = _script(_PRELUDE, "terminal.lua")
        self._pending_script = _script("pending.lua")
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
        records = bytearray(args[0])
        retention, card_ttl, slots, terminal_ttl = args[1:5]
        check = args[5]
        n = len(records) // RECORD_SIZE
        for i in range(n):
            records[i * RECORD_SIZE + 10] |= FLAG_TERMINAL_PENDING
        cards, terminals = keys[0 : 2 * n : 2], keys[1 : 2 * n : 2]
        needles = [bytes(records[i * RECORD_SIZE : i * RECORD_SIZE + 10]) for i in range(n)]

        # 1. cards
        card_groups = self._rounds.group(cards)
        calls: list[Call] = []
        for node, idx, used in card_groups:
            blob = b"".join(records[i * RECORD_SIZE : (i + 1) * RECORD_SIZE] for i in idx)
            command = self._card_script.command(
                [cards[i] for i in idx] + self._markers(used), [blob, retention, card_ttl, check]
            )
            calls.append((node, [command]))
        status = bytearray(n)
        histories: list[bytes] = [b""] * n
        for (_, idx, _), reply in zip(card_groups, self._run(calls), strict=True):
            for j, i in enumerate(idx):
                status[i] = reply[0][j]
                histories[i] = reply[j + 1]

        # 2. terminals, every transaction in batch order
        to_count = [bool(s & _TO_COUNT) for s in status]
        terminal_groups = self._rounds.group(terminals)
        calls = []
        for node, idx, used in terminal_groups:
            kinds = bytes(ord("t") if to_count[i] else ord("r") for i in idx)
            command = self._terminal_script.command(
                [terminals[i] for i in idx] + self._markers(used),
                [
                    kinds,
                    b"".join(needles[i] for i in idx),
                    slots,
                    terminal_ttl,
                    terminal_ttl,
                    check,
                ],
            )
            calls.append((node, [command]))
        rings: list[bytes] = [b""] * n
        for (_, idx, _), reply in zip(terminal_groups, self._run(calls, wait=True), strict=True):
            for j, i in enumerate(idx):
                status[i] = (status[i] & 3) | (4 if reply[0][j] else 0)
                rings[i] = reply[j + 1]

        # 3. and 4. the pending flags, then the marks
        pending = [i for i in range(n) if to_count[i]]
        self._settle(cards, terminals, needles, pending, FLAG_TERMINAL_PENDING, b"T")
        return [bytes(status), *rings, *histories]

    def _settle(
        self,
        cards: Sequence[str],
        terminals: Sequence[str],
        needles: Sequence[bytes],
        pending: Sequence[int],
        flag: int,
        mark: bytes,
    ) -> None:
        """Rounds 3 and 4: clear ``flag`` on the records of ``pending``, then drop the marks."""
        if not pending:
            return
        keys = [cards[i] for i in pending]
        calls: list[Call] = []
        for node, idx, _ in self._rounds.group(keys):
            command = self._pending_script.command(
                [keys[j] for j in idx],
                [b"clear", b"".join(needles[pending[j]] for j in idx), bytes([flag]) * len(idx)],
            )
            calls.append((node, [command]))
        self._run(calls, wait=True)
        keys = [terminals[i] + ":n" for i in pending]
        calls = []
        for node, idx, _ in self._rounds.group(keys):
            fields = b"".join(mark + needles[pending[j]] for j in idx)
            calls.append(
                (node, [self._pending_script.command([keys[j] for j in idx], [b"forget", fields])])
            )
        self._run(calls)

    def _labels_in_rounds(self, keys: list[str], args: list[Any]) -> int:
        """``labels.lua``'s contract (see there), in the rounds of the module docstring."""
        needle_blob, kinds = bytes(args[0]), bytes(args[1])
        retention, slots, terminal_ttl, check = args[2:6]
        n = len(kinds)
        cards, terminals = keys[0 : 2 * n : 2], keys[1 : 2 * n : 2]
        needles = [needle_blob[i * 10 : (i + 1) * 10] for i in range(n)]

        card_groups = self._rounds.group(cards)
        calls: list[Call] = []
        for node, idx, used in card_groups:
            command = self._label_card_script.command(
                [cards[i] for i in idx] + self._markers(used),
                [b"".join(needles[i] for i in idx), bytes(kinds[i] for i in idx), retention, check],
            )
            calls.append((node, [command]))
        todo = bytearray(n)
        for (_, idx, _), reply in zip(card_groups, self._run(calls), strict=True):
            for j, i in enumerate(idx):
                todo[i] = reply[j]

        ops = [i for i in range(n) if todo[i]]
        counted = 0
        if ops:
            op_keys = [terminals[i] for i in ops]
            terminal_groups = self._rounds.group(op_keys)
            calls = []
            for node, idx, used in terminal_groups:
                # terminal.lua's kinds: f/g a fraud/genuine label every time, F/G once.
                kind = bytes(_LABEL_KINDS[kinds[ops[j]] == 49, todo[ops[j]] == 2] for j in idx)
                command = self._terminal_script.command(
                    [op_keys[j] for j in idx] + self._markers(used),
                    [
                        kind,
                        b"".join(needles[ops[j]] for j in idx),
                        slots,
                        terminal_ttl,
                        terminal_ttl,
                        check,
                    ],
                )
                calls.append((node, [command]))
            for reply in self._run(calls, wait=True):
                counted += sum(reply[0])
        pending = [i for i in range(n) if todo[i] == 2]
        self._settle(cards, terminals, needles, pending, FLAG_LABEL_PENDING, b"L")
        return counted
