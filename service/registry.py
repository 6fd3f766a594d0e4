"""Model registry in Redis: versioned, HMAC-signed model versions of :class:`FraudModel`.

A model version is a pickle, and unpickling runs code: so every version is
signed with HMAC-SHA256 under ``Settings.model_signing_key`` and the signature
is checked (``hmac.compare_digest``) *before* the bytes reach ``pickle``. An
unsigned, tampered or other-key version raises :class:`SignatureError`
and is never unpickled.

Keys (one hash tag, so every script runs on one Redis Cluster slot)::

    {prefix}:{models}:seq        INCR counter of version numbers (monotonic)
    {prefix}:{models}:latest     highest published version (what scorers poll)
    {prefix}:{models}:versions   sorted set of kept versions
    {prefix}:{models}:reserved   versions reserved by a learner, not yet published
    {prefix}:{models}:v:<n>      hash: payload, meta (JSON), sig
    {prefix}:{models}:learner    the learner lease (:mod:`~fraudstream.service.learner_lease`)

A learner *reserves* its next version number before learning (it tags its
label claims with it) and publishes under it. Versions reserved but never
published are those of a learner that crashed: the next learner treats their
label claims as stale (see :mod:`fraudstream.service.snapshots`).

Rollback and import publish an existing payload as a *new* latest version, so
scorers pick it up by polling. A running learner keeps learning from its own
model and its next version supersedes a rollback: stop the learner before
rolling back, it resumes from the rolled-back version when restarted (``fraudstream
model rollback|import`` refuse while a learner holds the lease).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import pickle
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import river
from pydantic import SecretStr

from fraudstream.service.errors import (
    ConfigurationError,
    LeaseLostError,
    ModelVersionError,
    SignatureError,
)
from fraudstream.service.learner_lease import lease_key
from fraudstream.service.model import FraudModel

#: Signed into every version; a stable constant (changing it refuses every stored version).
_DOMAIN = b"fraudstream-checkpoint-v1\x00"
_EXPORT_FORMAT = "fraudstream-model-v1"

# KEYS: versions, latest, reserved, version hash, learner lease. ARGV: version,
# payload, meta, sig, keep, version-key prefix, lease holder ('' for none).
# Unless a lease holder is given and no longer holds the lease: writes, advances
# latest (never backwards) and trims to the newest `keep` versions, atomically.
_PUBLISH_LUA = """
if ARGV[7] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[7] then
  return redis.error_reply('FRAUDSTREAM_LEASE_LOST')
end
redis.call('HSET', KEYS[4], 'payload', ARGV[2], 'meta', ARGV[3], 'sig', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[2], ARGV[1]) end
local keep = tonumber(ARGV[5])
local n = redis.call('ZCARD', KEYS[1])
if n > keep then
  local old = redis.call('ZRANGE', KEYS[1], 0, n - keep - 1)
  for _, v in ipairs(old) do
    redis.call('DEL', ARGV[6] .. v)
    redis.call('ZREM', KEYS[1], v)
  end
