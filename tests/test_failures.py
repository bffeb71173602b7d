"""Failures a user can cause or meet: what each one says to do, that it is logged at warning or error, and
that /healthz shows it while the driver runs through it.

Failures at start-up (no permission, an unreadable or corrupt state, a taken socket)
stop the driver with one line, logged at error. Failures while it runs (a full disk,
a store that does not answer) are refused requests that change nothing, an error in
the log, and a 503 on /healthz until they are over.

Permissions are tried for real, which needs root to set up: as ``nobody`` (with only
the capability to read, so that it can run this checkout's interpreter wherever that
lies, and never to write), and as root without the capabilities that override file
modes. A full disk is a small tmpfs mounted for the test and unmounted after it.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mini_ipam import protocol
from mini_ipam.operations import STORE_ADVICE
from mini_ipam.unix_http import get_json
from stores.file import FileStore
from tests.driver_process import DriverProcess, call
from tests.servers import unavailable, wait_until


def privileges(*setpriv: str) -> list[str]:
    """A command prefix that runs with other privileges (root is needed to set them up)."""
    if os.geteuid() != 0:
        unavailable("the permission tests set up users and modes as root")
    binary = shutil.which("setpriv")
    if binary is None:
        unavailable("setpriv is not installed (apt-get install util-linux)")
    return [binary, *setpriv]


def as_nobody() -> list[str]:
    nobody = pwd.getpwnam("nobody")
    return privileges(f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                      "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")  # fmt: skip


def as_root_without_file_overrides() -> list[str]:
    return privileges("--bounding-set=-dac_override,-dac_read_search")


def refused_start(*flags: str, prefix: list[str] | None = None) -> str:
    """Run ``mini-ipam serve`` expecting it to stop at start-up; its one error, the last line it logs."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MINI_IPAM_")}
    result = subprocess.run([*(prefix or []), sys.executable, "-m", "mini_ipam", "serve", *flags],
                            capture_output=True, text=True, timeout=60, env=environment)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0] == result.stderr.splitlines()[-1], result.stderr
    assert " ERROR mini_ipam: mini-ipam serve: " in errors[0]
    return errors[0].split(" ERROR mini_ipam: mini-ipam serve: ", 1)[1]


# -- no permission ---------------------------------------------------------------------------------


def test_a_socket_that_cannot_be_written_says_run_as_root(tmp_path: Path) -> None:
    line = refused_start("--socket", f"{tmp_path}/plugins/mini.sock", "--store", "memory://", prefix=as_nobody())
    assert line == (f"cannot serve on {tmp_path}/plugins/mini.sock ({tmp_path}/plugins): permission denied: "
                    "run as root, or choose a --socket PATH you can write")  # fmt: skip
    assert not (tmp_path / "plugins").exists()


def test_a_state_directory_that_cannot_be_created_says_run_as_root(tmp_path: Path) -> None:
    store = f"file://{tmp_path}/state/state.json"
    line = refused_start("--socket", f"{tmp_path}/mini.sock", "--store", store, prefix=as_nobody())
    assert line == (f"cannot open the store {store}: cannot create the state directory {tmp_path}/state: "
                    "permission denied: run as root, or choose a --store file:///PATH/state.json "
                    "you can write")  # fmt: skip


def test_a_state_directory_that_cannot_be_written_says_run_as_root(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)
    store = f"file://{tmp_path}/state/state.json"
    line = refused_start("--socket", f"{tmp_path}/mini.sock", "--store", store, prefix=as_nobody())
    assert line == (f"cannot open the store {store}: cannot open the lock file {tmp_path}/state/state.json.lock: "
                    "permission denied: run as root, or choose a --store file:///PATH/state.json "
                    "you can write")  # fmt: skip
    assert os.listdir(tmp_path / "state") == []


def test_an_unreadable_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "generation": 0, "events": []}')
    nobody = pwd.getpwnam("nobody")
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    state.chmod(0o600)
    store = f"file://{state}"
    line = refused_start("--socket", f"{tmp_path}/mini.sock", "--store", store,
                         prefix=as_root_without_file_overrides())  # fmt: skip
    assert line == (f"cannot open the store {store}: cannot read the state file {state}: permission denied: check "
                    "its owner and mode, and what confines this process (AppArmor, SELinux), or choose a --store "
                    "file:///PATH/state.json")  # fmt: skip
    assert not (tmp_path / "mini.sock").exists()


