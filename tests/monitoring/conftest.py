"""A real ``mini-ipam serve`` with ``--metrics-address``, and a real Prometheus scraping it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.driver_process import DriverProcess
from tests.monitoring.prometheus import Prometheus, free_port

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "packaging" / "prometheus" / "mini-ipam-alerts.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "mini-ipam.json"


@dataclass
class Scraped:
    """A driver and the Prometheus that scrapes it."""

    driver: DriverProcess
    prometheus: Prometheus
    target: str  # host:port, the ``instance`` label


def start_driver(directory: Path, *flags: str, name: str = "mini") -> tuple[DriverProcess, str]:
    """``mini-ipam serve`` on a socket in ``directory``, with a TCP listener on a free loopback port."""
    target = f"127.0.0.1:{free_port()}"
    driver = DriverProcess(directory / f"{name}.sock", "--metrics-address", target, *flags).start()
    return driver, target


def quick_rules(directory: Path) -> Path:
    """A copy of the shipped alert rules with every ``for:`` cut to 0s, so a true condition fires at once."""
    copy = directory / "mini-ipam-alerts.yml"
    text, count = re.subn(r"^(\s+for:\s*)\S+\s*$", r"\g<1>0s", ALERT_RULES.read_text(), flags=re.MULTILINE)
    assert count >= 5, "the rules file has fewer 'for:' clauses than expected: is the pattern still right?"
    copy.write_text(text)
    return copy


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[list[DriverProcess | Prometheus]]:
    """What a test started, stopped in reverse order at its end."""
    started: list[DriverProcess | Prometheus] = []
    yield started
    for thing in reversed(started):
        thing.stop()