end
return 1
"""


def sign(key: bytes, meta: bytes, payload: bytes) -> str:
    """HMAC-SHA256 of a model version (metadata and payload), hex.

    >>> sign(b"k", b"{}", b"x") == sign(b"k", b"{}", b"x") != sign(b"k2", b"{}", b"x")
    True
    """
    mac = hmac.new(key, _DOMAIN, hashlib.sha256)
    # Length prefix: moving bytes between meta and payload changes the MAC.
    mac.update(len(meta).to_bytes(8, "big"))
    mac.update(meta)
    mac.update(payload)
    return mac.hexdigest()


def verify(key: bytes, meta: bytes, payload: bytes, sig: str | bytes | None) -> None:
    """Raise :class:`SignatureError` unless ``sig`` signs ``meta`` and ``payload`` under ``key``.

    >>> verify(b"k", b"{}", b"x", sign(b"k", b"{}", b"x"))
    >>> verify(b"other", b"{}", b"x", sign(b"k", b"{}", b"x"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fraudstream.service.errors.SignatureError: model version signature does not match ...
    """
    if not sig:
        raise SignatureError("model version is not signed")
    if isinstance(sig, bytes):
        sig = sig.decode("ascii", "replace")
    if not hmac.compare_digest(sign(key, meta, payload), sig):
        raise SignatureError(
            "model version signature does not match (tampered or signed with another key)"
        )


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A verified, loaded model version."""

    version: int
    meta: dict[str, Any]
    model: FraudModel


class ModelRegistry:
    """Signed model versions in Redis.

    Parameters
    ----------
    client
        A ``redis.Redis`` client (bytes responses).
    prefix
        Key prefix (``Settings.redis_prefix``).
    signing_key
        ``Settings.model_signing_key``.
    keep
        Versions kept (``Settings.model_versions_kept``).
    """

    def __init__(self, client: Any, prefix: str, signing_key: SecretStr, keep: int = 10) -> None:
        if keep < 1:
            raise ValueError("keep must be ≥ 1")
        self.client = client
        self.prefix = prefix
        self.keep = keep
        self._key = signing_key.get_secret_value().encode()
        if not self._key:
            raise ConfigurationError(
                "model signing key is empty: set FRAUDSTREAM_MODEL_SIGNING_KEY"
            )
        self._publish = client.register_script(_PUBLISH_LUA)

    # -- keys -----------------------------------------------------------------

    def _k(self, name: str) -> str:
        return f"{self.prefix}:{{models}}:{name}"

    def _vkey(self, version: int) -> str:
        return self._k(f"v:{version}")

    # -- reading --------------------------------------------------------------

    def latest_version(self) -> int | None:
        """Highest published version, ``None`` before the first (one GET: cheap to poll)."""
        raw = self.client.get(self._k("latest"))
        return int(raw) if raw is not None else None

    def versions(self) -> list[int]:
        """Kept versions, ascending."""
        return [int(v) for v in self.client.zrange(self._k("versions"), 0, -1)]

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every kept version, ascending (signatures are not checked here)."""
        pipe = self.client.pipeline(transaction=False)
        versions = self.versions()
        for v in versions:
            pipe.hget(self._vkey(v), "meta")
        out = []
        for raw in pipe.execute():
            if raw is not None:
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    continue
        return out

    def _raw(self, version: int) -> tuple[bytes, bytes]:
        """Verified (meta, payload) of a version."""
        raw = self.client.hmget(self._vkey(version), "meta", "payload", "sig")
        meta, payload, sig = raw
        if meta is None or payload is None:
            raise ModelVersionError(f"model version {version} does not exist")
        verify(self._key, meta, payload, sig)
        return meta, payload

    def load(self, version: int | None = None) -> ModelVersion:
        """Verify, then unpickle a version (the latest by default)."""
        if version is None:
            version = self.latest_version()
            if version is None:
                raise ModelVersionError("no model version has been published yet")
        meta_raw, payload = self._raw(version)
        meta = json.loads(meta_raw)
        if meta.get("version") != version:
            # A valid version copied under another version's key.
            raise SignatureError(f"model version stored as {version} says {meta.get('version')}")
        return ModelVersion(version, meta, self._unpickle(payload))

    @staticmethod
    def _unpickle(payload: bytes) -> FraudModel:
        # Only reached with a verified signature.
        model = pickle.loads(payload)
        if not isinstance(model, FraudModel):
            raise ModelVersionError(
                f"model version holds a {type(model).__name__}, not a FraudModel"
            )
        return model

    # -- writing --------------------------------------------------------------

    def reserve_version(self) -> int:
        """Take the next version number for a learner's coming version."""
        version = int(self.client.incr(self._k("seq")))
        self.client.sadd(self._k("reserved"), version)
        return version

    def abandoned_versions(self) -> builtins.list[int]:
        """Reserved but never published versions (meaningful to the learner lease's holder only).

        Read by a learner once it holds the lease: the reservations of any other
        are then a dead or stopped learner's.
        """
        return sorted(int(v) for v in self.client.smembers(self._k("reserved")))

    def forget_abandoned(self, versions: builtins.list[int]) -> None:
        """Drop abandoned reservations once no claim can hold them (after the snapshot TTL)."""
        if versions:
            self.client.srem(self._k("reserved"), *versions)

    def publish(
        self,
        model: FraudModel,
        metrics: Mapping[str, Any] | None = None,
        version: int | None = None,
        extra: Mapping[str, Any] | None = None,
        lease: str | None = None,
    ) -> int:
        """Sign and store ``model`` as a new version; returns the version.

        ``version`` is a number from :meth:`reserve_version`; a new one is taken if omitted.
        ``lease``: the learner's name, published only while it holds the learner lease
        (:mod:`~fraudstream.service.learner_lease`).

        Raises
        ------
        LeaseLostError
            ``lease`` no longer holds the lease; nothing was written.
        """
        payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        if version is None:
            version = int(self.client.incr(self._k("seq")))
        meta = {
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "model": model.name,
            "feature_names": list(model.feature_names),
            "labels_learnt": model.labels_learnt,
            "frauds_learnt": model.frauds_learnt,
            "metrics": _json_safe(dict(metrics or {})),
            "river_version": river.__version__,  # type: ignore[attr-defined]  # not in __all__
            "python_version": platform.python_version(),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            **dict(extra or {}),
        }
        return self._store(version, json.dumps(meta, sort_keys=True).encode(), payload, lease)

    def _store(self, version: int, meta: bytes, payload: bytes, lease: str | None = None) -> int:
        keys = [self._k("versions"), self._k("latest"), self._k("reserved"), self._vkey(version)]
        try:
            self._publish(
                keys=[*keys, lease_key(self.prefix)],
                args=[
                    version,
                    payload,
                    meta,
                    sign(self._key, meta, payload),
                    self.keep,
                    self._k("v:"),
                    lease or "",
                ],
            )
        except redis.ResponseError as exc:
            if "FRAUDSTREAM_LEASE_LOST" not in str(exc):
                raise
            raise LeaseLostError(
                f"model version {version} not published: the learner lease is no longer "
                f"held by {lease!r} (another learner took over)"
            ) from None
        return version

    def _republish(self, meta_raw: bytes, payload: bytes, **extra: Any) -> int:
        """Publish a verified payload under a new version with updated metadata."""
        version = int(self.client.incr(self._k("seq")))
        meta = json.loads(meta_raw)
        meta.update(extra, version=version, created_at=datetime.now(UTC).isoformat())
        return self._store(version, json.dumps(meta, sort_keys=True).encode(), payload)

    def rollback(self, version: int) -> int:
        """Publish the payload of ``version`` again as the new latest version."""
        meta, payload = self._raw(version)
        self._unpickle(payload)  # refuse to publish something that does not load
        return self._republish(meta, payload, rolled_back_from=version)

    def exported(self, version: int) -> str:
        """A verified version as the text of an export file (JSON with the signature)."""
        meta, payload = self._raw(version)
        doc = {
            "format": _EXPORT_FORMAT,
            "meta": meta.decode(),
            "payload": base64.b64encode(payload).decode(),
            "sig": sign(self._key, meta, payload),
        }
        return json.dumps(doc)

    def export(self, version: int, path: str | Path) -> None:
        """Write a verified version to a file (JSON with the signature, see :meth:`exported`).

        Raises
        ------
        ModelVersionError
            ``version`` is missing or fails its signature check.
        OSError
            The file cannot be written (its folder is missing, no permission...).
        """
        Path(path).write_text(self.exported(version))

    def import_(self, path: str | Path) -> int:
        """Verify an exported file with this registry's key and publish it as a new version."""
        try:
            text = Path(path).read_text()
        except (OSError, ValueError) as exc:
            raise ModelVersionError(f"cannot read model export {path}: {exc}") from exc
        return self.import_text(text, str(path))

    def import_text(self, text: str, source: str) -> int:
        """Verify an export's text (read from ``source``) and publish it as a new version."""
        if not text.strip():
            raise ModelVersionError(
                f"{source} is empty: not a fraudstream model export (`fraudstream model export`)"
            )
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ModelVersionError(
                f"{source} is not a fraudstream model export (not JSON: {exc}); "
                "`fraudstream model export` writes them"
            ) from exc
        try:
            if doc.get("format") != _EXPORT_FORMAT:
                raise ModelVersionError(f"{source} is not a fraudstream model export")
            meta = doc["meta"].encode()
            payload = base64.b64decode(doc["payload"], validate=True)
            sig = doc.get("sig")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelVersionError(f"cannot read model export {source}: {exc}") from exc
        verify(self._key, meta, payload, sig)
        self._unpickle(payload)
        original = json.loads(meta).get("version")
        return self._republish(meta, payload, imported_from=source, imported_version=original)


def _json_safe(value: Any) -> Any:
    """NaN/inf become None so the metadata is strict JSON."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
