"""The compose rig (compose/): its files are valid under compose v1 and v2, and its check works.

``docker-compose config`` of both compose versions (Debian bookworm's 1.29 and the pinned
2.40.3 that ``scripts/fetch-engine.py`` fetches) accepts the file and its overrides; the
output is compared as parsed YAML, because v2 keeps the top-level ``x-*`` blocks and leaves
out defaults such as ``privileged: false``. ``check.py`` itself runs against this tier's
cluster of engines; the whole rig is brought up for real in ``test_compose_rig.py``.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.engines import EngineUnavailable, Host, fetch_release, run
from tests.servers import require_binary, unavailable

pytestmark = pytest.mark.docker

RIG = Path(__file__).resolve().parents[2] / "compose"
SERVICES = {"redis", "engine1", "driver1", "engine2", "driver2", "check"}
COMPOSE_VERSIONS = ("1.29", "2.40.3")
"""Debian bookworm's docker-compose (v1, python) and forky's (v2)."""


def compose_binary(version: str) -> str:
    """The ``docker-compose`` of ``version``: bookworm's v1 from PATH, v2 fetched (cached)."""
    if version.startswith("1."):
        return require_binary("docker-compose")
    try:
        return str(fetch_release(f"compose-{version}").bin_dir / "docker-compose")
    except EngineUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module", params=COMPOSE_VERSIONS)
def compose_version(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(version, binary) of each compose version; the binary really is that version."""
    binary = compose_binary(request.param)
    shown = run([binary, "version"], check=True).stdout
    assert request.param in shown, f"{binary} is not docker-compose {request.param}: {shown}"
    return request.param, binary


def compose(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` on the rig's files, with no engine needed (``config`` reads files only)."""
    return run([binary, *args], check=False, cwd=RIG.parent)


def config(binary: str, *args: str) -> dict[str, Any]:
    """``docker-compose ... config``, parsed; fails the test when compose refuses the files."""
    result = compose(binary, *args, "config")
    assert result.returncode == 0, result.stderr
    parsed = yaml.safe_load(result.stdout)
    assert isinstance(parsed, dict), result.stdout
    return parsed


def build_args(service: dict[str, Any]) -> dict[str, str]:
    """A service's build args (compose prints them as a mapping)."""
    args = service.get("build", {}).get("args", {})
    assert isinstance(args, dict), args
    return args


def test_compose_file_is_valid(compose_version: tuple[str, str]) -> None:
    _, binary = compose_version
    parsed = config(binary, "-f", "compose/docker-compose.yml")
    services = parsed["services"]
    assert set(services) == SERVICES
    assert services["engine1"]["privileged"] is True and services["engine2"]["privileged"] is True
    assert not [name for name in SERVICES - {"engine1", "engine2"} if services[name].get("privileged")]
    assert services["redis"]["image"] == "redis:7"
    assert build_args(services["engine1"])["DIND_IMAGE"] == "docker:dind"
    assert build_args(services["check"])["PYTHON_IMAGE"] == "python:3.11-slim"
    assert set(parsed["volumes"]) == {"plugins1", "plugins2", "api1", "api2"}

    listed = compose(binary, "-f", "compose/docker-compose.yml", "config", "--services")
    assert set(listed.stdout.split()) == SERVICES, listed.stdout + listed.stderr


def test_offline_settings_and_unprivileged_override_apply(compose_version: tuple[str, str]) -> None:
    _, binary = compose_version
    parsed = config(
        binary, "--env-file", "compose/local.env", "-f", "compose/docker-compose.yml", "-f", "compose/unprivileged.yml"
    )
    services = parsed["services"]
    # v1 prints `privileged: false`, v2 leaves the default out: neither may say true.
    assert not [name for name, service in services.items() if service.get("privileged")], services
    for name in ("engine1", "engine2"):
        caps = services[name]["cap_add"]
        assert "SYS_ADMIN" in caps and "NET_ADMIN" in caps and "SYS_RESOURCE" not in caps, (name, caps)
    assert not [name for name in SERVICES - {"engine1", "engine2"} if services[name].get("cap_add")]
    # Every base image comes from the local base: redis directly, the built ones by build arg
    # (two engines; two drivers and the check, which share the driver image).
    local = "local/mini-rig-base:1"
    assert services["redis"]["image"] == local
    assert {name for name in SERVICES if build_args(services[name]).get("DIND_IMAGE") == local} == {
        "engine1",
        "engine2",
    }
    assert {name for name in SERVICES if build_args(services[name]).get("PYTHON_IMAGE") == local} == {
        "driver1",
        "driver2",
        "check",
    }
    assert build_args(services["check"])["PIP_ARGS"] == "--no-index --find-links /src/compose/.wheels"


def test_check_script_passes_on_real_engines(cluster: list[Host], parent: ipaddress.IPv4Network) -> None:
    sockets = [str(host.engine.socket) for host in cluster]
    driver = cluster[0].driver.name
    result = run(
        [sys.executable, str(RIG / "check.py"), f"--pool={parent}", f"--driver={driver}", *sockets],
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: 18 networks on {len(cluster)} engines, no two overlap" in result.stdout, result.stdout
    assert "is refused" in result.stdout and "overlaps" in result.stdout
    # It removed what it made.
    for host in cluster:
        names = host.engine.docker("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
        assert not [name for name in names if name.startswith("rig-")], names
