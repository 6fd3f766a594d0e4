"""The README's embedding example.

An application with its own package named `service` runs fraudstream.Application in its process, on
real Kafka and Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import settings_env

from fraudstream.service.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embedding"


def test_application_with_its_own_service_package_embeds_fraudstream(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    env = settings_env(settings)
    result = subprocess.run(
        [sys.executable, "app.py", "--check"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ready"] == "ready"
    assert Path(report["own_service"]).resolve() == (EXAMPLE / "service" / "__init__.py")
    assert Path(report["fraudstream_service"]).parent.parent.name != "embedding"
    assert report["application"] == "fraudstream.service.app"
    assert report["payment"] == "12.50 EUR" and report["own_name"] == "payments gateway"
