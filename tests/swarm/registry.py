"""The plugin from a registry: Debian's ``docker-registry`` on a lab LAN, and installs from it.

* ``Registry``: ``docker-registry serve`` in a namespace of its own, plugged into a lab LAN
  first so that it is ``198.18.0.1:5000`` on every LAN; its storage is a directory of the
  tier's, so what was pushed once through one registry is served by the next.
* ``push_plugin``: ``scripts/build-plugin.sh --push`` on a builder engine on the registry's
  LAN, once per session; ``push_changed_tag`` then pushes a second release for the upgrade test.
* ``trust``: an engine's daemon.json lets it speak plain HTTP to the lab's registries
  (``insecure-registries``); call it before the engine starts.
* ``install``: ``docker plugin install --grant-all-permissions --alias mini REF SETTINGS...``,
  the way a node gets the plugin from a registry (``--disable``, then enabled: see there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.engines import Engine, Lab, Namespace
from tests.servers import wait_until

PORT = 5000
REPOSITORY = "mini-ipam"
HOST = f"{Lab.SUBNET[1]}:{PORT}"
"""The registry is the first port of every LAN it serves, so its address is the same on all of them."""
TAGS = ("1", "2")
"""The tags of the session's plugin: the nodes install the first; the upgrade test moves to the second."""


def reference(tag: str) -> str:
    """The plugin's name in the registry, as ``docker plugin install`` and ``upgrade`` take it."""
    return f"{HOST}/{REPOSITORY}:{tag}"


def trust(engine: Engine) -> None:
    """Let ``engine`` (not started yet) use the lab registries over plain HTTP."""
    config_path = engine.directory / "daemon.json"
    config = json.loads(config_path.read_text())
    config["insecure-registries"] = [str(Lab.SUBNET)]
    config_path.write_text(json.dumps(config))


class Registry:
    """A ``docker-registry`` process on a lab LAN, its storage in ``storage``."""

    def __init__(self, binary: str, directory: Path, storage: Path, namespace: Namespace) -> None:
        self.binary = binary
        self.directory = directory
        self.storage = storage
        self.namespace = namespace
        self.log = directory / "registry.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, lab: Lab, timeout: float = 30) -> None:
        """Plug the registry's namespace into ``lab`` (first, so it gets ``HOST``), start it, wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.namespace.create()
        address = lab.attach(self.namespace)
        assert f"{address.ip}:{PORT}" == HOST, f"the registry must be the LAN's first port, got {address}"
        config = self.directory / "config.yml"
        # The registry reads YAML, and JSON is YAML: no YAML writer is needed.
        config.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": False}},
            "http": {"addr": HOST},
        }))  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace.name, self.binary, "serve", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        wait_until(self._answers, timeout=timeout, interval=0.2, what=f"docker-registry on {HOST}:\n{self.log_tail()}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"docker-registry exited ({self.process.returncode}):\n{self.log_tail()}")
        # /v2/ is the API's version check.
        probe = f"import urllib.request; urllib.request.urlopen('http://{HOST}/v2/', timeout=2).read()"
        return self._inside(probe).returncode == 0

    def _inside(self, script: str) -> subprocess.CompletedProcess[str]:
        """Run a Python ``script`` in the registry's namespace: only its LAN reaches it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace.name, sys.executable, "-c", script],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    def log_tail(self, lines: int = 20) -> str:
        """The end of the registry's log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the registry and delete its namespace (the storage stays)."""
        try:
            if self.process is not None and self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
        finally:
            self.process = None
            self.namespace.delete()


def push_plugin(builder: Engine, base_image: str, script: Path) -> dict[str, float]:
    """``build-plugin.sh --push`` the first tag of ``TAGS`` from ``builder`` (started, on the registry's LAN).

    Returns the seconds the build and push took.
    """
    started = time.monotonic()
    # The interpreter running the tests first on PATH: its pip builds the wheels.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result = subprocess.run(
        ["bash", str(script), "--push", reference(TAGS[0])],
        env={**builder.env, "PATH": path, "BASE": base_image, "DOCKER": f"docker -H unix://{builder.socket}"},
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, f"{script} --push failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return {"build-plugin.sh --push": time.monotonic() - started}


def install(engine: Engine, alias: str, ref: str, settings: dict[str, str], timeout: float = 300) -> None:
    """``docker plugin install --disable`` ``ref`` as ``alias``, ``settings`` on the line; ``enable`` it after.

    ``--disable``: the nodes of a swarm pull at once, and an engine gives a starting plugin
    about 12 s to listen on its socket (its own limit, not a setting); a node that enables
    while another one unpacks 170 MB missed it here. ``enable_all`` enables them afterwards.
    """
    engine.docker(
        "plugin", "install", "--grant-all-permissions", "--disable", "--alias", alias, ref,
        *(f"{key}={value}" for key, value in settings.items()),
        check=True, timeout=timeout,
    )  # fmt: skip


def push_changed_tag(builder: Engine, source: str, tag: str, config: Path, directory: Path) -> None:
    """Push ``reference(tag)``: the plugin ``source`` on ``builder``, with one file more in its root filesystem.

    A new release of the plugin for the upgrade test, without a second build: the same
    rootfs plus ``/etc/mini-ipam-release`` naming the tag, so its layer is a new one (an
    engine asked to create a plugin of identical content refuses, and one that upgrades to
    a layer it already has unpacks nothing).
    """
    plugin_id = builder.docker("plugin", "inspect", "--format", "{{.Id}}", source, check=True).stdout.strip()
    rootfs = builder.directory / "root" / "plugins" / plugin_id / "rootfs"
    assert rootfs.is_dir(), f"plugin {source} is not where the engine keeps plugins ({rootfs})"
    (directory / "rootfs").parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs), str(directory / "rootfs")], check=True, timeout=300)
    (directory / "rootfs" / "etc" / "mini-ipam-release").write_text(f"{tag}\n")
    (directory / "config.json").write_text(config.read_text())
    builder.docker("plugin", "create", reference(tag), str(directory), check=True, timeout=300)
    builder.docker("plugin", "push", reference(tag), check=True, timeout=300)
