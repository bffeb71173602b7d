"""The compose rig (compose/) brought up for real with docker-compose v2, offline, on an engine of the tier.

On a dockerd of ours (the newest engine of ``MINI_IPAM_ENGINES``, overlay2 where the kernel
has it, in namespaces of its own), ``compose/local-base.sh`` builds and imports the local
base image (Debian bookworm with dockerd, redis-server and python3; the root file system is
cached in ``/var/tmp/mini-rig-base``), and ``docker-compose`` 2.40.3 runs
``up --build --exit-code-from check``: Redis, two docker-in-docker engines each with its own
driver on that Redis, and ``check.py``, whose verdict is the test's. The engines get
``unprivileged.yml`` when this machine's capability bounding set lacks CAP_SYS_RESOURCE (a
privileged container cannot start there; see compose/README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.engines import (
    Engine,
    EngineUnavailable,
    Namespace,
    Release,
    engine_versions,
    fetch_release,
    run,
)
from tests.servers import require_binary, unavailable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "compose"
COMPOSE = "2.40.3"
CAP_SYS_RESOURCE = 24


def newest(versions: list[str]) -> str:
    """The newest of the engine versions under test."""
    return max(versions, key=lambda version: tuple(int(part) for part in version.split(".")))


def privileged_can_start() -> bool:
    """Whether this machine's bounding set has CAP_SYS_RESOURCE, which a privileged container needs."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^CapBnd:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return match is not None and bool(int(match.group(1), 16) >> CAP_SYS_RESOURCE & 1)


@pytest.fixture(scope="module")
def rig_engine(machine: dict[str, str], e2e_dir: Path) -> Iterator[Engine]:
    """A started engine of ours for the rig; only an engine that cannot start skips (fails in CI)."""
    require_binary("debootstrap")
    try:
        release: Release = fetch_release(newest(engine_versions()))
    except EngineUnavailable as exc:
        unavailable(str(exc))
    namespace = Namespace(f"{e2e_dir.name}-rig")
    overlay = "overlay" in Path("/proc/filesystems").read_text().split()
    engine = Engine("rig", e2e_dir / "rig", namespace, storage_driver="overlay2" if overlay else "vfs", release=release)
    try:
        try:
            namespace.create()
            engine.start()
            engine.wait_ready(timeout=60)
        except (EngineUnavailable, OSError, AssertionError) as exc:
            unavailable(f"cannot start a Docker engine here: {exc}")
        yield engine
    finally:
        engine.destroy()
        namespace.delete()


def test_rig_comes_up_and_its_check_passes(rig_engine: Engine) -> None:
    try:
        compose = str(fetch_release(f"compose-{COMPOSE}").bin_dir / "docker-compose")
    except EngineUnavailable as exc:
        unavailable(str(exc))
    # This interpreter's python3 (it has pip) first, then the engine's own docker CLI.
    env = {
        **rig_engine.env,
        "PATH": f"{Path(sys.executable).parent}:{rig_engine.env['PATH']}",
        "DOCKER_HOST": f"unix://{rig_engine.socket}",
        # The classic builder uses a FROM image that exists only locally as it is (BuildKit may
        # try a registry for it), and compose v2 needs no buildx plugin with it.
        "DOCKER_BUILDKIT": "0",
    }
    if os.environ.get("MINI_IPAM_DEBIAN_MIRROR"):
        env["MIRROR"] = os.environ["MINI_IPAM_DEBIAN_MIRROR"]
    base = run(["sh", str(RIG / "local-base.sh")], check=False, timeout=1200, env=env)
    assert base.returncode == 0, f"local-base.sh failed:\n{base.stdout}\n{base.stderr[-3000:]}"

    files = ["--env-file", "compose/local.env", "-f", "compose/docker-compose.yml"]
    if not privileged_can_start():
        files += ["-f", "compose/unprivileged.yml"]
    project = [compose, "-p", "minirig", *files]
    try:
        up = subprocess.run(
            [*project, "up", "--build", "--exit-code-from", "check"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        output = up.stdout + up.stderr
        assert up.returncode == 0, f"the rig failed ({up.returncode}):\n{output[-6000:]}"
        # check.py's verdict, printed by the check service: 12 networks from 2 engines at once,
        # inside the pool, no two overlapping, and a held subnet refused on the other engine.
        assert "OK: 12 networks on 2 engines, no two overlap" in output, output[-6000:]
        assert re.search(r"engine2 asking for \S+ \(held by engine1\) is refused: .*overlaps", output), output[-6000:]
        assert len(re.findall(r"engine engine\d: Docker 20\.10\.", output)) == 2, output[-6000:]
    finally:
        down = subprocess.run(
            [*project, "down", "--volumes", "--timeout", "1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert not rig_engine.docker("ps", "-aq", check=True).stdout.split(), "compose down left containers"
