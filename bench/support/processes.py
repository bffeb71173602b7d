"""Processes a benchmark starts (drivers, redis-servers) and what ``/proc`` says of them."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mini_ipam.testing import DriverProcess, RedisProcess
from support import REPO

__all__ = ["RedisProcess", "cpu_seconds", "driver_process", "proc_status", "rss_kb", "temp_directory"]


def driver_process(socket_path: Path, store: str, *flags: str, log: Path) -> DriverProcess:
    """A driver on ``socket_path`` keeping its claims in ``store``, run from the repository."""
    return DriverProcess(socket_path, "--store", store, *flags, log=log, cwd=REPO)


def proc_status(pid: int, field_name: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """Resident set size of a process now (VmRSS), in kB."""
    return proc_status(pid, "VmRSS")


@contextlib.contextmanager
def temp_directory(tag: str) -> Iterator[Path]:
    """A temporary directory (short path, so socket names fit), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"mini-bench-{tag}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
