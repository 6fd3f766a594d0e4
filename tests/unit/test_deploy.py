"""Deployment files.

The compose file against the published Compose Specification schema, pinned images, persistence,
the image's user and health check, and the Prometheus/Grafana provisioning that the compose file
mounts.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
#: An exact release: x.y.z (optionally a variant suffix), never a floating major/minor.
EXACT_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+(-[\w.-]+)?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_compose_file_is_valid_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_file_loads_in_compose_v1_too(compose: dict[str, Any]) -> None:
    # docker-compose 1.x (Debian's 1.29) rejects these top-level keys.
    assert "name" not in compose and "version" not in compose


def test_every_image_is_pinned_to_an_exact_version(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image or "build" in service, name
        if image and not image.startswith("fraudstream:"):
            assert EXACT_TAG.match(image), f"{name}: image {image!r} is not an exact version"
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases and all(EXACT_TAG.match(b) for b in bases), bases


def test_kafka_and_redis_keep_their_data(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose["volumes"]
    kafka = services["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.split(":")[0] in volumes and v.split(":")[1] == log_dirs for v in kafka["volumes"])
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--save" not in command or command[command.index("--save") + 1] != ""
    assert any(v.split(":")[0] in volumes and v.split(":")[1] == "/data" for v in redis["volumes"])


def test_service_image_runs_unprivileged_with_a_readiness_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.+?)$", dockerfile, flags=re.M | re.S)
    assert healthcheck and "/readyz" in healthcheck.group(1)


def test_mounted_files_exist_and_prometheus_scrapes_the_service(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]  # fmt: skip
    env = compose["services"]["fraudstream"]["environment"]
    assert f"fraudstream:{env['FRAUDSTREAM_METRICS_PORT']}" in targets
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/fraudstream.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert uids == {datasource["uid"]}
    grafana = compose["services"]["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/fraudstream.yml").read_text()
    )["providers"][0]
    assert home.startswith(provider["options"]["path"])


def test_compose_uses_only_real_settings_and_the_simulator_skips_the_healthcheck(
    compose: dict[str, Any],
) -> None:
    from fraudstream.service.settings import Settings

    known = {f"FRAUDSTREAM_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        for variable in service.get("environment") or {}:
            if variable.startswith("FRAUDSTREAM_"):
                assert variable in known, f"{name}: unknown setting {variable}"
    assert compose["services"]["simulator"]["healthcheck"] == {"disable": True}
    for name in ("kafka", "redis"):
        assert "healthcheck" in compose["services"][name], name
    # the simulator's command is one the CLI accepts
    from click.testing import CliRunner

    from fraudstream.cli import main

    args = compose["services"]["simulator"]["command"]
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, shlex.join(args)
