"""Model registry against a real Redis: signatures, versions, rollback, export/import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import redis
from pydantic import SecretStr

from fraudstream.evaluation.synthetic import synthetic_stream
from fraudstream.service.errors import ModelVersionError, SignatureError
from fraudstream.service.model import FraudModel
from fraudstream.service.registry import ModelRegistry

NAMES, X, Y = synthetic_stream(300, seed=2, fraud_rate=0.1)
KEY = SecretStr("test-key")


def _model(n: int) -> FraudModel:
    m = FraudModel("logreg", NAMES)
    for row, y in zip(X[:n], Y[:n], strict=True):
        m.learn_one(dict(zip(NAMES, row.tolist(), strict=True)), bool(y))
    return m


def test_publish_load_keep_last_k(redis_client: redis.Redis, redis_prefix: str) -> None:
    reg = ModelRegistry(redis_client, redis_prefix, KEY, keep=3)
    assert reg.latest_version() is None
    with pytest.raises(ModelVersionError, match="no model version"):
        reg.load()
    published = [
        reg.publish(_model(10 * (i + 1)), {"roc_auc": 0.9, "x": float("nan")}) for i in range(5)
    ]
    assert published == sorted(published) and len(set(published)) == 5
    assert reg.versions() == published[-3:]
    assert reg.latest_version() == published[-1]
    cp = reg.load()
    assert cp.version == published[-1] and cp.model.labels_learnt == 50
    assert cp.meta["feature_names"] == list(NAMES) and cp.meta["metrics"]["x"] is None
    np.testing.assert_array_equal(cp.model.proba_many(X), _model(50).proba_many(X))
    with pytest.raises(ModelVersionError, match="does not exist"):
        reg.load(published[0])
    assert [m["version"] for m in reg.list()] == published[-3:]


def test_tampered_or_other_key_refused(redis_client: redis.Redis, redis_prefix: str) -> None:
    reg = ModelRegistry(redis_client, redis_prefix, KEY)
    good = reg.publish(_model(20))
    bad = reg.publish(_model(30))
    vkey = f"{redis_prefix}:{{models}}:v:{bad}"
    # A client that does not decode replies: bytes, which redis-py types as bytes | str.
    payload = bytearray(cast(bytes, redis_client.hget(vkey, "payload")))
    payload[len(payload) // 2] ^= 0x01
    redis_client.hset(vkey, "payload", bytes(payload))
    with pytest.raises(SignatureError, match="signature"):
        reg.load(bad)
    assert reg.load(good).model.labels_learnt == 20  # the previous version stays loadable
    other = ModelRegistry(redis_client, redis_prefix, SecretStr("another-key"))
    with pytest.raises(SignatureError, match="signature"):
        other.load(good)
    redis_client.hdel(vkey, "sig")
    with pytest.raises(SignatureError, match="not signed"):
        reg.load(bad)
    # Metadata is signed too.
    gkey = f"{redis_prefix}:{{models}}:v:{good}"
    meta = json.loads(cast(bytes, redis_client.hget(gkey, "meta")))
    meta["labels_learnt"] = 1
    redis_client.hset(gkey, "meta", json.dumps(meta))
    with pytest.raises(SignatureError):
        reg.load(good)


def test_rollback_export_import(
    redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    reg = ModelRegistry(redis_client, redis_prefix, KEY)
    v1 = reg.publish(_model(20))
    v2 = reg.publish(_model(40))
    v3 = reg.rollback(v1)
    assert v3 > v2 and reg.latest_version() == v3
    cp = reg.load()
    assert cp.model.labels_learnt == 20 and cp.meta["rolled_back_from"] == v1
    path = tmp_path / "m.json"
    reg.export(v2, path)
    other = ModelRegistry(redis_client, redis_prefix + "b", KEY)
    v = other.import_(path)
    assert other.load(v).model.labels_learnt == 40
    assert other.load(v).meta["imported_version"] == v2
    # Import verifies with the importer's key, and refuses edits.
    with pytest.raises(SignatureError, match="signature"):
        ModelRegistry(redis_client, redis_prefix + "c", SecretStr("k2")).import_(path)
    doc = json.loads(path.read_text())
    doc["meta"] = doc["meta"].replace('"labels_learnt": 40', '"labels_learnt": 41')
    path.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="signature"):
        other.import_(path)
    path.write_text("not json")
    with pytest.raises(ModelVersionError, match="is not a fraudstream model export \\(not JSON"):
        other.import_(path)
    with pytest.raises(ModelVersionError, match="does not exist"):
        reg.rollback(999)
