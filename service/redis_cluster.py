"""Redis Cluster: one script call per node and round, and the state marker of every slot.

On a single Redis node each batch is one script call. On a cluster, redis-py
routes a script by the slot of its declared keys and refuses keys of several
slots; one call per slot would be one call per transaction (a batch of 2,000
touches ~2,000 slots): measured here, 7 µs of scorer and 5 µs of Redis CPU per
key and round, against 0.7 and 2-3 µs for one call per node. So fraudstream
groups per **node**: :class:`NodeScript` runs a Lua script once on each master
that holds some of the batch's keys, the keys passed in ``ARGV`` under the
script flag ``allow-cross-slot-keys`` (Redis ≥ 7.0), which lets a script touch
keys of several slots *of its own node*. :class:`NodeRounds` sends the calls of
one round to every node before reading any reply (the nodes work in parallel:
one round trip per round, whatever the number of nodes).

What this costs, and what makes it safe:

* A script is atomic on its node only. The feature and label scripts are split
  into rounds whose partial effects a replay repairs (see
  :mod:`fraudstream.service.features.cluster_store`); id claims and snapshot
  writes are idempotent per key.
* A node that fails (connection refused, ``CLUSTERDOWN``, ``READONLY`` after a
  failover; inside a script, Redis 7.0's "Script attempted to access a non local
  key" for a key of a slot moved or being migrated, and "... while the cluster is
  down" during a failover) raises an error
  :func:`~fraudstream.service.errors.is_dependency_error` recognises, after
  marking the slot map stale: the scorer backs off and retries the batch with
  nothing committed, and the next call reloads the slot map (a promoted replica
  is found there).
* With ``FRAUDSTREAM_REDIS_CLUSTER_WAIT_REPLICAS`` = *n* > 0, each writing round
  ends with ``WAIT n`` on every node written to: a batch's offsets are committed
  only once *n* replicas of each master hold its writes, so a master that dies
  afterwards loses none of them to its replica's promotion. Fewer acknowledgements
  fail the batch (retried). A master with fewer than *n* replicas connected (a
  replica just promoted, until its old master rejoins) is waited for the ones it
  has, with a warning: waiting for more would stall the stream.

The **state marker** (:mod:`fraudstream.service.state`) is checked atomically in
each feature script. A script sees the keys of its own node only, so on a cluster
there is a marker per slot, ``{prefix}:{<tag>}:state`` where ``<tag>`` hashes to
that slot (:func:`slot_tag`), holding the generation; the head marker
``{prefix}:{state}`` keeps the generation and its origin as on a single node. A
feature script checks the markers of the slots it touches: a node restarted empty
or a flushed node loses its slots' markers, and only the transactions of those
slots stop being counted. A slot moved by resharding takes its marker along.

Examples
--------
>>> from redis.crc import key_slot
>>> all(key_slot(slot_tag(s).encode()) == s for s in (0, 1, 5000, 16383))
True
>>> slot_marker_key("fs", 0) == "fs:{" + slot_tag(0) + "}:state"
True
"""

from __future__ import annotations

import functools
import logging
import time
from binascii import crc_hqx
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisClusterException

log = logging.getLogger(__name__)

#: The first line of every per-node script.
_FLAGS = "#!lua flags=allow-cross-slot-keys\n"

# ARGV[1] = number of keys n, ARGV[2 .. n+1] = the keys, then the script's own
# ARGV. The script's body reads them as KEYS and ARGV (locals shadowing the globals).
_UNPACK = """local KEYS, ARGV = (function(a)
  local n = tonumber(a[1])
  local k, v = {}, {}
  for i = 1, n do k[i] = a[i + 1] end
  for i = n + 2, #a do v[#v + 1] = a[i] end
  return k, v
end)(ARGV)
"""

#: Error replies that mean "ask again once the slot map is reloaded".
_TOPOLOGY_ERRORS = (
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
)
#: Redis 7.0's refusals of a command inside a script, for a cluster reason (a script
#: gets no MOVED, ASK, TRYAGAIN or CLUSTERDOWN): a key of a slot this master does not
#: serve now (moved, or migrating and not here), or slots without a master.
_SCRIPT_REFUSALS = (
    "Script attempted to access a non local key",
    "Script attempted to execute a command while the cluster is down",
    "Script attempted to execute a write command while the cluster is down",
)


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing, i = REDIS_CLUSTER_HASH_SLOTS, 0
    while missing:
        tag = b"s%d" % i
        slot = crc_hqx(tag, 0) % REDIS_CLUSTER_HASH_SLOTS  # key_slot of a bare tag
        if tags[slot] is None:
            tags[slot] = tag.decode()
            missing -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    """The first ``s<i>`` hash tag of ``slot`` (a key ``...{tag}...`` lives in that slot).

    >>> slot_tag(0), slot_tag(16383)
    ('s7920', 's9706')
    """
    return _slot_tags()[slot]


def slot_marker_key(prefix: str, slot: int) -> str:
    """Key of the state marker of one slot (see the module docstring)."""
    return f"{prefix}:{{{slot_tag(slot)}}}:state"


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


