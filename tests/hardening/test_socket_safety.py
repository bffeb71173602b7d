"""The plugin socket and the process around it: permissions, what is refused at the path, no network
listener, and no secret in logs, replies or help.

tests/test_server.py already covers a regular file, a symlink and a live driver's
socket at the path, and --socket-group by name; this adds what it does not.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mini_ipam import protocol
from tests.driver_process import DriverProcess, call
from tests.servers import RedisServer

SECRET = "s3cretpass"
SECRET_URL = f"redis://user:{SECRET}@127.0.0.1:1/0"  # loopback port 1: nothing listens there


@pytest.fixture
def running() -> Iterator[list[DriverProcess]]:
    drivers: list[DriverProcess] = []
    yield drivers
    for driver in drivers:
        driver.stop()


def start(running: list[DriverProcess], path: Path, *flags: str) -> DriverProcess:
    driver = DriverProcess(path, *flags)
    running.append(driver)
    return driver.start()


def serve_refused(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(path), "--store", "memory://", *flags],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


# -- permissions --------------------------------------------------------------------


def test_the_socket_is_0660_owned_by_the_driver_and_its_group(tmp_path: Path, running: list[DriverProcess]) -> None:
    driver = start(running, tmp_path / "mini.sock", "--store", "memory://")
    info = os.lstat(driver.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660, oct(info.st_mode)
    assert info.st_uid == os.geteuid() and info.st_gid == os.getegid()
    if os.geteuid() == 0:
        assert info.st_uid == 0, "run as root, the socket must be root's"


def test_a_numeric_socket_group(tmp_path: Path, running: list[DriverProcess]) -> None:
    gid = grp.getgrnam("daemon").gr_gid
    driver = start(running, tmp_path / "mini.sock", "--store", "memory://", "--socket-group", str(gid))
    info = os.lstat(driver.socket_path)
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o660)


def test_an_unknown_socket_group_is_refused_and_leaves_no_socket(tmp_path: Path) -> None:
    result = serve_refused(tmp_path / "mini.sock", "--socket-group", "no-such-group-here")
    assert result.returncode == 2
    assert result.stderr == ("mini-ipam serve: flag --socket-group: 'no-such-group-here' is not a group of this "
                             "host (a name in /etc/group, or a number)\n")  # fmt: skip
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mini.sock").exists()


# -- what is at the path ----------------------------------------------------------------


def make_directory(path: Path) -> None:
    path.mkdir()
    (path / "keep").write_text("precious")


def make_dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere.sock")


def make_symlink_to_stale_socket(path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path.parent / "stale.sock"))
    stale.close()
    path.symlink_to(path.parent / "stale.sock")


def make_symlink_to_directory(path: Path) -> None:
    (path.parent / "dir").mkdir()
    path.symlink_to(path.parent / "dir")


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (make_directory, "is not a socket"),
        (make_dangling_symlink, "is a symbolic link"),
        (make_symlink_to_stale_socket, "is a symbolic link"),
        (make_symlink_to_directory, "is a symbolic link"),
        (make_fifo, "is not a socket"),
    ],
    ids=["directory", "dangling symlink", "symlink to a stale socket", "symlink to a directory", "fifo"],
)
def test_refuses_what_is_not_a_stale_socket(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "mini.sock"
    make(path)  # type: ignore[operator]
    before = os.lstat(path)
    result = serve_refused(path)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), "the thing at the path was replaced"
    if path.is_dir() and not path.is_symlink():
        assert (path / "keep").read_text() == "precious"
    assert not (tmp_path / "nowhere.sock").exists(), "a socket was created through the dangling symlink"


# -- no network listener ------------------------------------------------------------------


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match[1])
    return inodes


def inet_sockets(pid: int) -> dict[str, list[str]]:
    """The process's entries in /proc/<pid>/net/{tcp,tcp6,udp,udp6,raw,raw6}, by table."""
    mine = socket_inodes(pid)
    found: dict[str, list[str]] = {}
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in mine:
                found.setdefault(table, []).append(line.strip())
    return found


def check_no_listener(driver: DriverProcess, *, outbound_tcp_allowed: bool = False) -> None:
    assert driver.process is not None
    pid = driver.process.pid
    found = inet_sockets(pid)
    listening = [line for table in ("tcp", "tcp6") for line in found.get(table, []) if line.split()[3] == "0A"]
    assert listening == [], f"the driver listens on TCP: {listening}"
    assert not any(found.get(t) for t in ("udp", "udp6", "raw", "raw6")), f"the driver has datagram sockets: {found}"
    if not outbound_tcp_allowed:
        assert found == {}, f"the driver has network sockets: {found}"
    # Its one listening socket is the plugin socket.
    unix = [line.split() for line in Path("/proc/net/unix").read_text().splitlines()[1:]]
    mine = socket_inodes(pid)
    listening_unix = [f[7] if len(f) > 7 else "" for f in unix if f[6] in mine and f[5] == "01" and f[3] == "00010000"]
    assert listening_unix == [str(driver.socket_path)], listening_unix
    ss = shutil.which("ss")
    if ss is not None:
        report = subprocess.run([ss, "-ltunpH"], capture_output=True, text=True, timeout=10).stdout
        assert f"pid={pid}," not in report, report


