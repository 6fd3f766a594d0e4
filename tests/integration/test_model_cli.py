"""``fraudstream model list|show|rollback|export|import`` against a real Redis registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import redis
from click.testing import CliRunner
from pydantic import SecretStr

from fraudstream.cli import main
from fraudstream.service.model import FraudModel
from fraudstream.service.registry import ModelRegistry
from fraudstream.service.settings import Settings


def _env(settings: Settings) -> dict[str, str]:
    return {
        "FRAUDSTREAM_REDIS_URL": settings.redis_url.get_secret_value(),
        "FRAUDSTREAM_REDIS_PREFIX": settings.redis_prefix,
        "FRAUDSTREAM_MODEL_SIGNING_KEY": "cli-test-key",
    }


def test_model_commands_round_trip(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = make_settings(bootstrap_servers="127.0.0.1:1")
    env = _env(settings)
    runner = CliRunner()
    empty = runner.invoke(main, ["model", "list"], env=env)
    assert empty.exit_code == 0 and "no model version published yet" in empty.output

    registry = ModelRegistry(redis_client, settings.redis_prefix, SecretStr("cli-test-key"))
    model = FraudModel("logreg", ["amount"])
    model.learn_one({"amount": 5.0}, False)
    first = registry.publish(model)
    model.learn_one({"amount": 900.0}, True)
    second = registry.publish(model)

    listed = runner.invoke(main, ["model", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert str(first) in listed.output and str(second) in listed.output
    shown = runner.invoke(main, ["model", "show", str(first)], env=env)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["labels_learnt"] == 1

    exported = tmp_path / "v1.model"
    assert (
        runner.invoke(main, ["model", "export", str(first), str(exported)], env=env).exit_code == 0
    )
    rolled = runner.invoke(main, ["model", "rollback", str(first)], env=env)
    assert rolled.exit_code == 0, rolled.output
    latest = registry.load()
    assert latest.version > second and latest.model.labels_learnt == 1

    imported = runner.invoke(main, ["model", "import", str(exported)], env=env)
    assert imported.exit_code == 0, imported.output
    assert registry.load().model.labels_learnt == 1

    # Clear one-line errors: an unknown version, a file signed with another key.
    missing = runner.invoke(main, ["model", "show", "999"], env=env)
    assert missing.exit_code == 1 and "999" in missing.output
    foreign = runner.invoke(
        main,
        ["model", "import", str(exported)],
        env={**env, "FRAUDSTREAM_MODEL_SIGNING_KEY": "another"},
    )
    assert foreign.exit_code == 1 and "signature" in foreign.output
    assert len(foreign.output.strip().splitlines()) == 1