class NodeScript:
    """A Lua script run once per node with keys of several slots (see the module docstring).

    Parameters
    ----------
    source
        The script's body. It reads ``KEYS`` and ``ARGV`` as a single-node
        script would.
    """

    def __init__(self, source: str) -> None:
        self.source = _FLAGS + _UNPACK + source

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        """The ``EVAL`` command of one node's call (EVAL: a promoted replica needs no load)."""
        return ("EVAL", self.source, 0, len(keys), *keys, *args)


class ClusterUnavailableError(redis.exceptions.ConnectionError):
    """A master of the cluster cannot do its part of a round now; the batch is retried.

    A ``redis.ConnectionError``: the service's transient-error handling
    (:func:`~fraudstream.service.errors.is_dependency_error`, the consume loop's
    back-off and its ``redis`` error count) treats it as Redis being away.
    """


def _read(connection: Any, count: int) -> list[Any]:
    """``count`` replies of a connection, error replies as exception objects (read them all)."""
    out: list[Any] = []
    for _ in range(count):
        try:
            out.append(connection.read_response())
        except redis.ResponseError as exc:
            out.append(exc)
    return out


#: One node's part of a round: the node and its commands.
Call = tuple[ClusterNode, list[tuple[Any, ...]]]
#: A master, the positions of its keys among those grouped (in order), their slots.
Group = tuple[ClusterNode, list[int], set[int]]


class NodeRounds:
    """Per-node rounds of commands over a :class:`~redis.cluster.RedisCluster` client.

    Parameters
    ----------
    client
        The cluster client (its slot map and its per-node connection pools are used).
    wait_replicas
        Replicas that must acknowledge a writing round (``WAIT``); 0: none.
    wait_timeout_ms
        How long ``WAIT`` waits for them.
    """

    def __init__(self, client: RedisCluster, wait_replicas: int = 0, wait_timeout_ms: int = 5000):
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._stale = False
        self._replicas: dict[str, tuple[int, float]] = {}

    def group(self, keys: Sequence[str]) -> list[Group]:
        """Per master holding some of ``keys``: the node, its keys' positions, their slots.

        Raises
        ------
        ClusterUnavailableError
            A slot has no master in the slot map (reloaded next time).
        """
        if self._stale:
            try:
                self.client.nodes_manager.initialize()
            except (redis.RedisError, RedisClusterException) as exc:
                raise ClusterUnavailableError(
                    f"Redis Cluster: cannot load the slot map ({exc})"
                ) from exc
            self._stale = False
        cache = self.client.nodes_manager.slots_cache
        groups: dict[str, Group] = {}
        for i, key in enumerate(keys):
            slot = key_slot(key.encode())
            holders = cache.get(slot)
            if not holders:
                self._stale = True
                raise ClusterUnavailableError(f"Redis Cluster: no node serves slot {slot}")
            node = holders[0]
            group = groups.get(node.name)
            if group is None:
                group = groups[node.name] = (node, [], set())
            group[1].append(i)
            group[2].add(slot)
        return list(groups.values())

    def run(self, calls: Sequence[Call], *, wait: bool = False) -> list[list[Any]]:
        """Send every node its commands, then read every reply: one round trip for all nodes.

        With ``wait`` (and ``wait_replicas`` > 0) a ``WAIT`` follows each node's
        commands. Returns the replies per call, in order.

        Raises
        ------
        ClusterUnavailableError
            A node is unreachable, refused a command for a cluster reason, or
            too few replicas acknowledged (the slot map is reloaded next time).
        redis.ResponseError
            Another error reply (the first one).
        """
        waits = [self._replicas_to_wait(node) if wait else 0 for node, _ in calls]
        taken: list[tuple[ClusterNode, Any]] = []
        try:
            for (node, commands), replicas in zip(calls, waits, strict=True):
                connection = node.redis_connection.connection_pool.get_connection()
                taken.append((node, connection))
                if replicas:
                    commands = [*commands, ("WAIT", replicas, self.wait_timeout_ms)]
                connection.send_packed_command(connection.pack_commands(commands))
            replies = [
                _read(connection, len(commands) + bool(replicas))
                for (_, connection), (_, commands), replicas in zip(
                    taken, calls, waits, strict=True
                )
            ]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._stale = True
            for _, connection in taken:
                connection.disconnect()
            raise ClusterUnavailableError(f"Redis Cluster node unreachable: {exc}") from exc
        finally:
            for node, connection in taken:
                node.redis_connection.connection_pool.release(connection)
        for (node, _), out, replicas in zip(taken, replies, waits, strict=True):
            self._check(node, out, replicas)
        return replies

    def _replicas_to_wait(self, node: ClusterNode) -> int:
        """``wait_replicas``, or fewer when the master has fewer replicas connected.

        A replica promoted after its master failed has no replica of its own
        until one joins: waiting for one would stall the stream, so its writes
        are acknowledged by the replicas it has (a warning says so). The count
        is read again every 5 s.
        """
        if self.wait_replicas == 0:
            return 0
        now = time.monotonic()
        known = self._replicas.get(node.name)
        if known is None or now - known[1] > 5.0:
            try:
                info = node.redis_connection.info("replication")
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._stale = True
                raise ClusterUnavailableError(f"Redis Cluster node unreachable: {exc}") from exc
            connected = int(info.get("connected_slaves", 0))
            if connected < self.wait_replicas and (known is None or known[0] != connected):
                log.warning(
                    "Redis Cluster master %s has %d replica(s) connected, fewer than the %d "
                    "its writes should reach (FRAUDSTREAM_REDIS_CLUSTER_WAIT_REPLICAS): a "
                    "failure of this master until one joins may lose the last batches' writes",
                    node.name,
                    connected,
                    self.wait_replicas,
                )
            known = self._replicas[node.name] = (connected, now)
        return min(self.wait_replicas, known[0])

    def _check(self, node: ClusterNode, out: list[Any], replicas: int) -> None:
        """Raise the first error reply of a node; drop and check its ``WAIT`` reply."""
        for reply in out:
            if isinstance(reply, redis.ResponseError):
                self._raise(node, reply)
        if replicas:
            acked = out.pop()
            if int(acked) < replicas:
                self._stale = True
                self._replicas.pop(node.name, None)
                raise ClusterUnavailableError(
                    f"Redis Cluster node {node.name}: {acked} of {replicas} "
                    "replicas acknowledged the batch's writes (WAIT); retried"
                )

    def _raise(self, node: ClusterNode, reply: redis.ResponseError) -> None:
        text = str(reply)
        if isinstance(reply, _TOPOLOGY_ERRORS) or any(r in text for r in _SCRIPT_REFUSALS):
            self._stale = True
            raise ClusterUnavailableError(f"Redis Cluster node {node.name}: {text}") from reply
        raise reply


