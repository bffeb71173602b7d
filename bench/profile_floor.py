"""Where a driver request's time goes, compared with the bare Flask route of ``framework_floor.py``.

Not a benchmark with a target: the evidence behind ``framework_floor.py``. Same requests as that
benchmark (RequestAddress + ReleaseAddress pairs), two views:

1. In-process, deterministic: the driver's own WSGI app, built by ``mini-ipam serve`` itself (its
   ``mini_ipam.server.serve`` swapped for a function that keeps the app instead of serving it), and the
   bare app, called directly with a WSGI environ: no sockets, no waitress, no other process. The two are
   interleaved round by round (driver at log level warning and info, the bare app), giving the driver's
   own work per request as a difference of medians; then ``cProfile`` splits that difference by library
   (self time per file, driver minus bare) and names the hottest functions with their calls per request.
2. In the real servers (needs ``py-spy``, root): ``py-spy record --gil`` on a driver at warning, one at
   info and the bare server, loaded in turn by one keep-alive client; samples divided by the requests
   served give microseconds of GIL-holding work per request, by category (``driver: ...`` = under a frame
   of the driver's code, split by the library of the innermost frame; ``framework``; waitress's main loop).
   Categories come from file paths, so this part does not depend on the driver's internals.
3. Layer by layer, in-process: the driver's app built four times, with the store, then the allocator, then
   the driver answering canned values, interleaved with the bare app; the differences are each layer's share
   of a bare request.

    python bench/profile_floor.py [--rounds 21] [--pairs 200] [--seconds 20] [--rate 400] [--no-py-spy]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bare_server import bare_app
from framework_floor import start_baseline
from support.client import UnixClient, sized_pool
from support.processes import driver_process, temp_directory
from support.report import Report
from support.stats import flatten, interleave, median, round_ratios

from mini_ipam import protocol
from mini_ipam.testing import stop_process

# -- part 1: in-process ------------------------------------------------------------


def driver_app(directory: Path) -> Any:
    """The driver's WSGI app, built by ``mini-ipam serve --store memory://`` with its server swapped out."""
    import mini_ipam.server

    kept: dict[str, Any] = {}

    def keep(app: Any, path: Path, **options: Any) -> None:
        kept["app"] = app

    mini_ipam.server.serve = keep  # bound by name when mini-ipam's serve command is first imported, just below
    from mini_ipam import cli

    argv = ["serve", "--socket", str(directory / "unused.sock"), "--store", "memory://", "--pool", "10.0.0.0/16"]
    argv += ["--log-level", "warning"]  # quiet start-up; each batch sets the level it measures
    code = cli.main(argv)
    if "app" not in kept:
        raise RuntimeError(f"mini-ipam serve exited {code} without handing its app to mini_ipam.server.serve")
    log = (directory / "in-process.log").open("w")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log)  # the request log lines go to a file, as the driver's own stderr would
    return kept["app"]


