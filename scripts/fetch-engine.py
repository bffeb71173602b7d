#!/usr/bin/env python3
"""Fetch a Docker engine (or docker-compose) of a named version; print the PATH prefix that runs it.

    scripts/fetch-engine.py 20.10           # bookworm's docker.io, as apt installed it
    scripts/fetch-engine.py 26.1.5          # trixie's docker.io, docker-cli, containerd
    scripts/fetch-engine.py 28.5.2          # forky's (sid's) docker.io, docker-cli, containerd 2.1.9
    scripts/fetch-engine.py compose-2.40.3  # forky's (sid's) docker-compose v2
    PATH="$(scripts/fetch-engine.py 28.5.2):$PATH" dockerd --version

Newer engines come as pinned .debs from the Debian mirror apt already uses (the first
non-security ``URIs:`` of /etc/apt/sources.list.d/debian.sources, else the bookworm ``deb`` line of
/etc/apt/sources.list; ``MINI_IPAM_DEBIAN_MIRROR`` overrides). Each .deb must be listed in its
suite's ``Packages.xz`` with the SHA256 pinned below, the index must match its hash in the suite's
``InRelease`` and that file must carry a good signature of a key in the machine's Debian archive
keyring (gpgv): any mismatch is refused and nothing is used. Nothing is fetched from anywhere else.

The .debs are unpacked with ``dpkg -x`` into ``<cache>/<version>/root`` (``<cache>`` is
``MINI_IPAM_ENGINE_CACHE``, default ``~/.cache/mini-ipam/engines``), and ``<cache>/<version>/bin``
gets links to the binaries; that directory is what is printed. A second run finds it and downloads
nothing. ``runc`` is left out on purpose: trixie's and sid's need glibc 2.38, and bookworm's
``/usr/sbin/runc`` (1.1.5, from docker.io) works with these engines, found further down PATH.

For 20.10 nothing is downloaded: ``bin`` links to bookworm's /usr/sbin/dockerd and /usr/bin/docker,
so that the client matching the engine is first on PATH (a separate static docker CLI in
/usr/local/bin would otherwise shadow /usr/bin/docker).

Exit status: 0 and the directory on stdout; 1 and the reason on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
FALLBACK_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Deb:
    """One pinned package: its path under the mirror root and the SHA256 its suite's index gives."""

    package: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Release:
    """A version this script can fetch: the suites whose index may list it, its .debs, its binaries."""

    suites: tuple[str, ...]
    """Tried in order; the first whose index lists every .deb with its pinned hash is used."""
    debs: tuple[Deb, ...]
    binaries: dict[str, str]
    """Link name in ``bin`` -> path inside the unpacked root."""


ENGINE_BINARIES = {
    "dockerd": "usr/sbin/dockerd",
    "docker-proxy": "usr/sbin/docker-proxy",
    "docker": "usr/bin/docker",
    "containerd": "usr/bin/containerd",
    "containerd-shim-runc-v2": "usr/bin/containerd-shim-runc-v2",
    "ctr": "usr/bin/ctr",
}