# -- the state marker of every slot ----------------------------------------------------

_SET_ALL = NodeScript("for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1]) end return #KEYS")
_EXISTING = NodeScript(
    "local out = {}\n"
    "for i = 1, #KEYS do out[i] = string.char(redis.call('EXISTS', KEYS[i])) end\n"
    "return table.concat(out)"
)


def _markers_by_node(rounds: NodeRounds, prefix: str) -> tuple[list[Any], list[str]]:
    keys = [slot_marker_key(prefix, slot) for slot in range(REDIS_CLUSTER_HASH_SLOTS)]
    return rounds.group(keys), keys


def write_slot_markers(client: RedisCluster, prefix: str, generation: str) -> None:
    """Write the state marker of every slot (one call per master), replicas acknowledging."""
    rounds = NodeRounds(client)
    groups, keys = _markers_by_node(rounds, prefix)
    rounds.run(
        [
            (node, [_SET_ALL.command([keys[i] for i in idx], [generation])])
            for node, idx, _ in groups
        ]
    )


def missing_slot_markers(client: RedisCluster, prefix: str) -> list[int]:
    """Slots whose state marker is missing (one call per master)."""
    rounds = NodeRounds(client)
    groups, keys = _markers_by_node(rounds, prefix)
    replies = rounds.run(
        [(node, [_EXISTING.command([keys[i] for i in idx], [])]) for node, idx, _ in groups]
    )
    missing = []
    for (_, idx, _), reply in zip(groups, replies, strict=True):
        missing += [idx[j] for j, present in enumerate(reply[0]) if not present]
    return sorted(missing)


def forget_feature_state(client: RedisCluster, prefix: str) -> int:
    """Delete the state markers, then every card and terminal key of ``prefix`` on every master.

    Before a rebuild on a cluster. A card and its terminals live on different
    masters, so state lost on some of them cannot be replayed slot by slot: a
    replayed transaction whose card survived would not be counted again at a
    terminal that lost it, and one whose card was lost would be counted twice at
    a terminal that kept it. With the markers gone first, no scorer counts
    anything until the rebuild writes new ones. Returns the keys deleted.
    """
    client.delete(f"{prefix}:{{state}}")
    rounds = NodeRounds(client)
    groups, keys = _markers_by_node(rounds, prefix)
    forget = NodeScript("for i = 1, #KEYS do redis.call('UNLINK', KEYS[i]) end return #KEYS")
    rounds.run([(node, [forget.command([keys[i] for i in idx], [])]) for node, idx, _ in groups])
    deleted = 0
    masters = {h[0].name: h[0] for h in client.nodes_manager.slots_cache.values() if h}
    for node in masters.values():
        connection = node.redis_connection
        assert connection is not None
        for pattern in (f"{prefix}:{{c:*", f"{prefix}:{{t:*"):
            batch: list[bytes] = []
            for key in connection.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 1000:
                    deleted += _unlink(connection, batch)
                    batch = []
            deleted += _unlink(connection, batch)
    return deleted


def _unlink(connection: redis.Redis, keys: list[bytes]) -> int:
    pipe = connection.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(pipe.execute()) if keys else 0
