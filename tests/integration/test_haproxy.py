"""deploy/haproxy/haproxy.cfg: valid for `haproxy -c`, and its frontends do what they say, checked
on a second HAProxy with the same file (other ports, a low rate limit) in front of the lab's API
replicas."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_config_is_valid_with_the_labs_values(lab: dict) -> None:  # type: ignore[type-arg]
    from labkit import api

    proc = subprocess.run(
        ["haproxy", "-c", "-f", str(api.HAPROXY_CFG)],
        env={**os.environ, **api.haproxy_env()},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Configuration file is valid" in proc.stdout


def test_a_missing_value_is_refused(lab: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from labkit import api

    env = {k: v for k, v in api.haproxy_env().items() if k != "VMCTL_TLS_PEM"}
    proc = subprocess.run(
        ["haproxy", "-c", "-f", str(api.HAPROXY_CFG)],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("VMCTL_")}, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0


@pytest.fixture
def second_haproxy(lab: dict, tmp_path: Path) -> Iterator[dict[str, str]]:  # type: ignore[type-arg]
    from labkit import api

    external, internal, monitoring = _free_port(), _free_port(), _free_port()
    env = {
        **api.haproxy_env(),
        "VMCTL_EXTERNAL_BIND": f"127.0.0.1:{external}",
        "VMCTL_INTERNAL_BIND": f"127.0.0.1:{internal}",
        "VMCTL_MONITORING_BIND": f"127.0.0.1:{monitoring}",
        "VMCTL_RATE_LIMIT": "5",
        "VMCTL_HAPROXY_RUN": str(tmp_path),
    }
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(api.HAPROXY_CFG)],
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{internal}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
                time.sleep(0.1)
        yield {
            "external": f"https://127.0.0.1:{external}",
            "internal": f"http://127.0.0.1:{internal}",
            "monitoring": f"http://127.0.0.1:{monitoring}",
            "ca": str(api.CA_PEM),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_frontends_route_limit_and_refuse(second_haproxy: dict[str, str]) -> None:
    ext, internal, ca = second_haproxy["external"], second_haproxy["internal"], second_haproxy["ca"]
    with httpx.Client(verify=ssl.create_default_context(cafile=ca)) as client:
        # external: TLS with the lab's certificate, phone-home refused, rate limit per source
        assert client.post(f"{ext}/api/v1/phone-home/x?secret=y").status_code == 404
        codes = [client.get(f"{ext}/healthz").status_code for _ in range(10)]
    assert codes[:4] == [200] * 4 and 429 in codes, codes
    # internal: only the phone-home and IP paths reach the API
    assert httpx.get(f"{internal}/api/v1/vm").status_code == 404
    assert httpx.get(f"{internal}/healthz").status_code == 404
    assert httpx.post(f"{internal}/api/v1/ip/", json={"name": "x"}).status_code == 401
    assert httpx.post(f"{internal}/api/v1/phone-home/no-such-vm?secret=y").status_code == 404


def test_metrics_only_through_the_monitoring_frontend(second_haproxy: dict[str, str]) -> None:
    ext, internal = second_haproxy["external"], second_haproxy["internal"]
    monitoring = second_haproxy["monitoring"]
    with httpx.Client(verify=ssl.create_default_context(cafile=second_haproxy["ca"])) as client:
        # external: never /metrics, nor anything under it
        for path in ("/metrics", "/metrics/cloud", "/metrics/"):
            assert client.get(f"{ext}{path}").status_code == 404, path
    assert httpx.get(f"{internal}/metrics").status_code == 404
    # monitoring: HAProxy's own exporter on /metrics
    own = httpx.get(f"{monitoring}/metrics")
    assert own.status_code == 200
    assert "haproxy_process_start_time_seconds" in own.text
    assert 'haproxy_backend_status{proxy="api"' in own.text
    # /metrics/cloud from one replica of the api backend: vmctl's figures, not HAProxy's
    cloud = httpx.get(f"{monitoring}/metrics/cloud")
    assert cloud.status_code == 200, cloud.text
    assert "vmctl_" in cloud.text and "haproxy_process" not in cloud.text
    # nothing else
    for path in ("/", "/healthz", "/api/v1/vm", "/metrics/other", "/metricsx"):
        assert httpx.get(f"{monitoring}{path}").status_code == 404, path


def test_the_labs_haproxy_serves_its_monitoring_frontend(lab: dict) -> None:  # type: ignore[type-arg]
    from labkit import api

    response = httpx.get(f"http://{api.monitoring_address()}/metrics")
    assert response.status_code == 200
    assert "haproxy_frontend_http_requests_total" in response.text
    context = ssl.create_default_context(cafile=str(api.CA_PEM))
    assert httpx.get(f"{api.external_url()}/metrics", verify=context).status_code == 404