def wsgi_post(app: Any, path: str, body: bytes) -> bytes:
    """Call a WSGI app with a POST as the engine sends it; the reply body."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    chunks = app(environ, lambda status, headers, exc_info=None: None)
    try:
        return b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()


def wsgi_pairs(app: Any, pool_id: str, pairs: int, level: int | None = None) -> Callable[[], list[float]]:
    """RequestAddress + ReleaseAddress pairs straight into ``app``; seconds per request."""
    request = json.dumps(protocol.request_address(pool_id)).encode()
    clock = time.perf_counter

    def run() -> list[float]:
        if level is not None:
            logging.getLogger().setLevel(level)
        samples = []
        for _ in range(pairs):
            started = clock()
            reply = json.loads(wsgi_post(app, "/IpamDriver.RequestAddress", request))
            address = reply.get("Address", "10.0.0.2/24").split("/")[0]
            wsgi_post(app, "/IpamDriver.ReleaseAddress", json.dumps({"PoolID": pool_id, "Address": address}).encode())
            samples.append((clock() - started) / 2)
        return samples

    return run


def library(filename: str) -> str:
    """The library a profiled function belongs to, by its file."""
    for marker, name in (
        ("ipaddress.py", "ipaddress"),
        ("prometheus_client", "prometheus_client"),
        ("/logging/", "logging"),
        ("/json/", "json"),
        ("/flask/", "flask"),
        ("/werkzeug/", "werkzeug"),
        ("/mini_ipam/", "mini_ipam (driver code)"),
        ("/stores/", "stores (driver code)"),
    ):
        if marker in filename:
            return name
    return "builtins and other" if filename.startswith("~") or "<" in filename else Path(filename).name


def profile(run: Callable[[], object], requests: int) -> tuple[Counter[str], list[tuple[str, float, float]]]:
    """cProfile ``run``: self time per library (us per request) and the hottest functions of the driver's code."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_library: Counter[str] = Counter()
    functions = []
    for (filename, line, name), (_, calls, own, _, _) in stats.items():
        kind = library(filename)
        by_library[kind] += own / requests * 1e6
        if kind in ("ipaddress", "mini_ipam (driver code)", "stores (driver code)", "prometheus_client"):
            where = f"{'/'.join(Path(filename).parts[-2:])}:{line}({name})"
            functions.append((where, own / requests * 1e6, calls / requests))
    functions.sort(key=lambda item: -item[1])
    return by_library, functions[:15]


def in_process(directory: Path, rounds: int, pairs: int, report: Report) -> dict[str, Any]:
    """Part 1: the driver's own cost per request, deterministic and free of sockets and threads."""
    driver = driver_app(directory)
    bare = bare_app()
    pool_id = json.loads(wsgi_post(driver, "/IpamDriver.RequestPool", json.dumps(sized_pool(24)).encode()))
    pool = pool_id["PoolID"]
    variants = {
        "driver/warning": wsgi_pairs(driver, pool, pairs, logging.WARNING),
        "driver/info": wsgi_pairs(driver, pool, pairs, logging.INFO),
        "bare": wsgi_pairs(bare, pool, pairs),
    }
    for run in variants.values():
        run()
    samples = interleave(variants, rounds)
    medians = {name: median(flatten(values)) * 1e6 for name, values in samples.items()}
    print(f"in-process WSGI calls, per request, median of {rounds} interleaved rounds of {pairs} pairs:")
    for name, value in medians.items():
        print(f"  {name:<16} {value:7.1f} us")
    own = {level: medians[f"driver/{level}"] - medians["bare"] for level in ("warning", "info")}
    for level, value in own.items():
        report.add(f"profile in-process: driver's own work per request (log {level})", value, "us")
    report.ratio("profile in-process: driver app / bare app (log warning)", samples["driver/warning"], samples["bare"])
    report.ratio("profile in-process: driver app / bare app (log info)", samples["driver/info"], samples["bare"])
    profiled_requests = 2 * pairs * 5
    driver_libraries, hottest = profile(lambda: [variants["driver/warning"]() for _ in range(5)], profiled_requests)
    bare_libraries, _ = profile(lambda: [variants["bare"]() for _ in range(5)], profiled_requests)
    delta = {name: driver_libraries[name] - bare_libraries.get(name, 0.0) for name in driver_libraries}
    total = sum(delta.values())
    print("cProfile self time per request by library (log warning; profiling inflates every figure):")
    print(f"  {'library':<26}{'driver':>9}{'bare':>9}{'driver-bare':>12}{'share':>8}")
    for name, value in sorted(delta.items(), key=lambda item: -item[1]):
        if abs(value) >= 0.5:
            share = value / total * 100
            row = f"{driver_libraries[name]:9.1f}{bare_libraries.get(name, 0.0):9.1f}{value:12.1f}{share:7.0f}%"
            print(f"  {name:<26}{row}")
    print("hottest functions of the driver's code and ipaddress (self us per request, profiled; calls per request):")
    for where, own_us, calls in hottest:
        print(f"  {own_us:7.1f}  {calls:5.1f} calls  {where}")
    return {
        "median_us_per_request": medians,
        "driver_own_us": own,
        "cprofile_self_us_per_request": {"driver": dict(driver_libraries), "bare": dict(bare_libraries)},
        "cprofile_delta_share_percent": {name: round(value / total * 100, 1) for name, value in delta.items()},
        "hottest": [{"function": w, "self_us": round(u, 2), "calls_per_request": c} for w, u, c in hottest],
        "round_ratios_warning": round_ratios(samples["driver/warning"], samples["bare"]),
    }


