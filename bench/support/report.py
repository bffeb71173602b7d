"""A benchmark's figures: printed as they are measured, and written to ``bench/results/<name>.json``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from support import REPO, RESULTS
from support.stats import median, round_ratios, spread


@dataclass
class Figure:
    """One reported figure: a value (usually a ratio), its target and whether it holds."""

    name: str
    value: float
    unit: str = "x"
    target: str = ""
    holds: bool | None = None
    note: str = ""


@dataclass
class Report:
    """Everything one benchmark measured: the figures, the details behind them, and how to reproduce them."""

    name: str
    description: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    load_at_start: list[float] = field(default_factory=lambda: [round(value, 2) for value in os.getloadavg()])

    @property
    def command(self) -> str:
        """The one command that reproduces this report."""
        return f"python bench/{self.name}.py"

    def add(
        self,
        name: str,
        value: float,
        unit: str = "x",
        target: str = "",
        holds: bool | None = None,
        note: str = "",
    ) -> Figure:
        """Record a figure and print it at once."""
        figure = Figure(name, value, unit, target, holds, note)
        self.figures.append(figure)
        print(format_figure(figure), flush=True)
        return figure

    def ratio(
        self,
        name: str,
        numerator: Sequence[Sequence[float]],
        denominator: Sequence[Sequence[float]],
        limit: float | None = None,
        statistic: Callable[[Sequence[float]], float] = median,
        note: str = "",
    ) -> Figure:
        """Record the median of per-round ratios, with their interquartile range, against ``<= limit``."""
        ratios = round_ratios(numerator, denominator, statistic)
        value = median(ratios)
        target = f"<= {limit:g}" if limit is not None else ""
        holds = None if limit is None else value <= limit
        return self.add(name, value, "x", target, holds, ", ".join(filter(None, [spread(ratios), note])))

    def save(self) -> Path:
        """Write ``bench/results/<name>.json`` and print the reproducing command."""
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        payload = {
            "name": self.name,
            "description": self.description,
            "command": self.command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "wall_seconds": round(time.time() - self.started, 1),
            "machine": {**machine(), "loadavg_at_start": self.load_at_start},
            "figures": [asdict(figure) for figure in self.figures],
            "details": self.details,
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"results: {path.relative_to(REPO)}  ({payload['wall_seconds']} s)")
        print(f"reproduce: {self.command}")
        return path


def format_figure(figure: Figure) -> str:
    """One line: name, value, target and verdict."""
    verdict = {True: "holds", False: "MISSED", None: ""}[figure.holds]
    value = f"{figure.value:.3g}" if abs(figure.value) < 1000 else f"{figure.value:,.0f}"
    target = f"target {figure.target}" if figure.target else ""
    note = f"  ({figure.note})" if figure.note else ""
    return f"  {figure.name:<66} {value:>9} {figure.unit:<6} {target:<16} {verdict}{note}"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_end": [round(value, 2) for value in load],
        "code": code_state(),
    }


def code_state() -> dict[str, Any]:
    """The commit measured, and the tracked files that differed from it (the tree is shared and moves)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return result.stdout

    # Porcelain lines are "XY path": the status letters may begin with a space, so nothing is stripped.
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "modified": [path for path in changed if not path.startswith("bench/")],
    }