def test_no_network_listener_with_the_file_store(tmp_path: Path, running: list[DriverProcess]) -> None:
    driver = start(running, tmp_path / "mini.sock", "--store", f"file://{tmp_path}/state.json")
    call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool())
    check_no_listener(driver)


@pytest.mark.redis
def test_no_network_listener_with_a_redis_store(
    tmp_path: Path, running: list[DriverProcess], redis_server: RedisServer
) -> None:
    driver = start(running, tmp_path / "mini.sock", "--store", f"{redis_server.url}?prefix=nolisten{os.getpid()}")
    assert call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool())[0] == 200
    check_no_listener(driver)


# -- secrets --------------------------------------------------------------------------------

SECRET_CALLS = [
    ("Plugin.Activate", None),
    ("IpamDriver.GetCapabilities", None),
    ("IpamDriver.GetDefaultAddressSpaces", None),
    ("IpamDriver.RequestPool", protocol.request_pool(options={})),
    ("IpamDriver.RequestPool", protocol.request_pool(options={}, v6=True)),
    ("IpamDriver.RequestPool", protocol.request_pool("global", "10.9.0.0/24", "10.9.0.0/25")),
    ("IpamDriver.RequestAddress", protocol.request_address("local/10.9.0.0/24", "")),
    ("IpamDriver.RequestAddress", protocol.request_address("local/10.9.0.0/24", "10.9.0.5")),
    ("IpamDriver.ReleaseAddress", protocol.release_address("local/10.9.0.0/24", "10.9.0.5")),
    ("IpamDriver.ReleasePool", protocol.release_pool("local/10.9.0.0/24")),
]


@pytest.mark.parametrize(
    "url",
    [SECRET_URL, "redis://:s3cret%70ass@127.0.0.1:1/0", f"rediss://user:{SECRET}@127.0.0.1:1/0?ssl_cert_reqs=none"],
    ids=["user and password", "percent-encoded password alone", "tls"],
)  # fmt: skip
def test_the_store_password_never_appears(tmp_path: Path, running: list[DriverProcess], url: str) -> None:
    driver = start(running, tmp_path / "mini.sock", "--store", url, "--store-timeout", "1", "--log-level", "debug",
                   "--host-ttl", "0.5", "--host-id", "secretive")  # fmt: skip
    replies = []
    for method, body in SECRET_CALLS:
        status, reply = call(driver.socket_path, method, body)
        replies.append((method, status, reply))
        if method.startswith("IpamDriver.R"):
            assert status == 503 and "the address store failed" in reply["Err"], (method, status, reply)
    assert driver.process is not None
    with pytest.raises(subprocess.TimeoutExpired):
        driver.process.wait(timeout=1.2)  # let the heartbeat thread fail a few times too
    check_no_listener(driver, outbound_tcp_allowed=True)
    assert driver.signal(signal.SIGTERM) == 0
    log = driver.log.read_text()
    for text in (SECRET, "s3cret%70ass"):
        assert text not in log, f"the password is in the driver's log:\n{log}"
        assert text not in repr(replies), f"the password is in a reply: {replies}"
    assert "***" in log or "127.0.0.1:1" in log, "the store was never named in the log: is the check looking?"


def test_help_and_errors_never_show_the_password(tmp_path: Path) -> None:
    commands = [[sys.executable, "-m", "mini_ipam", "serve", "--help"]]
    if shutil.which("mini-ipam"):
        commands.append(["mini-ipam", "serve", "--help"])
    environment = {**os.environ, "MINI_IPAM_STORE": SECRET_URL}  # the store given the way the README suggests
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=environment)
        assert result.returncode == 0, result.stderr
        assert "--store" in result.stdout
        assert SECRET not in result.stdout + result.stderr, f"{command} shows the password"
    # A store URL that cannot be used is refused without quoting its password.
    for bad in (f"{SECRET_URL}?bogus=1", f"redis://user:{SECRET}@127.0.0.1:notaport/0", f"ftp://user:{SECRET}@h/"):
        result = serve_refused(tmp_path / "x.sock", "--store", bad)
        assert result.returncode != 0
        assert SECRET not in result.stdout + result.stderr, f"{bad!r} is quoted with its password: {result.stderr}"
        assert "Traceback" not in result.stderr


class PasswordRedis(RedisServer):
    """A server that wants a password."""

    options = ("--requirepass", "rightpass")


@pytest.mark.redis
def test_a_wrong_or_right_password_on_a_real_redis_is_never_shown(tmp_path: Path, running: list[DriverProcess]) -> None:
    server = PasswordRedis(tmp_path)
    server.start()
    try:
        for number, (password, works) in enumerate(((SECRET, False), ("rightpass", True))):
            url = f"unix://:{password}@{server.socket}?db=0&prefix=pw{os.getpid()}"
            driver = start(running, tmp_path / f"pw{number}.sock", "--store", url, "--store-timeout", "1",
                           "--log-level", "debug")  # fmt: skip
            status, reply = call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool())
            if works:
                assert status == 200, reply
            else:
                assert status == 503 and "refused the credentials" in reply["Err"], (status, reply)
            assert password not in repr(reply)
            assert driver.signal(signal.SIGTERM) == 0
            log = driver.log.read_text()
            assert password not in log, log
            assert "***" in log
    finally:
        server.stop()