# -- part 3: layer by layer -------------------------------------------------------------


def layered_apps() -> dict[str, Any]:
    """The driver's app (memory store, timed) with ever more of its layers replaced by canned answers.

    ``full``: nothing replaced; ``no store``: the store's two address calls answer at once, untimed (so
    the difference to ``full`` is the store and its timer); ``no allocator``:
    the allocator's two address calls answer at once (a prebuilt interface); ``no driver``: the driver's two
    address methods return canned dicts, leaving Flask, the app module (hook, body parsing, metrics, the log
    decision, the reply) and nothing else. The differences between neighbours are each layer's own cost.
    """
    import ipaddress

    from mini_ipam.allocator import Allocator, Settings
    from mini_ipam.app import create_app
    from mini_ipam.driver import Driver as IpamDriver
    from mini_ipam.metrics import Metrics, TimedStore
    from stores.memory import MemoryStore

    settings = Settings(parents4=(ipaddress.IPv4Network("10.0.0.0/16"),))
    address = ipaddress.IPv4Address("10.0.0.1")
    interface = ipaddress.IPv4Interface("10.0.0.1/24")
    text = str(interface)

    class NoStore(MemoryStore):
        def claim_next_address(self, *args: Any, **kwargs: Any) -> Any:
            return address

        def release_address(self, *args: Any, **kwargs: Any) -> bool:
            return True

    class NoAllocator(Allocator):
        def request_address(self, *args: Any, **kwargs: Any) -> Any:
            return interface

        def release_address(self, *args: Any, **kwargs: Any) -> None:
            return None

    class NoDriver(IpamDriver):
        def request_address(self, request: dict[str, Any]) -> dict[str, Any]:
            return {"Address": text, "Data": {}}

        def release_address(self, request: dict[str, Any]) -> dict[str, Any]:
            return {}

    def build(
        driver: type[IpamDriver], allocator: type[Allocator], store: type[MemoryStore], timed: bool = True
    ) -> Any:
        metrics = Metrics()
        inner: Any = TimedStore(store(), metrics) if timed else store()
        return create_app(driver(allocator(inner, settings)), metrics=metrics)

    return {
        "full": build(IpamDriver, Allocator, MemoryStore),
        "no store": build(IpamDriver, Allocator, NoStore, timed=False),
        "no allocator": build(IpamDriver, NoAllocator, MemoryStore),
        "no driver": build(NoDriver, Allocator, MemoryStore),
    }


def layers(rounds: int, pairs: int, report: Report) -> dict[str, Any]:
    """Part 3: each layer's share of a request, as a fraction of the bare app's whole request."""
    logging.getLogger().setLevel(logging.WARNING)
    apps = {"bare": bare_app(), **layered_apps()}
    variants = {}
    for name, app in apps.items():
        reply = json.loads(wsgi_post(app, "/IpamDriver.RequestPool", json.dumps(sized_pool(24)).encode()))
        variants[name] = wsgi_pairs(app, reply.get("PoolID", "local/10.0.0.0/24"), pairs)
    for run in variants.values():
        run()
    samples = interleave(variants, rounds)
    ratios = {name: median(round_ratios(samples[name], samples["bare"])) for name in apps if name != "bare"}
    shares = {
        "app module and Flask extras (hook, body, metrics, log decision)": ratios["no driver"] - 1,
        "driver (decode, encode)": ratios["no allocator"] - ratios["no driver"],
        "allocator (its own work)": ratios["no store"] - ratios["no allocator"],
        "memory store and its timer": ratios["full"] - ratios["no store"],
    }
    print(f"layer by layer, in-process, log level warning ({rounds} interleaved rounds of {pairs} pairs):")
    for name, ratio in ratios.items():
        print(f"  {name:<14} {ratio:6.3f} x the bare app")
    for name, share in shares.items():
        report.add(f"profile layers: {name}, share of a bare request", share, "x")
    return {"ratios_to_bare": ratios, "shares_of_bare": shares}


