"""The learner's lease: one learner learns a model, any other stands by.

A learner keeps its model in memory between versions, so two learners of one
model cannot share its labels: each would publish versions holding its own
share of them (the labels' partitions split between the two), and a learner
starting while another runs would take the other's unpublished label claims
for those of a learner that died (see :mod:`fraudstream.service.registry`) and
learn them again. Two learners run at once more often than one plans: a
deployment with two replicas for availability, a rolling update that starts
the new learner before the old one stops, a learner paused long enough to be
thought dead.

So a learner first takes the lease, a Redis key holding its name with a time to
live, before it joins the labels' consumer group; a learner that finds it held
stands by, outside the group, and looks again every second. The holder renews
it at every turn of its loop. When the holder stops it gives the lease up (a
standby takes over within a second); when it dies the lease expires after
``FRAUDSTREAM_LEARNER_LEASE_S``, or at once for a learner started on the host
where the holder ran (a restart: :func:`dead_here`). The new holder then resumes from the newest
published version and takes over the claims of the versions the old one left
unpublished, as after a crash.

A holder that was paused past the lease (a stall, a long outage) and finds it
taken stops at its next turn (:class:`LeaseLostError`), and whatever it does
before that cannot reach a model: every version is published with the holder's
name, in the same script that checks the lease is still its own
(:meth:`~fraudstream.service.registry.ModelRegistry.publish`).

Key: ``{prefix}:{models}:learner``, in the registry's hash tag so that one
script reads both on a Redis Cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from fraudstream.service.errors import LeaseLostError

log = logging.getLogger(__name__)

# KEYS[1] = lease; ARGV[1] = holder, ARGV[2] = time to live (ms), ARGV[3] = a
# holder known to be dead ('' for none). Takes the lease when free or held by
# that dead holder, renews it when the holder's; returns the holder after the call.
_TAKE_LUA = """
local held = redis.call('GET', KEYS[1])
if not held or held == ARGV[1] or (ARGV[3] ~= '' and held == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return held
"""

# KEYS[1] = lease; ARGV[1] = holder. Gives the lease up if the holder's.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(prefix: str) -> str:
    """The lease's key, in the model registry's hash tag.

    >>> lease_key("fraudstream")
    'fraudstream:{models}:learner'
    """
    return f"{prefix}:{{models}}:learner"


def lease_holder(client: Any, prefix: str) -> str | None:
    """The name of the learner holding the lease, ``None`` when none does."""
    raw = client.get(lease_key(prefix))
    return None if raw is None else _text(raw)


def _text(raw: bytes | str) -> str:
    """A reply as text (clients that do not decode replies give bytes).

    >>> _text(b"fraudstream on h pid 7 x"), _text("as is")
    ('fraudstream on h pid 7 x', 'as is')
    """
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def holder_name(client_id: str) -> str:
    """A name for this learner, unique among learners: host, process and a random part.

    >>> name = holder_name("fraudstream")
    >>> name.startswith("fraudstream on ") and f" pid {os.getpid()} " in name
    True
    """
    name = f"{client_id} on {socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
    _NAMED_HERE.add(name)
    return name


#: The names :func:`holder_name` gave in this process (several applications may
#: run in one process: tests, an embedding).
_NAMED_HERE: set[str] = set()


def dead_here(holder: str, me: str) -> bool:
    """Whether ``holder`` names a learner process of this host that no longer runs.

    Such a learner was killed (or crashed) and its lease would only delay the
    one that replaces it, often the same container restarted (same host name,
    maybe the same pid: a name with this process's pid that this process did
    not give is a past incarnation's).
    Wrong only for two hosts with one name: the live holder then loses its lease
    and stops at its next renewal (as when paused), nothing worse.

    >>> me = holder_name("fs")
    >>> dead_here(me.rsplit(" ", 1)[0] + " 0badc0de", me)  # this process, a past incarnation
    True
    >>> dead_here(me, me), dead_here("fs on elsewhere pid 1 0badc0de", me)
    (False, False)
    >>> dead_here(holder_name("another application of this process"), me)
    False
    >>> dead_here("written by hand", me)
    False
    """
    try:
        rest, _, pid_text, _ = holder.rsplit(" ", 3)
        _, host = rest.split(" on ", 1)
        pid = int(pid_text)
    except ValueError:
        return False
    if holder == me or host != socket.gethostname() or pid <= 0:
        return False
    if pid == os.getpid():
        return holder not in _NAMED_HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it runs
        return False
    return False


class LearnerLease:
    """The lease of one learner (``holder``) in Redis.

    Parameters
    ----------
    client
        A Redis or Redis Cluster client.
    prefix
        Key prefix (``Settings.redis_prefix``).
    holder
        This learner's name (:func:`holder_name`).
    ttl_s
        How long the lease outlives its last renewal.
    clock
        Monotonic seconds; injectable for tests.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        holder: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.key = lease_key(prefix)
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.clock = clock
        self._take = client.register_script(_TAKE_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._renewed_at: float | None = None

    def try_take(self) -> str:
        """Take the lease if free (or renew it if held): the holder after the call."""
        now = self.clock()
        held = self._call_take("")
        if held != self.holder and dead_here(held, self.holder):
            log.info("learner: the lease holder %r is no longer running: taking over", held)
            held = self._call_take(held)
        if held == self.holder:
            self._renewed_at = now
        return held

    def _call_take(self, dead: str) -> str:
        return _text(self._take(keys=[self.key], args=[self.holder, self.ttl_ms, dead]))

    @property
    def held(self) -> bool:
        """Whether this learner took the lease (and has not given it up)."""
        return self._renewed_at is not None

    def keep(self) -> None:
        """Renew the lease when a sixth of its time has passed since the last renewal.

        Raises
        ------
        LeaseLostError
            Another learner took it meanwhile: this one was thought dead.
        """
        if self._renewed_at is not None and self.clock() - self._renewed_at < self.ttl_ms / 6000:
            return
        held = self.try_take()
        if held != self.holder:
            self._renewed_at = None
            raise LeaseLostError(
                f"the learner lease was taken by {held!r} while this learner held it (paused "
                f"longer than FRAUDSTREAM_LEARNER_LEASE_S={self.ttl_ms / 1000:g}): stopping; "
                "the labels learnt since its last version are learnt by the new holder"
            )

    def give_up(self) -> None:
        """Release the lease if this learner holds it, so that a standby takes over at once."""
        if self._renewed_at is not None:
            self._renewed_at = None
            self._release(keys=[self.key], args=[self.holder])