def test_a_directory_where_the_state_file_should_be(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    store = f"file://{tmp_path}/state.json"
    line = refused_start("--socket", f"{tmp_path}/mini.sock", "--store", store)
    assert line == (f"cannot open the store {store}: cannot read the state file {tmp_path}/state.json: it is a "
                    "directory: a directory is in the way; choose a --store file:///PATH/state.json "
                    "that names a file")  # fmt: skip


# -- a corrupt state ----------------------------------------------------------------------------------


def test_a_corrupt_journal_line_names_the_line_and_how_to_start_again(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": 1, "generation": 0, "events": []}')
    good = json.dumps({"op": "set", "name": "pool6", "value": "fd00:1::/48"})
    (tmp_path / "state.json.0.log").write_text(f"{good}\nnot json\n{good}\n")
    line = refused_start("--socket", f"{tmp_path}/mini.sock", "--store", f"file://{state}")
    assert line.startswith(f"journal {state}.0.log line 2 is not valid JSON: Expecting value: ")
    assert line.endswith(
        f"The state is left as it is. To start again: stop the driver, move {state} and its journals ({state}.*.log) "
        "aside, run `mini-ipam reconcile --apply` (with the driver stopped it writes a new state file holding what "
        "the engine uses), then start the driver"
    )
    assert (tmp_path / "state.json.0.log").read_text() == f"{good}\nnot json\n{good}\n"


def test_a_state_file_of_another_version_is_not_called_corrupt(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": 2, "generation": 0, "events": []}')
    line = refused_start("--socket", f"{tmp_path}/mini.sock", "--store", f"file://{state}")
    assert line == (f"cannot open the store file://{state}: state file {state} is in format 2, which another version "
                    "of mini-ipam wrote; this version reads format 1: install the version that wrote it (the file is "
                    "left as it is)")  # fmt: skip
    assert state.read_text() == '{"format": 2, "generation": 0, "events": []}'


def test_a_live_socket_at_the_path_says_what_to_do(tmp_path: Path) -> None:
    first = DriverProcess(tmp_path / "mini.sock", "--store", "memory://").start()
    try:
        line = refused_start("--socket", str(first.socket_path), "--store", "memory://")
        assert line == (f"cannot serve on {first.socket_path}: {first.socket_path} is in use by a running process "
                        "(another driver?): stop it first, or choose another --socket")  # fmt: skip
        assert call(first.socket_path, "Plugin.Activate")[0] == 200
    finally:
        first.stop()


# -- a full disk -----------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs of this test's own, unmounted afterwards."""
    if os.geteuid() != 0:
        unavailable("a full disk is a tmpfs mounted for the test, which needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "mini-ipam-test", str(mount_point)],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], timeout=30)


def fill(path: Path) -> None:
    """Write ``path`` until the file system has no room left."""
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_full_disk_is_refused_logged_and_shown_until_there_is_room(small_disk: Path, tmp_path: Path) -> None:
    state = small_disk / "state.json"
    journal = f"{state}.0.log"
    driver = DriverProcess(tmp_path / "mini.sock", "--store", f"file://{state}", "--pool", "10.90.0.0/16").start()
    sock = str(driver.socket_path)
    try:
        body = protocol.request_pool(options={"size": "29"})
        granted = [call(sock, "IpamDriver.RequestPool", body)[1]["Pool"]]
        fill(small_disk / "filler")
        # The journal's last page may still hold a few lines: ask until the disk says no.
        for _ in range(200):
            status, reply = call(sock, "IpamDriver.RequestPool", body)
            if status != 200:
                break
            granted.append(reply["Pool"])
        reason = f"no space left on device on {journal} (file system {small_disk})"
        assert (status, reply) == (503, {"Err": "the address store failed, nothing was changed: cannot write the "
                                                f"journal {journal}: {reason}"})  # fmt: skip
        status, health = get_json(sock, "/healthz")
        assert (status, health) == (503, {"host_id": health["host_id"], "status": "unavailable", "store": "failing",
                                          "error": f"cannot write the journal {journal}: {reason}"})  # fmt: skip
        log = driver.log_text()
        assert f" ERROR stores.file: cannot write the journal {journal}: {reason}; every change is refused" in log
        assert " WARNING mini_ipam.requests: RequestPool pool=- 503 the address store failed" in log

        (small_disk / "filler").unlink()
        status, health = get_json(sock, "/healthz")
        assert (status, health["status"], health["store"]) == (200, "ok", "reachable"), health
        assert f" WARNING stores.file: the journal of {state} can be written again" in driver.log_text()
        status, reply = call(sock, "IpamDriver.RequestPool", body)
        assert status == 200, reply
        granted.append(reply["Pool"])
    finally:
        driver.stop()
    # What was granted is kept, and nothing that was refused.
    store = FileStore(state)
    try:
        assert sorted(str(pool.subnet) for pool in store.pools()) == sorted(granted)
    finally:
        store.close()


# -- a store that does not answer -----------------------------------------------------------------------


def test_a_store_that_does_not_answer_at_start(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/0"  # loopback port 1: nothing listens there
    driver = DriverProcess(tmp_path / "mini.sock", "--store", url, "--store-timeout", "500ms").start()
    try:
        status, health = get_json(str(driver.socket_path), "/healthz")
        assert status == 503
        assert (health["status"], health["store"], health["advice"]) == ("unavailable", "unreachable", STORE_ADVICE)
        assert "could not reach redis at redis://127.0.0.1:1/0" in health["error"]
        wait_until(lambda: "does not answer yet" in driver.log_text(), what="the warning")
        (line,) = [line for line in driver.log_text().splitlines() if "does not answer yet" in line]
        assert f" WARNING mini_ipam: the store {url} does not answer yet (could not reach redis at " in line
        assert line.endswith(f"): {STORE_ADVICE}")
        assert call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool())[0] == 503
    finally:
        driver.stop()
