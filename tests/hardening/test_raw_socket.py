"""Raw bytes on the socket of a real ``mini-ipam serve``: what waitress and the app make of broken HTTP.

One driver (file store) serves the whole module. After every case it must still
answer Plugin.Activate, and its state files must be byte-for-byte what they were:
nothing here is a request that may change the map, except the one case that sends
a valid request and disconnects, whose effect is checked exactly. Every observed
status is recorded and printed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mini_ipam import protocol
from mini_ipam.protocol import CONTENT_TYPE
from tests.driver_process import DriverProcess, call
from tests.hardening.support import Response, connect, exchange, read_responses, request_bytes
from tests.servers import wait_until

REJECTED = b'{"AddressSpace": "nope", "Pool": ""}'  # parsed, then refused: proves the body arrived whole
REJECTED_ERR = "unknown address space 'nope'"
CHUNKED = b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_HEAD = b"POST /IpamDriver.RequestPool HTTP/1.1\r\n" + CHUNKED
OVER = b'{"AddressSpace": "local", "Pool": "", "pad": "' + b"x" * (70 * 1024) + b'"}'
RECORDED: dict[str, list[int | None]] = {}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass(frozen=True)
class FileDriver:
    """A driver on a file store, whose state files prove that a request changed nothing."""

    process: DriverProcess
    directory: Path

    @property
    def socket(self) -> Path:
        return self.process.socket_path

    def state(self) -> dict[str, bytes]:
        """The bytes of the snapshot and every journal: any change to the map changes them."""
        return {p.name: p.read_bytes() for p in sorted(self.directory.glob("state.json*")) if p.suffix != ".lock"}

    def healthy(self) -> None:
        assert self.process.process is not None and self.process.process.poll() is None, "the driver died"
        status, reply = call(self.socket, "Plugin.Activate", timeout=5)
        assert (status, reply) == (200, {"Implements": ["IpamDriver"]})


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[FileDriver]:
    directory = tmp_path_factory.mktemp("raw")
    process = DriverProcess(
        directory / "mini.sock", "--store", f"file://{directory}/state.json", "--pool", "10.33.0.0/16",
        "--host-id", "raw", "--threads", "4",
    ).start()  # fmt: skip
    body = protocol.request_pool(pool="10.33.5.0/24", options={})
    assert call(process.socket_path, "IpamDriver.RequestPool", body)[0] == 200
    gateway = protocol.request_address("local/10.33.5.0/24", gateway=True)
    assert call(process.socket_path, "IpamDriver.RequestAddress", gateway)[0] == 200
    try:
        yield FileDriver(process, directory)
    finally:
        process.stop()
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(f"\nraw socket: {len(RECORDED)} cases; observed statuses (None: closed, no reply):")
            for name, statuses in RECORDED.items():
                print(f"  {name}: {statuses}")


@dataclass(frozen=True)
class RawCase:
    name: str
    data: bytes
    expect: tuple[int | None, ...]  # the statuses, in order; None: closed without a reply
    json: tuple[bool, ...] | None = None  # which replies must be the app's JSON; None: all of them
    err: str = ""  # text the last reply's JSON error must contain
    alternatives: bool = False  # ``expect`` lists acceptable single statuses, not a sequence


CASES = [
    # Transfer-Encoding: chunked
    RawCase("chunked, two chunks", CHUNKED_HEAD + chunk(REJECTED[:9]) + chunk(REJECTED[9:]) + b"0\r\n\r\n", (400,),
            (True,), REJECTED_ERR),
    RawCase("chunked, empty, Activate",
            b"POST /Plugin.Activate HTTP/1.1\r\n" + CHUNKED + b"0\r\n\r\n", (200,), (True,)),
    RawCase("chunked, with extensions and trailers",
            CHUNKED_HEAD + b"%x;name=value\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(REJECTED), REJECTED), (400,),
            (True,), REJECTED_ERR),
    RawCase("chunked, size not hex", CHUNKED_HEAD + b"zz\r\n" + REJECTED + b"\r\n0\r\n\r\n", (400,), (False,)),
    RawCase("chunked, negative size", CHUNKED_HEAD + b"-5\r\nhello\r\n0\r\n\r\n", (400,), (False,)),
    RawCase("chunked, chunk not terminated", CHUNKED_HEAD + b"5\r\nhelloXX0\r\n\r\n", (400,), (False,)),
    RawCase("chunked, shorter than declared", CHUNKED_HEAD + b"100\r\n" + REJECTED + b"\r\n", (None,), (False,)),
    RawCase("chunked, no last chunk", CHUNKED_HEAD + chunk(REJECTED), (None,), (False,)),
    RawCase("chunked, huge size", CHUNKED_HEAD + b"ffffffffffffffffffff\r\nx\r\n", (None, 400, 413), (False,),
            alternatives=True),
    RawCase("chunked and Content-Length",
            b"POST /IpamDriver.RequestPool HTTP/1.1\r\nContent-Length: 3\r\n" + CHUNKED + chunk(REJECTED)
            + b"0\r\n\r\n", (400,), (False,)),
    RawCase("Transfer-Encoding gzip, chunked",
            b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            + chunk(REJECTED) + b"0\r\n\r\n", (501,), (False,)),
    # bodies over the 64 KiB limit
    RawCase("over 64 KiB, Content-Length", request_bytes("IpamDriver.RequestPool", OVER), (413,), (True,)),
    RawCase("over 64 KiB, chunked", CHUNKED_HEAD + chunk(OVER[:40000]) + chunk(OVER[40000:]) + b"0\r\n\r\n", (413,),
            (True,)),
    RawCase("4 MiB body", request_bytes("IpamDriver.RequestPool", b"x" * (4 << 20)), (413,), (True,)),
    RawCase("Content-Length of 10**20, 3 bytes sent",
            b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000000000\r\n\r\nabc",
            (413,), (False,)),
    # pipelining
    RawCase("three pipelined requests",
            request_bytes("Plugin.Activate") + request_bytes("IpamDriver.GetCapabilities")
            + request_bytes("IpamDriver.RequestPool", REJECTED), (200, 200, 400), (True, True, True), REJECTED_ERR),
    RawCase("pipelined, garbage in the middle",
            request_bytes("Plugin.Activate") + b"GARBAGE\r\n\r\n" + request_bytes("Plugin.Activate"), (200, 400),
            (True, False)),
    # request lines and headers
    RawCase("garbage request line", b"GARBAGE\r\n\r\n", (400,), (False,)),
    RawCase("binary request line", b"\x00\xff\xfe\xfd\x80\r\n\r\n", (400,), (False,)),
    RawCase("method only", b"POST\r\n\r\n", (400,), (False,)),
    RawCase("request line with an extra token", b"POST /Plugin.Activate HTTP/1.1 extra\r\nHost: x\r\n\r\n", (400,),
            (False,)),
    RawCase("HTTP/0.9 request", b"GET /\r\n", (None, 400), (False,), alternatives=True),
    RawCase("unknown HTTP version", b"POST /Plugin.Activate HTTP/9.9\r\nHost: x\r\n\r\n", (200, 400, 505), (False,),
            alternatives=True),
    RawCase("header without a colon", b"POST /Plugin.Activate HTTP/1.1\r\nBad Header\r\n\r\n", (400,), (False,)),
    RawCase("negative Content-Length", b"POST /IpamDriver.RequestPool HTTP/1.1\r\nContent-Length: -1\r\n\r\n", (400,),
            (False,)),
    RawCase("two Content-Lengths", b"POST /IpamDriver.RequestPool HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 5"
            b"\r\n\r\nabcde", (400,), (False,)),
    RawCase("100 KB URL", b"POST /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (404,), (True,)),
    RawCase("100 KB header", request_bytes("Plugin.Activate", headers={"X-Big": "a" * 100_000}), (200,), (True,)),
    RawCase("300 KB header", request_bytes("Plugin.Activate", headers={"X-Big": "a" * 300_000}), (431,), (False,)),
    RawCase("20,000 headers", request_bytes("Plugin.Activate", headers={f"X-{i}": "v" for i in range(20_000)}), (200,),
            (True,)),
    RawCase("Expect: 100-continue", request_bytes("IpamDriver.RequestPool", REJECTED, {"Expect": "100-continue"}),
            (100, 400), (False, True), REJECTED_ERR),
    # HTTP/1.0
    RawCase("HTTP/1.0 Activate, no headers", b"POST /Plugin.Activate HTTP/1.0\r\n\r\n", (200,), (True,)),
    RawCase("HTTP/1.0 with a body", request_bytes("IpamDriver.RequestPool", REJECTED, version="1.0"), (400,), (True,),
            REJECTED_ERR),
    RawCase("HTTP/1.0 keep-alive, two requests",
            request_bytes("Plugin.Activate", headers={"Connection": "keep-alive"}, version="1.0")
            + request_bytes("IpamDriver.GetDefaultAddressSpaces", version="1.0"), (200, 200), (True, True)),
]  # fmt: skip


def check_replies(case: RawCase, replies: list[Response]) -> None:
    statuses: tuple[int | None, ...] = tuple(status for status, _, _ in replies) or (None,)
    RECORDED[case.name] = list(statuses)
    if case.alternatives:
        assert len(statuses) == 1 and statuses[0] in case.expect, (
            f"{case.name}: {statuses}, expected one of {case.expect}"
        )
    else:
        assert statuses == case.expect, f"{case.name}: {statuses}, expected {case.expect}"
    wants_json = case.json if case.json is not None else (True,) * len(replies)
    for (status, headers, body), is_json in zip(replies, wants_json, strict=False):
        if not is_json:
            continue
        assert headers.get("content-type") == CONTENT_TYPE, (case.name, status, headers)
        payload = json.loads(body)
        assert isinstance(payload, dict), payload
        if status != 200:
            assert set(payload) == {"Err"} and isinstance(payload["Err"], str), payload
    if case.err:
        assert case.err in replies[-1][2].decode(), replies[-1]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_raw_bytes_get_an_answer_and_change_nothing(driver: FileDriver, case: RawCase) -> None:
    before = driver.state()
    started = time.monotonic()
    replies = exchange(driver.socket, case.data, count=1 if case.alternatives else len(case.expect), timeout=10)
    assert time.monotonic() - started < 5, f"{case.name} took {time.monotonic() - started:.1f}s to answer"
    check_replies(case, replies)
    driver.healthy()
    assert driver.state() == before, f"{case.name} changed the state files"


METHOD_PATHS = ["Plugin.Activate", "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces",
                "IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress",
                "IpamDriver.ReleaseAddress"]  # fmt: skip


@pytest.mark.parametrize("method", METHOD_PATHS)
def test_every_method_refuses_a_body_over_64_kib_with_a_json_413(driver: FileDriver, method: str) -> None:
    before = driver.state()
    replies = exchange(driver.socket, request_bytes(method, OVER))
    RECORDED[f"over 64 KiB to {method}"] = [status for status, _, _ in replies]
    assert len(replies) == 1
    status, headers, body = replies[0]
    assert headers.get("content-type") == CONTENT_TYPE
    assert status == 413, f"{method} answered {status} {body[:80]!r} to a {len(OVER)}-byte body"
    assert set(json.loads(body)) == {"Err"}
    driver.healthy()
    assert driver.state() == before


def stall(path: Path, partial: bytes) -> socket.socket:
    sock = connect(path, timeout=10)
    sock.sendall(partial)
    return sock


@pytest.mark.parametrize("count", [1, 20])
def test_stalled_clients_do_not_hold_up_others(driver: FileDriver, count: int) -> None:
    """Clients stop mid-body (a Content-Length larger than what they sent) or mid-headers; others are served."""
    before = driver.state()
    partials = [
        b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + REJECTED[:10],
        b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: x\r\nContent-Le",  # slowloris: headers never end
        CHUNKED_HEAD + b"10\r\n" + REJECTED[:4],
    ]
    stalled = [stall(driver.socket, partials[i % len(partials)]) for i in range(count)]
    try:
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            status, _ = call(driver.socket, "Plugin.Activate", timeout=5)
            status2, reply = call(driver.socket, "IpamDriver.RequestAddress",
                                  {"PoolID": "local/10.33.5.0/24", "Address": "10.33.5.1"}, timeout=5)  # fmt: skip
            latencies.append(time.monotonic() - started)
            assert (status, status2) == (200, 409), reply
        RECORDED[f"{count} stalled clients: slowest pair of calls, ms"] = [round(max(latencies) * 1000)]
        assert max(latencies) < 1.0, f"others waited {max(latencies):.2f}s while {count} clients stalled"
        # The stalled ones still get nothing: their requests are incomplete.
        stalled[0].settimeout(0.2)
        with pytest.raises(TimeoutError):
            stalled[0].recv(1)
    finally:
        for sock in stalled:
            sock.close()
    driver.healthy()
    assert driver.state() == before


def test_clients_that_disconnect_mid_request_or_right_after_sending(driver: FileDriver) -> None:
    before = driver.state()
    cut_offs = [
        b"POST /IpamDriver.Requ",  # mid request line
        b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: x\r\nContent-Len",  # mid headers
        b"POST /IpamDriver.RequestPool HTTP/1.1\r\nContent-Length: 200\r\n\r\n" + b'{"AddressSpace": "local", "Po',
        CHUNKED_HEAD + chunk(b'{"AddressSpace": "local", "Pool": ""}'),  # the last chunk never comes
        request_bytes("IpamDriver.RequestPool", REJECTED),  # complete, refused: gone before the answer
        request_bytes("IpamDriver.ReleasePool", b'{"PoolID": "local/10.99.0.0/28"}'),  # complete, not held
    ]
    for data in cut_offs:
        sock = connect(driver.socket)
        sock.sendall(data)
        sock.close()
    for data in cut_offs:  # and with a reset (SO_LINGER 0) instead of a clean close
        sock = connect(driver.socket)
        sock.sendall(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    driver.healthy()
    assert driver.state() == before
    # A valid request whose client leaves at once is carried out, once, and its claim is whole.
    journal = driver.directory / "state.json.0.log"
    lines = journal.read_bytes().count(b"\n")
    sock = connect(driver.socket)
    sock.sendall(request_bytes("IpamDriver.RequestPool", b'{"AddressSpace": "local", "Pool": "10.33.9.0/24"}'))
    sock.close()
    wait_until(lambda: journal.read_bytes().count(b"\n") > lines, timeout=5, what="the abandoned request to land")
    driver.healthy()
    assert journal.read_bytes().count(b"\n") == lines + 1
    status, reply = call(driver.socket, "IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "10.33.9.0/24"})
    assert status == 409 and "held in address space local by host raw" in reply["Err"], reply
    assert call(driver.socket, "IpamDriver.ReleasePool", {"PoolID": "local/10.33.9.0/24"}) == (200, {})


def test_many_clients_at_once_with_hostile_bytes(driver: FileDriver) -> None:
    """Every raw case at once, from many threads: the driver answers them all, then still works."""
    before = driver.state()
    failures: list[str] = []

    def run(case: RawCase) -> None:
        try:
            count = 1 if case.alternatives else len(case.expect)
            check_replies(case, exchange(driver.socket, case.data, count=count, timeout=15))
        except Exception as exc:  # collected: a thread cannot fail the test itself
            failures.append(f"{case.name}: {exc!r}")

    threads = [threading.Thread(target=run, args=(case,)) for case in CASES * 2 if len(case.data) < 500_000]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    driver.healthy()
    assert driver.state() == before


def test_log_lines_cannot_be_forged_from_a_request(driver: FileDriver) -> None:
    """A newline in a PoolID, a Pool or the path must not start a new log line that looks like the driver's."""
    forged = "2026-01-01 00:00:00,000 ERROR mini_ipam: FORGED"
    size = driver.process.log.stat().st_size
    call(driver.socket, "IpamDriver.ReleasePool", {"PoolID": f"local/10.33.5.0/24\n{forged} (PoolID)"})
    call(driver.socket, "IpamDriver.RequestPool", {"AddressSpace": "x", "Pool": f"10.1.0.0/24\n{forged} (Pool)"})
    exchange(driver.socket, request_bytes("Plugin.Activate%0A" + forged.replace(" ", "%20") + "%20(path)"))
    driver.healthy()
    with open(driver.process.log, "rb") as log:
        log.seek(size)
        written = log.read().decode(errors="replace")
    assert "FORGED" in written, "the requests were not logged at all"
    forged_lines = [line for line in written.splitlines() if line.startswith(forged)]
    assert forged_lines == [], "a client wrote its own lines into the driver's log:\n" + "\n".join(forged_lines)


def test_read_responses_survives_a_server_that_closes(driver: FileDriver) -> None:
    """The helper itself: an HTTP/1.0 reply ends the connection, and reading on returns what came."""
    sock = connect(driver.socket)
    try:
        sock.sendall(b"POST /Plugin.Activate HTTP/1.0\r\n\r\n" * 2)
        replies = read_responses(sock, count=2)
    finally:
        sock.close()
    assert [status for status, _, _ in replies] == [200]
