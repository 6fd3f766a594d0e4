"""``fraudstream model list|show|rollback|export|import`` against a real Redis registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from pydantic import SecretStr

from fraudstream.cli import main
from fraudstream.service.learner_lease import LearnerLease
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


def test_model_export_to_standard_output_and_to_a_missing_folder(
    make_settings: Callable[..., Settings],
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(bootstrap_servers="127.0.0.1:1")
    env = _env(settings)
    registry = ModelRegistry(redis_client, settings.redis_prefix, SecretStr("cli-test-key"))
    model = FraudModel("logreg", ["amount"])
    model.learn_one({"amount": 5.0}, False)
    version = registry.publish(model)
    runner = CliRunner()  # click >= 8.2: stdout and stderr apart, ``output`` both

    missing = tmp_path / "nodir" / "x.json"
    failed = runner.invoke(main, ["model", "export", str(version), str(missing)], env=env)
    assert failed.exit_code == 1
    assert failed.output.strip() == (
        f"Error: cannot write {missing}: the folder {missing.parent} does not exist; "
        "create it first"
    )

    monkeypatch.chdir(tmp_path)
    shown = runner.invoke(main, ["model", "export", str(version), "-"], env=env)
    assert shown.exit_code == 0, shown.output
    assert not (tmp_path / "-").exists()
    document = json.loads(shown.stdout)
    assert document["format"] and document["sig"] and document["payload"]
    assert f"version {version} written to standard output" in shown.stderr

    # What went to standard output imports like a file.
    exported = tmp_path / "v.model"
    exported.write_text(shown.stdout)
    imported = runner.invoke(main, ["model", "import", str(exported)], env=env)
    assert imported.exit_code == 0, imported.output
    assert registry.load().model.labels_learnt == 1


def test_model_import_reads_standard_input(
    make_settings: Callable[..., Settings], redis_client: redis.Redis
) -> None:
    settings = make_settings(bootstrap_servers="127.0.0.1:1")
    env = _env(settings)
    registry = ModelRegistry(redis_client, settings.redis_prefix, SecretStr("cli-test-key"))
    model = FraudModel("logreg", ["amount"])
    model.learn_one({"amount": 5.0}, False)
    version = registry.publish(model)
    runner = CliRunner()
    exported = runner.invoke(main, ["model", "export", str(version), "-"], env=env)
    assert exported.exit_code == 0, exported.output

    imported = runner.invoke(main, ["model", "import", "-"], env=env, input=exported.stdout)
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.strip() == f"standard input imported as version {version + 1}"
    assert registry.load().meta["imported_from"] == "<stdin>"

    garbage = runner.invoke(main, ["model", "import", "-"], env=env, input="not json\n")
    assert garbage.exit_code == 1
    assert garbage.output.strip() == (
        "Error: <stdin> is not a fraudstream model export (not JSON: Expecting value: line 1 "
        "column 1 (char 0)); `fraudstream model export` writes them"
    )
    empty = runner.invoke(main, ["model", "import", "-"], env=env, input="")
    assert empty.exit_code == 1
    assert empty.output.strip() == (
        "Error: <stdin> is empty: not a fraudstream model export (`fraudstream model export`)"
    )


def test_rollback_and_import_are_refused_while_a_learner_runs(
    make_settings: Callable[..., Settings], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A running learner's next version would supersede them: refused, unless asked for."""
    settings = make_settings(bootstrap_servers="127.0.0.1:1")
    env = _env(settings)
    registry = ModelRegistry(redis_client, settings.redis_prefix, SecretStr("cli-test-key"))
    first = registry.publish(FraudModel("logreg", ["amount"]))
    exported = tmp_path / "v.model"
    runner = CliRunner()
    assert (
        runner.invoke(main, ["model", "export", str(first), str(exported)], env=env).exit_code == 0
    )
    lease = LearnerLease(redis_client, settings.redis_prefix, "fraudstream on h pid 7 x", 30)
    assert lease.try_take() == lease.holder
    for command in (["rollback", str(first)], ["import", str(exported)]):
        refused = runner.invoke(main, ["model", *command], env=env)
        assert refused.exit_code == 1
        assert refused.output.startswith(
            "Error: a learner is running (fraudstream on h pid 7 x): it learns on from its own"
        )
        assert len(refused.output.strip().splitlines()) == 1
    assert registry.versions() == [first]
    for command in (["rollback", str(first)], ["import", str(exported)]):
        done = runner.invoke(main, ["model", *command, "--while-learning"], env=env)
        assert done.exit_code == 0, done.output
    lease.give_up()
    assert runner.invoke(main, ["model", "rollback", str(first)], env=env).exit_code == 0
    assert len(registry.versions()) == 4