RELEASES: dict[str, Release] = {
    "26.1.5": Release(
        suites=("trixie",),
        debs=(
            Deb(
                "docker.io",
                "pool/main/d/docker.io/docker.io_26.1.5+dfsg1-9+deb13u1+b1_amd64.deb",
                "53ae1a99f15113f0a0d2226808ec0d24ee31b3b87b87ab8ec35be09a1a2ee13b",
            ),
            Deb(
                "docker-cli",
                "pool/main/d/docker.io/docker-cli_26.1.5+dfsg1-9+deb13u1+b1_amd64.deb",
                "596647bc4ffaaaf2e2321116b8a10f6a6086ada797c17a7117798cb391a72776",
            ),
            Deb(
                "containerd",
                "pool/main/c/containerd/containerd_1.7.24~ds1-6+deb13u1_amd64.deb",
                "ed708deb96fe476a3bce4efa5c0538dfbcf717ab9a7c7944ba7260342c25899c",
            ),
        ),
        binaries=ENGINE_BINARIES,
    ),
    "28.5.2": Release(
        suites=("forky", "sid"),
        debs=(
            Deb(
                "docker.io",
                "pool/main/d/docker.io/docker.io_28.5.2+dfsg4-5_amd64.deb",
                "69a59cc77a1fb8ee9ad6859abc2e6de5d76b70887405595c2b1307818fecf682",
            ),
            Deb(
                "docker-cli",
                "pool/main/d/docker.io/docker-cli_28.5.2+dfsg4-5_amd64.deb",
                "8ea2428acdda666f41263f5a0d3a85681a696491361574eb7bd721a1194939b9",
            ),
            Deb(
                "containerd",
                "pool/main/c/containerd/containerd_2.1.9+ds1-5_amd64.deb",
                "2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591",
            ),
        ),
        binaries=ENGINE_BINARIES,
    ),
    "compose-2.40.3": Release(
        suites=("forky", "sid"),
        debs=(
            Deb(
                "docker-compose",
                "pool/main/d/docker-compose/docker-compose_2.40.3-3_amd64.deb",
                "e7603d5e6df0f8404f7b03da478022b87d7b50644cffe68884b071e5cfc17fd3",
            ),
        ),
        binaries={"docker-compose": "usr/bin/docker-compose"},
    ),
}

SYSTEM = {"20.10": {"dockerd": Path("/usr/sbin/dockerd"), "docker": Path("/usr/bin/docker")}}
"""Versions apt installs: link names -> the installed binaries."""

VERSIONS = (*SYSTEM, *RELEASES)


class Refused(Exception):
    """The version cannot be fetched or verified; the message says why."""


def debian_mirror() -> str:
    """The mirror to use: MINI_IPAM_DEBIAN_MIRROR, else the one apt's sources name."""
    if os.environ.get("MINI_IPAM_DEBIAN_MIRROR"):
        return os.environ["MINI_IPAM_DEBIAN_MIRROR"].rstrip("/")
    with contextlib.suppress(OSError):
        text = Path("/etc/apt/sources.list.d/debian.sources").read_text()
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1).rstrip("/")
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and fields[2] == "bookworm":
                return fields[1].rstrip("/")
    raise Refused("no Debian mirror in apt's sources; set MINI_IPAM_DEBIAN_MIRROR")


