"""Moving a hash slot of a real Redis Cluster step by step, as ``redis-cli --cluster reshard`` does.

``redis-cli --cluster reshard`` moves a slot in these steps, one command at a
time: ``CLUSTER SETSLOT <slot> IMPORTING <source>`` on the target, ``CLUSTER
SETSLOT <slot> MIGRATING <target>`` on the source, ``MIGRATE ... KEYS`` of a few
keys at a time, then ``CLUSTER SETSLOT <slot> NODE <target>`` on the target, the
source and the other masters. :class:`SlotMove` runs them one at a time so that a
test can run work between any two of them: a slot migrating with some of its keys
moved and some not, every key moved but the slot not yet given away, the slot
given away while the clients' slot maps still name the source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis
import redis.cluster

# redis-py leaves execute_command and the cluster client's methods unannotated: their calls
# carry a narrow `type: ignore[no-untyped-call]`.


def _connect(address: str) -> redis.Redis:
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=10)


def slot_owners(any_node: str) -> dict[int, str]:
    """``slot -> host:port`` of its master, as ``CLUSTER SLOTS`` of ``any_node`` says."""
    client = _connect(any_node)
    try:
        ranges = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    owners: dict[int, str] = {}
    for first, last, master, *_ in ranges:
        address = f"{master[0].decode()}:{master[1]}"
        owners.update(dict.fromkeys(range(first, last + 1), address))
    return owners


@dataclass
class SlotMove:
    """One slot moving from its master ``source`` to ``target``, a step at a time.

    Parameters
    ----------
    slot
        The hash slot.
    source, target
        ``host:port`` of the masters it moves from and to.
    masters
        ``host:port`` of every master (each is told the new owner at the end).
    """

    slot: int
    source: str
    target: str
    masters: Sequence[str]
    _clients: dict[str, redis.Redis] = field(default_factory=dict, init=False, repr=False)

    def _client(self, address: str) -> redis.Redis:
        if address not in self._clients:
            self._clients[address] = _connect(address)
        return self._clients[address]

    def _node_id(self, address: str) -> str:
        node_id: bytes = self._client(address).execute_command("CLUSTER MYID")  # type: ignore[no-untyped-call]
        return node_id.decode()

    def begin(self) -> None:
        """The slot is importing on the target, migrating on the source; no key moved yet."""
        self._client(self.target).execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER SETSLOT", self.slot, "IMPORTING", self._node_id(self.source)
        )
        self._client(self.source).execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER SETSLOT", self.slot, "MIGRATING", self._node_id(self.target)
        )

    def keys_left(self) -> list[str]:
        """The keys of the slot still on the source."""
        source = self._client(self.source)
        count = source.execute_command("CLUSTER COUNTKEYSINSLOT", self.slot)  # type: ignore[no-untyped-call]
        if not count:
            return []
        keys = source.execute_command("CLUSTER GETKEYSINSLOT", self.slot, count)  # type: ignore[no-untyped-call]
        return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]

    def migrate(self, keys: Sequence[str]) -> None:
        """``MIGRATE`` these keys of the slot from the source to the target, in one command."""
        if not keys:
            return
        host, port = self.target.rsplit(":", 1)
        self._client(self.source).execute_command(  # type: ignore[no-untyped-call]
            "MIGRATE", host, int(port), "", 0, 10_000, "KEYS", *keys
        )

    def assign_on_target(self) -> None:
        """``SETSLOT NODE`` on the target only: it serves the slot; the source still migrates it."""
        self._client(self.target).execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER SETSLOT", self.slot, "NODE", self._node_id(self.target)
        )

    def assign_everywhere(self) -> None:
        """``SETSLOT NODE`` on the source and every other master: the slot has moved."""
        target_id = self._node_id(self.target)
        for address in [self.source, *(m for m in self.masters if m != self.source)]:
            self._client(address).execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER SETSLOT", self.slot, "NODE", target_id
            )

    def finish(self) -> None:
        """Whatever is left of the move: every key, then the new owner everywhere."""
        self.migrate(self.keys_left())
        self.assign_on_target()
        self.assign_everywhere()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


#: A step of a plan: what the cluster looks like after it, and the step itself.
Step = tuple[str, Callable[[], None]]


def move_steps(
    move: SlotMove,
    *,
    first: Sequence[str] = (),
    last: Sequence[str] = (),
    assign_at_once: bool = False,
) -> list[Step]:
    """The steps of ``move``, each a state the slot is left in for the work that follows.

    The keys ``first`` move before the slot's other keys (e.g. its state marker,
    refusing every script that touches the slot), those of ``last`` after them
    (e.g. a card key and the marker: the card's scripts still run while the
    slot's other keys are gone), the others two at a time. ``assign_at_once``:
    the target and every other master learn the new owner in one step, so a
    client that looked the slot up during the migration has a stale map.
    """
    slot = move.slot
    held = {*first, *last}

    def others() -> list[str]:
        return [k for k in move.keys_left() if k not in held]

    steps: list[Step] = [(f"slot {slot} migrating, no key moved", move.begin)]
    if first:
        steps.append(
            (f"slot {slot} migrating, {len(first)} key(s) moved first", lambda: move.migrate(first))
        )
    steps += [
        (f"slot {slot} migrating, some keys moved", lambda: move.migrate(others()[:2])),
        (f"slot {slot} migrating, more keys moved", lambda: move.migrate(others()[:2])),
        (f"slot {slot} migrating, its other keys moved", lambda: move.migrate(others())),
    ]
    if last:
        steps.append((f"slot {slot} migrating, every key moved", lambda: move.migrate(last)))
    if assign_at_once:
        steps.append((f"slot {slot} moved, slot maps stale", move.finish))
    else:
        steps += [
            (f"slot {slot} assigned on the target only", move.assign_on_target),
            (f"slot {slot} moved", move.assign_everywhere),
        ]
    return steps
