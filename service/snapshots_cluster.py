"""Feature snapshots, id claims and label claims on a Redis Cluster: one script call per master.

:class:`ClusterSnapshotStore` is :class:`~fraudstream.service.snapshots.SnapshotStore`
with the same keys, encodings and Lua scripts; each script call of a batch is
split per master (:class:`~fraudstream.service.redis_cluster.NodeRounds`: one
round trip for all of them). Every script touches one transaction's keys per
key, so the split changes nothing of what they decide: an id claimed twice in a
batch lands twice on the same master, in batch order. A partial failure (a master
down) is a dependency error and the batch is retried: a claim made before it
reads as a replay of the same content, a snapshot written before it is written
again. Snapshot writes wait for the replicas (``WAIT``) like the feature rounds,
so a label finds its snapshot after a failover.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.cluster import RedisCluster

from fraudstream.service.redis_cluster import NodeRounds, NodeScript
from fraudstream.service.snapshots import (
    _CLAIM_IDS_LUA,
    _CLAIM_LUA,
    _PUT_LUA,
    CLAIM_BYTES,
    SnapshotStore,
)


class ClusterSnapshotStore(SnapshotStore):
    """:class:`SnapshotStore` on a Redis Cluster (see the module docstring).

    Parameters
    ----------
    client
        A :class:`redis.cluster.RedisCluster` client (bytes responses).
    prefix, ttl_s
        As for :class:`SnapshotStore`.
    wait_replicas
        Replicas that must hold a batch's snapshots before :meth:`put_many` returns.
    """

    def __init__(self, client: RedisCluster, prefix: str, ttl_s: int, wait_replicas: int = 0):
        super().__init__(client, prefix, ttl_s)
        self._rounds = NodeRounds(client, wait_replicas)
        self._claim_ids_script = NodeScript(_CLAIM_IDS_LUA)
        self._put_script = NodeScript(_PUT_LUA)
        self._claim_labels_script = NodeScript(_CLAIM_LUA)
        # The single-node script calls, replaced with the same keyword contract.
        self._claim_ids = self._claim_ids_per_node
        self._claim_labels = self._claim_labels_per_node
        self._put = self._put_per_node

    def _claim_ids_per_node(self, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        ttl, claims = args
        return self._per_node(self._claim_ids_script, keys, [ttl], claims, CLAIM_BYTES, ())

    def _claim_labels_per_node(self, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        token, ttl, verdicts, *stale = args
        return self._per_node(
            self._claim_labels_script, keys, [token, ttl], verdicts, 1, stale, wait=True
        )

    def _per_node(
        self,
        script: NodeScript,
        keys: Sequence[str],
        head: Sequence[Any],
        per_key: bytes,
        width: int,
        tail: Sequence[Any],
        *,
        wait: bool = False,
    ) -> bytes:
        """Run a script answering one byte per key on each master with its keys.

        Its arguments: ``head``, then the ``width`` bytes of ``per_key`` of each
        of the master's keys (in order), then ``tail``.
        """
        groups = self._rounds.group(keys)
        calls = []
        for node, idx, _ in groups:
            blob = b"".join(per_key[i * width : (i + 1) * width] for i in idx)
            command = script.command([keys[i] for i in idx], [*head, blob, *tail])
            calls.append((node, [command]))
        out = bytearray(len(keys))
        for (_, idx, _), reply in zip(groups, self._rounds.run(calls, wait=wait), strict=True):
            for j, i in enumerate(idx):
                out[i] = reply[0][j]
        return bytes(out)

    def _put_per_node(self, keys: Sequence[str], args: Sequence[Any]) -> int:
        ttl, flags, values = args[0], args[1], args[2:]
        calls = []
        for node, idx, _ in self._rounds.group(keys):
            command = self._put_script.command(
                [keys[i] for i in idx],
                [ttl, bytes(flags[i] for i in idx), *(values[i] for i in idx)],
            )
            calls.append((node, [command]))
        self._rounds.run(calls, wait=True)
        return len(keys)