def cache_root() -> Path:
    """Where fetched versions live between runs."""
    if os.environ.get("MINI_IPAM_ENGINE_CACHE"):
        return Path(os.environ["MINI_IPAM_ENGINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mini-ipam" / "engines"


def download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` (via a temporary name, so a broken download leaves nothing)."""
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=120) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise Refused(f"cannot download {url}: {exc}") from exc
    partial.replace(target)


def sha256(path: Path) -> str:
    """The SHA256 of a file, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_index(mirror: str, suite: str, work: Path) -> dict[str, str]:
    """``Filename`` -> ``SHA256`` of the suite's main amd64 index, after checking the chain of trust.

    InRelease must carry a good signature of the Debian archive keyring; the index must have the
    SHA256 InRelease gives it.
    """
    in_release = work / f"{suite}.InRelease"
    download(f"{mirror}/dists/{suite}/InRelease", in_release)
    if not KEYRING.is_file():
        raise Refused(f"no Debian archive keyring at {KEYRING} (apt-get install debian-archive-keyring)")
    checked = subprocess.run(
        ["gpgv", "--keyring", str(KEYRING), str(in_release)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        raise Refused(f"{suite}'s InRelease has no good signature of {KEYRING}:\n{checked.stderr}")
    sums = in_release.read_text().split("\nSHA256:", 1)
    match = re.search(r"^ ([0-9a-f]{64})\s+\d+ main/binary-amd64/Packages\.xz$", sums[-1], re.MULTILINE)
    if len(sums) != 2 or match is None:
        raise Refused(f"{suite}'s InRelease gives no SHA256 for main/binary-amd64/Packages.xz")
    index = work / f"{suite}.Packages.xz"
    download(f"{mirror}/dists/{suite}/main/binary-amd64/Packages.xz", index)
    if sha256(index) != match.group(1):
        raise Refused(f"{suite}'s Packages.xz does not have the SHA256 its InRelease gives")
    listed = {}
    for stanza in lzma.decompress(index.read_bytes()).decode().split("\n\n"):
        filename = re.search(r"^Filename: (\S+)$", stanza, re.MULTILINE)
        digest = re.search(r"^SHA256: ([0-9a-f]{64})$", stanza, re.MULTILINE)
        if filename and digest:
            listed[filename.group(1)] = digest.group(1)
    return listed


def pick_suite(mirror: str, version: str, release: Release, work: Path) -> str:
    """The first suite whose verified index lists every pinned .deb with its pinned SHA256."""
    reasons = []
    for suite in release.suites:
        listed = verified_index(mirror, suite, work)
        wrong = [
            f"{deb.filename}: the index says {listed.get(deb.filename, 'nothing')}, pinned {deb.sha256}"
            for deb in release.debs
            if listed.get(deb.filename) != deb.sha256
        ]
        if not wrong:
            return suite
        reasons.append(f"{suite}: " + "; ".join(wrong))
    raise Refused(
        f"{version}: no suite of {mirror} lists the pinned .debs (a newer version may have replaced them;"
        " update the pins in this script, or point MINI_IPAM_DEBIAN_MIRROR at a mirror that has them):\n"
        + "\n".join(reasons)
    )


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (two runs fetching at once take turns)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def link_binaries(bin_dir: Path, binaries: dict[str, Path]) -> None:
    """Make ``bin_dir`` hold exactly links named as ``binaries``, to those paths."""
    missing = [str(path) for path in binaries.values() if not os.access(path, os.X_OK)]
    if missing:
        raise Refused(f"not executable: {', '.join(missing)}")
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir(parents=True)
    for name, path in binaries.items():
        (bin_dir / name).symlink_to(path)


def fetch_system(version: str) -> Path:
    """A ``bin`` of links to the installed binaries of ``version``."""
    binaries = SYSTEM[version]
    if not all(path.exists() for path in binaries.values()):
        raise Refused(f"{version} is Debian bookworm's docker.io: apt-get install docker.io")
    directory = cache_root() / version
    with locked(directory):
        link_binaries(directory / "bin", binaries)
    return directory / "bin"


def fetch_release(version: str) -> Path:
    """Download, verify and unpack ``version`` unless the cache has it already; its ``bin``."""
    release = RELEASES[version]
    directory = cache_root() / version
    stamp_text = json.dumps({deb.filename: deb.sha256 for deb in release.debs}, sort_keys=True)
    stamp = directory / "fetched.json"
    with locked(directory):
        if stamp.is_file() and stamp.read_text() == stamp_text and (directory / "bin").is_dir():
            return directory / "bin"
        mirror = debian_mirror()
        with tempfile.TemporaryDirectory(dir=directory, prefix="fetch-") as tmp:
            work = Path(tmp)
            suite = pick_suite(mirror, version, release, work)
            root = work / "root"
            for deb in release.debs:
                target = work / Path(deb.filename).name
                print(f"fetch-engine: {version}: {deb.package} from {mirror} ({suite})", file=sys.stderr)
                download(f"{mirror}/{deb.filename}", target)
                if sha256(target) != deb.sha256:
                    raise Refused(f"{target.name} does not have its pinned SHA256 {deb.sha256}: refused")
                subprocess.run(["dpkg", "-x", str(target), str(root)], check=True)
            shutil.rmtree(directory / "root", ignore_errors=True)
            root.replace(directory / "root")
        stamp.unlink(missing_ok=True)
        link_binaries(directory / "bin", {name: directory / "root" / path for name, path in release.binaries.items()})
        stamp.write_text(stamp_text)
    return directory / "bin"


def fetch(version: str) -> Path:
    """The directory to put first on PATH for ``version``; raises Refused."""
    if version in SYSTEM:
        return fetch_system(version)
    if version in RELEASES:
        return fetch_release(version)
    raise Refused(f"unknown version {version!r}; known: {', '.join(VERSIONS)}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help=f"one of {', '.join(VERSIONS)}")
    args = parser.parse_args(argv)
    try:
        print(fetch(args.version))
    except (Refused, subprocess.CalledProcessError) as exc:
        print(f"fetch-engine: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
