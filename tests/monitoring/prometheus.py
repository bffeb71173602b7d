"""A real Prometheus (Debian's ``prometheus`` package) on loopback, in a temporary directory, and its HTTP API."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.servers import require_binary, wait_until

JOB = "mini-ipam"
"""The scrape job name the alert rules and the dashboard expect (as in the README's example)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class Prometheus:
    """``prometheus`` scraping ``targets`` (job ``mini-ipam``) every second, with ``rule_files`` evaluated as often."""

    def __init__(self, directory: Path, targets: Sequence[str], rule_files: Sequence[Path] = ()) -> None:
        self.directory = directory
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.port = free_port()
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        binary = require_binary("prometheus")
        config = self.directory / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the configuration.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }))  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=log,
            )  # fmt: skip
        wait_until(self.ready, timeout=60, interval=0.1, what="prometheus to be ready")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``; the ``data`` of a successful answer (a failed one fails the test)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector ``expression`` gives now."""
        data = self.api("query", query=expression)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expression: str, *labels: str) -> dict[tuple[str, ...], float]:
        """``expression``'s samples now, keyed by the values of ``labels``."""
        found: dict[tuple[str, ...], float] = {}
        for sample in self.query(expression):
            key = tuple(sample["metric"].get(label, "") for label in labels)
            assert key not in found, f"{expression}: two series for {key}"
            found[key] = float(sample["value"][1])
        return found

    def wait_for(self, expression: str, timeout: float = 60.0, what: str | None = None) -> list[dict[str, Any]]:
        """Poll until ``expression`` gives at least one sample; return them."""
        found: list[dict[str, Any]] = []

        def some() -> bool:
            found[:] = self.query(expression)
            return bool(found)

        wait_until(some, timeout=timeout, interval=0.2, what=what or f"prometheus to answer {expression}")
        return found

    def wait_for_alert(self, name: str, timeout: float = 60.0, **labels: str) -> dict[str, Any]:
        """Poll ``/api/v1/alerts`` until alert ``name`` (with ``labels``) is firing; return it."""
        found: list[dict[str, Any]] = []

        def firing() -> bool:
            found[:] = [
                alert
                for alert in self.api("alerts")["alerts"]
                if alert["labels"].get("alertname") == name
                and alert["state"] == "firing"
                and all(alert["labels"].get(k) == v for k, v in labels.items())
            ]
            return bool(found)

        wait_until(firing, timeout=timeout, interval=0.2, what=f"alert {name} {labels} to fire")
        return found[0]

    def wait_for_scrape_after(self, moment: float, timeout: float = 60.0) -> None:
        """Poll until the map gauges of a scrape were read after ``moment`` (Unix time)."""
        self.wait_for(f"mini_ipam_map_read_timestamp_seconds > {moment!r}", timeout, f"a scrape after {moment}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


def finite(samples: list[dict[str, Any]]) -> list[float]:
    """The finite values among an instant vector's samples."""
    values = [float(sample["value"][1]) for sample in samples]
    return [value for value in values if math.isfinite(value)]
