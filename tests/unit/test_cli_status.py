"""``fraudstream status --url``: what is no metrics endpoint is refused in one line, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fraudstream.cli import main


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1", "'http://[::1' is not a URL (Invalid IPv6 URL): give http://HOST:PORT"),
        ("[::1", "'http://[::1' is not a URL (Invalid IPv6 URL): give http://HOST:PORT"),
        (
            "ftp://host:9108",
            "'ftp://host:9108' is not an HTTP URL: the metrics endpoint is http://HOST:PORT "
            "(or https)",
        ),
        ("http://host:99999", "'http://host:99999' is not a URL (Port out of range 0-65535): "
         "give http://HOST:PORT"),
        ("http://host:port", "'http://host:port' is not a URL (Port could not be cast to "
         "integer value as 'port'): give http://HOST:PORT"),
        ("http://:9108", "'http://:9108' names no host: give http://HOST:PORT"),
        ("http://", "'http://' names no host: give http://HOST:PORT"),
    ],
)  # fmt: skip
def test_a_url_that_is_no_metrics_endpoint_is_refused(url: str, problem: str) -> None:
    result = CliRunner().invoke(main, ["status", "--url", url, "--interval", "0"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == f"Error: Invalid value for '--url': {problem}"


def test_a_host_and_port_alone_is_an_http_url() -> None:
    # Refused only for not answering (exit 1), so the value itself was taken.
    result = CliRunner().invoke(main, ["status", "--url", "127.0.0.1:1", "--interval", "0"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: nothing answers at http://127.0.0.1:1 (")
