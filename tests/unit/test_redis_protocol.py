"""Commands packed by :func:`~fraudstream.service.redis_client.pack_command`.

The scorer sends its scripts packed by fraudstream rather than by redis-py's
``send_command``: the bytes on the wire, and the errors of arguments Redis
cannot take, must be redis-py's own.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.connection import Connection
from redis.exceptions import DataError

from fraudstream.service import redis_client
from fraudstream.service.redis_client import pack_command

SHA = "0123456789abcdef0123456789abcdef01234567"

#: Arguments of every kind a caller might pass, edges included.
ARGUMENTS: list[Any] = [
    "",
    "k:{x:tx-1}",
    "k:{c:carte-é-日本-🙂}",
    "with spaces and \r\n inside",
    b"",
    bytes(range(256)),
    b"\r\n$3\r\n",
    0,
    -1,
    2**63 - 1,
    -(2**63),
    10**30,
    0.1,
    -0.0,
    1e300,
    float("inf"),
    float("nan"),
    bytearray(b"ba"),
    memoryview(b"mv"),
]

#: Arguments redis-py refuses (``DataError``).
REFUSED: list[Any] = [None, True, [1], {"a": 1}, object()]


def _connection() -> Connection:
    return Connection()  # type: ignore[no-untyped-call]


def _redis_py_packs(command: tuple[Any, ...]) -> object:
    return _connection().pack_command(*command)  # type: ignore[no-untyped-call]


def _packed_or_error(pack: Any, command: tuple[Any, ...]) -> object:
    try:
        return pack(command)
    except Exception as exc:  # compared by class and message
        return (type(exc), str(exc))


@pytest.mark.parametrize("hiredis_packs", [True, False])
@pytest.mark.parametrize("argument", ARGUMENTS + REFUSED, ids=repr)
def test_a_command_is_packed_as_redis_py_packs_it(
    argument: Any, hiredis_packs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_client, "_HIREDIS_PACKS", hiredis_packs)
    command = ("EVALSHA", SHA, 2, "k:{c:1}", argument, 7, argument)
    ours = _packed_or_error(lambda c: pack_command(_connection(), c), command)
    theirs = _packed_or_error(_redis_py_packs, command)
    assert ours == theirs


def test_every_argument_at_once_and_the_refused_ones_raise_data_error() -> None:
    command = ("EVALSHA", SHA, len(ARGUMENTS), *ARGUMENTS, *ARGUMENTS)
    assert pack_command(_connection(), command) == _redis_py_packs(command)
    for argument in REFUSED:
        with pytest.raises(DataError):
            pack_command(_connection(), ("EVALSHA", SHA, 0, argument))
