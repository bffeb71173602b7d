"""Shared helpers for the benchmarks in ``bench/``.

* statistics: ``median``, ``percentile``, ``p99``, ``mean``, ``round_ratios`` and ``ratio_of_rounds`` (the
  median of the per-round ratios of interleaved variants);
* ``interleave``: run compared variants in alternating order, round after round, in one run;
* ``UnixClient``: a raw-socket HTTP/1.1 keep-alive client for a Unix socket, cheap enough not to dominate
  what it measures (a whole round trip to a canned-reply server costs ~25 µs here, the driver ~600 µs);
* ``Driver``, ``RedisServer``: a ``python -m mini_ipam serve`` process and a ``redis-server`` on a
  temporary Unix socket, started and stopped by their own pid;
* ``build_state_file``: a file store's state file with N live pools, written at once;
* ``Report``: the figures of a benchmark, printed and written to ``bench/results/<name>.json``.

Every benchmark is one script, ``python bench/<name>.py``; ``python bench/all.py`` runs them all.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"

if str(REPO) not in sys.path:
    # The driver packages are installed (pip install -e .), but the test helpers shared with the
    # benchmarks (tests.servers, tests.e2e.engines) are not.
    sys.path.insert(1, str(REPO))

from tests.servers import redis_server_command, serve_command  # noqa: E402  (needs the path above)

ACCEPT = "application/vnd.docker.plugins.v1.2+json"
"""What a real engine sends as Accept; it sends no Content-Type."""

T = TypeVar("T")


# -- statistics -------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of ``values``."""
    return float(statistics.fmean(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile of ``values``."""
    return percentile(values, 99)


def flatten(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Every sample of every round, in one list."""
    return [value for samples in rounds for value in samples]


def ratio_of_rounds(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    statistic: Callable[[Sequence[float]], float] = median,
) -> float:
    """The median over rounds of ``statistic(numerator round) / statistic(denominator round)``.

    Taking the ratio inside each round, whose variants ran back to back, cancels most of the
    drift a noisy machine adds between rounds.
    """
    return median(round_ratios(numerator, denominator, statistic))


def round_ratios(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    statistic: Callable[[Sequence[float]], float] = median,
) -> list[float]:
    """``statistic(numerator round) / statistic(denominator round)`` for every round."""
    return [statistic(a) / statistic(b) for a, b in zip(numerator, denominator, strict=True)]


def spread(values: Sequence[float]) -> str:
    """The interquartile range of ``values``, as a note: ``IQR 1.21-1.34``."""
    return f"IQR {percentile(values, 25):.3g}-{percentile(values, 75):.3g}"


def interleave(variants: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, list[list[float]]]:
    """Run each variant once per round, in an order rotated every round; return each one's samples per round.

    A variant is a callable that runs one batch and returns its samples (seconds per operation).
    """
    names = list(variants)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        if number % 2:
            order.reverse()
        for name in order:
            samples[name].append(variants[name]())
    return samples


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.005) -> None:
    """Poll ``predicate`` until it is truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- the client -------------------------------------------------------------------


class _Stale(ConnectionError):
    """The connection was closed before any byte of the reply: the request was never handled."""


class UnixClient:
    """A minimal HTTP/1.1 client over one keep-alive Unix-socket connection.

    It builds each request with one format call, sends it with one ``sendall`` and reads the reply
    with as few ``recv`` calls as the reply needs: a few microseconds of Python per call, where
    ``http.client`` spends tens. POST only, as the plugin protocol is.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._buffer = b""
        return sock

    def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """POST ``body`` to ``path`` (such as ``/IpamDriver.RequestPool``); return the status and reply body."""
        head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {ACCEPT}\r\nContent-Length: {len(body)}\r\n\r\n"
        return self._exchange(head.encode() + body)

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """Any method, a JSON body (or none); the reply's JSON (or None). For the Docker Engine API."""
        body = b"" if payload is None else json.dumps(payload).encode()
        kind = "Content-Type: application/json\r\n" if payload is not None else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\n{kind}Content-Length: {len(body)}\r\n\r\n"
        status, data = self._exchange(head.encode() + body)
        return status, json.loads(data) if data.strip() else None

    def _exchange(self, message: bytes) -> tuple[int, bytes]:
        """Send one request and read its reply.

        A kept-alive connection the server closed while it was idle (waitress's channel timeout) fails
        before any byte of a reply arrives, so the server never saw the request: it is sent again, once,
        on a new connection.
        """
        reused = self._sock is not None
        sock = self._sock or self._connect()
        try:
            sock.sendall(message)
            return self._read_reply(sock)
        except (_Stale, BrokenPipeError, ConnectionResetError):
            self.close()
            if not reused:
                raise
        except OSError:
            self.close()
            raise
        sock = self._connect()
        try:
            sock.sendall(message)
            return self._read_reply(sock)
        except OSError:
            self.close()
            raise

    def _read_reply(self, sock: socket.socket) -> tuple[int, bytes]:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise (
                    _Stale("the server closed the connection before replying")
                    if not buffer
                    else ConnectionError("the server closed the connection mid-reply")
                )
            buffer += chunk
        head = buffer[:end].decode("latin-1")
        status = int(head[9:12])
        length = 0
        close = chunked = False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name, value = name.lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                close = True
            elif name == "transfer-encoding" and value == "chunked":
                chunked = True
        buffer = buffer[end + 4 :]
        if chunked:
            body, buffer = self._read_chunks(sock, buffer)
        else:
            while len(buffer) < length:
                buffer += self._receive(sock)
            body, buffer = buffer[:length], buffer[length:]
        self._buffer = buffer
        if close:
            self.close()
        return status, body

    def _read_chunks(self, sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        body = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += self._receive(sock)
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buffer) < size + 2:
                buffer += self._receive(sock)
            body, buffer = body + buffer[:size], buffer[size + 2 :]
            if size == 0:
                return body, buffer

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def call(self, method: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """POST a protocol call (``Plugin.Activate``, ``IpamDriver.RequestPool`` ...); return status and JSON."""
        status, data = self.post(f"/{method}", b"" if body is None else json.dumps(body).encode())
        return status, json.loads(data) if data else {}

    def ok(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Like ``call``, but a non-200 reply raises RuntimeError with the driver's message."""
        status, reply = self.call(method, body)
        if status != 200:
            raise RuntimeError(f"{method} {body} -> {status} {reply}")
        return reply

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def __enter__(self) -> UnixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def activates(path: str | Path) -> bool:
    """Whether something answers ``Plugin.Activate`` with 200 on the socket ``path`` (a new connection)."""
    client = UnixClient(path, timeout=2.0)
    try:
        return client.call("Plugin.Activate")[0] == 200
    except (OSError, ValueError):
        return False
    finally:
        client.close()


# -- IPAM request bodies ----------------------------------------------------------


def request_pool_body(size: int = 28, space: str = "local") -> dict[str, Any]:
    """A dynamic RequestPool, as ``docker network create --ipam-opt size=N`` sends it."""
    return {"AddressSpace": space, "Pool": "", "SubPool": "", "Options": {"size": str(size)}, "V6": False}


def request_address_body(pool_id: str, gateway: bool = False) -> dict[str, Any]:
    """A RequestAddress for the next free address (or the gateway, as ``network create`` asks for it)."""
    options = {"RequestAddressType": "com.docker.network.gateway"} if gateway else None
    return {"PoolID": pool_id, "Address": "", "Options": options}


def pool_pair(client: UnixClient, size: int = 28) -> None:
    """One RequestPool and its ReleasePool: a network's subnet claimed and given back."""
    pool_id = client.ok("IpamDriver.RequestPool", request_pool_body(size))["PoolID"]
    client.ok("IpamDriver.ReleasePool", {"PoolID": pool_id})


def address_pair(client: UnixClient, pool_id: str) -> None:
    """One RequestAddress and its ReleaseAddress: a container's address claimed and given back."""
    address = client.ok("IpamDriver.RequestAddress", request_address_body(pool_id))["Address"]
    client.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})


# -- processes --------------------------------------------------------------------


def stop_pid(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM a process we started, then SIGKILL it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


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


class Driver:
    """A ``python -m mini_ipam serve`` process on ``socket_path``, its output in ``log``."""

    def __init__(self, socket_path: Path, store: str, *args: str, log: Path) -> None:
        self.socket = socket_path
        self.store = store
        self.args = args
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The command line that starts the driver."""
        return serve_command(self.socket, "--store", self.store, *self.args)

    @property
    def pid(self) -> int:
        """The process id (the driver must have been started)."""
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        """Start the process without waiting for it."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def start(self, timeout: float = 60) -> Driver:
        """Start the process and wait until it answers ``Plugin.Activate``."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll the socket until the driver answers; RuntimeError (with its log) if it exits first."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"mini-ipam exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            return activates(self.socket)

        wait_until(ready, timeout, f"mini-ipam on {self.socket}", interval=0.001)

    def rss_kb(self) -> int:
        """Resident set size now (VmRSS), in kB."""
        return proc_status(self.pid, "VmRSS")

    def stop(self) -> None:
        """SIGTERM (the driver removes its socket), SIGKILL after 15 s; remove a socket left behind."""
        if self.process is not None:
            stop_pid(self.process)
            self.process = None
        with contextlib.suppress(FileNotFoundError):
            if self.socket.is_socket():
                self.socket.unlink()


class RedisServer:
    """A ``redis-server`` on a Unix socket in ``directory``: no TCP port, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, prefix: str | None = None) -> str:
        """The store URL of this server, for ``--store`` or ``stores.from_url``."""
        return f"unix://{self.socket}" + (f"?prefix={prefix}" if prefix else "")

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        self.process = subprocess.Popen(
            redis_server_command("redis-server", self.socket, self.directory),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ping, 15, "redis-server to answer PING")
        return self

    def _ping(self) -> bool:
        import redis

        try:
            return bool(self.client(timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def client(self, timeout: float = 30.0) -> Any:
        """A redis-py client of this server."""
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=timeout)

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """Stop the server by its pid."""
        if self.process is not None:
            stop_pid(self.process)
            self.process = None


@contextlib.contextmanager
def temp_directory(tag: str) -> Iterator[Path]:
    """A temporary directory (short path, so socket names fit), removed afterwards."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=f"mini-bench-{tag}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- filling stores ---------------------------------------------------------------


def allocator_for(store: Any, parent: str, host_id: str = "bench", size: int = 28) -> Any:
    """An in-process Allocator over ``store``, carving ``/size`` pools from ``parent``."""
    from mini_ipam.allocator import Allocator, Settings

    settings = Settings(parents4=(ipaddress.IPv4Network(parent),), default_size4=size, host_id=host_id)
    return Allocator(store, settings)


def fill(allocator: Any, count: int, size: int = 28) -> list[Any]:
    """Claim ``count`` dynamic pools, lowest first; return their PoolIds."""
    from mini_ipam.allocator import PoolRequest

    request = PoolRequest(space="local", size=size)
    return [allocator.request_pool(request).pool_id for _ in range(count)]


def in_threads(make_worker: Callable[[], Callable[[], T]], count: int, threads: int = 4) -> list[T]:
    """Call a worker ``count`` times in all, from ``threads`` threads each with its own worker; return the results.

    ``make_worker`` is called once per thread (give each its own connection); used to fill maps faster.
    """
    import concurrent.futures

    share, rest = divmod(count, threads)

    def run(number: int) -> list[T]:
        worker = make_worker()
        return [worker() for _ in range(share + (1 if number < rest else 0))]

    with concurrent.futures.ThreadPoolExecutor(threads) as executor:
        return [result for chunk in executor.map(run, range(threads)) for result in chunk]


def build_state_file(
    path: Path,
    pools: int,
    parent: str,
    host_id: str,
    size: int = 28,
    *,
    gateways: bool = False,
    holes: int = 0,
    seed: int = 6,
    journal_pairs: int = 0,
    verify: bool = True,
) -> float:
    """Write a file store's state file holding ``pools`` live /size pools of ``host_id``; return seconds taken.

    The pools (and, with ``gateways``, each pool's gateway address) are claimed through an Allocator over a
    MemoryStore, the file store's own in-memory part, lowest first as the driver would; with ``holes``,
    that many more are claimed and a random sample of them released again, leaving scattered free slots.
    The snapshot is the one ``FileStore`` itself writes when it compacts its journal: the same format and
    the same events, written at once instead of one fdatasync-ed journal line per change. With
    ``journal_pairs``, the journal after that snapshot (``<path>.0.log``, one JSON event a line, as
    ``FileStore`` appends them) holds that many RequestPool + ReleasePool pairs. With ``verify``,
    the file is opened once with ``FileStore`` to prove it loads (``driver_holds`` checks a driver that
    loaded a hole-less file more cheaply).
    """
    import random

    from stores.file import FORMAT, FileStore
    from stores.memory import MemoryStore, encode_event

    started = time.perf_counter()
    memory = MemoryStore()
    allocator = allocator_for(memory, parent, host_id, size)
    pool_ids = fill(allocator, pools + holes, size)
    released = set(random.Random(seed).sample(range(len(pool_ids)), holes))
    for index, pool_id in enumerate(pool_ids):
        if index in released:
            allocator.release_pool(pool_id)
        elif gateways:
            allocator.request_address(pool_id, gateway=True)
    events = [encode_event(event) for event in memory._snapshot_events()]  # what FileStore._compact writes
    path.write_text(json.dumps({"format": FORMAT, "generation": 0, "events": events}, separators=(",", ":")))
    if journal_pairs:
        journal: list[str] = []
        apply_event = memory._commit

        def record(event: dict[str, Any]) -> None:  # what FileStore._commit does, minus the fdatasync
            journal.append(json.dumps(encode_event(event), separators=(",", ":")))
            apply_event(event)

        memory._commit = record  # type: ignore[method-assign]
        for _ in range(journal_pairs):
            allocator.release_pool(fill(allocator, 1, size)[0])
        Path(f"{path}.0.log").write_text("\n".join(journal) + "\n")
    if verify:
        check = FileStore(path)
        loaded = len(check.pools())
        check.close()
        if loaded != pools:
            raise RuntimeError(f"{path} loads {loaded} pools, not {pools}")
    return time.perf_counter() - started


def driver_holds(socket_path: Path, pools: int, parent: str, size: int = 28) -> None:
    """Check that a driver holds exactly the ``pools`` lowest /size subnets of ``parent``.

    A dynamic RequestPool must then get the next one, the ``pools``-th (counting from 0); it is released again.
    """
    network = ipaddress.ip_network(parent)
    expected = ipaddress.ip_network((int(network.network_address) + pools * (1 << (32 - size)), size))
    with UnixClient(socket_path) as client:
        reply = client.ok("IpamDriver.RequestPool", request_pool_body(size))
        client.ok("IpamDriver.ReleasePool", {"PoolID": reply["PoolID"]})
    if reply["Pool"] != str(expected):
        raise RuntimeError(f"the driver on {socket_path} handed out {reply['Pool']}, not {expected}: it lost pools")


# -- results ----------------------------------------------------------------------


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


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded for reports."""
    return round(seconds * 1000, 4)


def describe(samples: Sequence[float]) -> dict[str, float]:
    """Median, mean, p99 and max of samples in seconds, as milliseconds."""
    return {
        "median_ms": ms(median(samples)),
        "mean_ms": ms(mean(samples)),
        "p99_ms": ms(p99(samples)),
        "max_ms": ms(max(samples)),
        "n": len(samples),
    }
