"""The compose rig (compose/): its files are valid, and its check works against real engines.

Bringing the whole rig up needs images (docker:dind ...) and minutes; that is done by
hand (compose/README.md). Here, quickly: ``docker-compose config`` accepts the file and
its overrides, and ``check.py`` itself runs against this tier's own cluster of engines.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.engines import Host, run
from tests.servers import require_binary

pytestmark = pytest.mark.docker

RIG = Path(__file__).resolve().parents[2] / "compose"
SERVICES = {"redis", "engine1", "driver1", "engine2", "driver2", "check"}


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` on the rig's files, with no engine needed (``config`` reads files only)."""
    binary = require_binary("docker-compose")
    return run([binary, *args], check=False, cwd=RIG.parent)


def test_compose_file_is_valid() -> None:
    result = compose("-f", "compose/docker-compose.yml", "config")
    assert result.returncode == 0, result.stderr
    assert "privileged: true" in result.stdout
    assert "image: redis:7" in result.stdout and "DIND_IMAGE: docker:dind" in result.stdout
    assert "PYTHON_IMAGE: python:3.11-slim" in result.stdout

    services = compose("-f", "compose/docker-compose.yml", "config", "--services")
    assert set(services.stdout.split()) == SERVICES, services.stdout + services.stderr
    volumes = compose("-f", "compose/docker-compose.yml", "config", "--volumes")
    assert set(volumes.stdout.split()) == {"plugins1", "plugins2", "api1", "api2"}


def test_offline_settings_and_unprivileged_override_apply() -> None:
    result = compose(
        "--env-file",
        "compose/local.env",
        "-f",
        "compose/docker-compose.yml",
        "-f",
        "compose/unprivileged.yml",
        "config",
    )
    assert result.returncode == 0, result.stderr
    assert "privileged: true" not in result.stdout
    assert result.stdout.count("privileged: false") == 2
    assert "SYS_RESOURCE" not in result.stdout and result.stdout.count("- SYS_ADMIN") == 2
    # Every base image comes from the local base: redis directly, the built ones by build arg
    # (two engines; two drivers and the check, which share the driver image).
    assert "image: local/mini-rig-base:1" in result.stdout
    assert len(re.findall(r"DIND_IMAGE: local/mini-rig-base:1", result.stdout)) == 2
    assert len(re.findall(r"PYTHON_IMAGE: local/mini-rig-base:1", result.stdout)) == 3


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