# -- part 2: py-spy on the real servers ---------------------------------------------

DRIVER_FILES = (
    "mini_ipam/app.py",
    "mini_ipam/driver.py",
    "mini_ipam/allocator.py",
    "mini_ipam/pool_id.py",
    "mini_ipam/metrics.py",
    "mini_ipam/operations.py",
    "mini_ipam/logs.py",
    "mini_ipam/errors.py",
    "stores/",
)
LIBRARIES = {
    "ipaddress.py": "driver: ipaddress (parse/format subnets, addresses)",
    "logging/": "driver: logging",
    "prometheus_client/": "driver: prometheus_client (metrics)",
    "json/": "driver: json",
    "flask/": "driver: flask (g, request proxies)",
    "werkzeug/": "driver: werkzeug (g, request proxies)",
}


def categorise(stack: list[str]) -> str:
    """The category of one sample, given its frames from the root to the leaf."""
    frames = [frame.split(" (", 1)[1] if " (" in frame else frame for frame in stack]
    if not any("handler_thread" in frame for frame in stack):
        return "server loop (waitress main thread)"
    for index, frame in enumerate(frames):
        if any(name in frame for name in DRIVER_FILES):
            leaf = frames[-1]
            for library, category in LIBRARIES.items():
                if library in leaf:
                    return category
            below = frames[index:]
            if any("ipaddress.py" in f for f in below):
                return "driver: ipaddress (parse/format subnets, addresses)"
            return "driver: own code (mini_ipam, stores)"
    if any("bare_server.py" in frame for frame in frames):
        return "bare route"
    return "framework (waitress, flask, werkzeug)"


def load(clients: dict[str, tuple[UnixClient, str]], seconds: float, pairs: int = 20) -> Counter[str]:
    """Send RequestAddress + ReleaseAddress pairs to every server in turn, ``pairs`` at a time; count requests."""
    requests: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, (client, pool_id) in clients.items():
            request = json.dumps(protocol.request_address(pool_id)).encode()
            for _ in range(pairs):
                _, body = client.post("/IpamDriver.RequestAddress", request)
                address = json.loads(body).get("Address", "10.0.0.2/24").split("/")[0]
                client.post("/IpamDriver.ReleaseAddress", json.dumps({"PoolID": pool_id, "Address": address}).encode())
            requests[name] += 2 * pairs
    return requests


def read_samples(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Samples per category in a py-spy raw (collapsed stacks) file, and per leaf function under driver code."""
    samples: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        category = categorise(frames)
        samples[category] += int(count)
        if category.startswith("driver:"):
            leaves[_short(frames[-1])] += int(count)
    return samples, leaves


def _short(frame: str) -> str:
    """``function (path/to/file.py:12)`` as ``file.py:function``."""
    function, _, where = frame.partition(" (")
    return f"{where.split(':')[0].rsplit('/', 1)[-1]}:{function}"


def with_py_spy(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    """Part 2: microseconds of GIL-holding work per request in the real servers, by category."""
    table: dict[str, dict[str, float]] = {}
    hot: dict[str, dict[str, float]] = {}
    with temp_directory("prof") as directory:
        drivers = {
            name: driver_process(
                directory / f"{name}.sock", "memory://", "--pool", "10.0.0.0/16", *flags, log=directory / f"{name}.log"
            )
            for name, flags in (("warning", ("--log-level", "warning")), ("info", ()))
        }
        bare = None
        spies: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for driver in drivers.values():
                driver.start()
            bare = start_baseline(directory, "bare")
            pids = {"driver/warning": drivers["warning"].pid, "driver/info": drivers["info"].pid, "bare": bare.pid}
            sockets = {"driver/warning": "warning", "driver/info": "info", "bare": "bare"}
            clients = {}
            for name, stem in sockets.items():
                client = UnixClient(directory / f"{stem}.sock")
                pool = client.call("IpamDriver.RequestPool", sized_pool(24))[1].get("PoolID", "local/10.0.0.0/24")
                clients[name] = (client, pool)
            load(clients, 1.0)  # warm up
            for name, pid in pids.items():
                out = directory / f"{sockets[name]}.txt"
                command = ["py-spy", "record", "--gil", "--nonblocking", "-r", str(args.rate), "-d", str(args.seconds)]
                spies[name] = subprocess.Popen(
                    [*command, "-f", "raw", "-o", str(out), "-p", str(pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            time.sleep(0.5)  # let every py-spy attach before counting requests
            requests = load(clients, args.seconds - 1.0)
            for spy in spies.values():
                spy.wait(timeout=60)
            for name in pids:
                out = directory / f"{sockets[name]}.txt"
                if not out.exists():
                    raise RuntimeError(f"py-spy wrote nothing for {name}")
                samples, leaves = read_samples(out)
                hot[name] = {leaf: n / args.rate / requests[name] * 1e6 for leaf, n in leaves.most_common(15)}
                table[name] = {category: n / args.rate / requests[name] * 1e6 for category, n in samples.items()}
                table[name]["(requests profiled)"] = requests[name]
        finally:
            for spy in spies.values():
                if spy.poll() is None:
                    spy.terminate()
            for driver in drivers.values():
                driver.stop()
            if bare is not None:
                stop_process(bare)
    categories = sorted({c for row in table.values() for c in row if not c.startswith("(")})
    print(f"\nGIL-holding work per request, microseconds ({args.seconds:g} s each, py-spy --gil at {args.rate} Hz):")
    print(f"  {'category':<56}" + "".join(f"{name:>16}" for name in table))
    for category in categories:
        print(f"  {category:<56}" + "".join(f"{table[name].get(category, 0):16.1f}" for name in table))
    totals = {name: sum(v for c, v in row.items() if not c.startswith("(")) for name, row in table.items()}
    print(f"  {'total':<56}" + "".join(f"{totals[name]:16.1f}" for name in table))
    print("\nhottest functions under driver code (innermost frame), us per request, driver/warning:")
    for leaf, value in hot.get("driver/warning", {}).items():
        print(f"  {value:7.1f}  {leaf}")
    for name in table:
        driver_part = sum(v for c, v in table[name].items() if c.startswith("driver:"))
        report.add(f"profile: {name} driver-code work per request", driver_part, "us")
        report.add(f"profile: {name} total GIL-held work per request", totals[name], "us")
    return {"us_per_request": table, "hottest_driver_functions_us": hot, "seconds": args.seconds, "rate_hz": args.rate}


def main() -> None:
    """Run both parts and write bench/results/profile_floor.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=400)
    parser.add_argument("--no-py-spy", action="store_true", help="skip part 2")
    args = parser.parse_args()
    report = Report("profile_floor", "where a driver request's time goes, vs the bare Flask route")
    with temp_directory("prof") as directory:
        report.details["in_process"] = in_process(directory, args.rounds, args.pairs, report)
    report.details["layers"] = layers(args.rounds, args.pairs, report)
    if args.no_py_spy:
        pass
    elif shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install -e '.[bench]'): part 2 skipped")
    else:
        report.details["py_spy"] = with_py_spy(args, report)
    report.save()


if __name__ == "__main__":
    main()
