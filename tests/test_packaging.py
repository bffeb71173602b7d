"""Packaging and installing: the build is warning-free with its pinned requirements, the wheel is complete,
the sdist ships the package and no tests, and scripts/install.sh and scripts/build-plugin.sh build from a
copy, so a checkout is left as it was and an upgrade installs exactly what the checkout holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import require_binary, unavailable

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LEFT_BY_TOOLS = ("build", "dist", "*.egg-info", ".venv", ".git", "__pycache__", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", ".hypothesis")  # fmt: skip
BUILD = """
import sys
from setuptools import build_meta
directory = sys.argv[1]  # read first: the backend rewrites sys.argv
print("sdist", build_meta.build_sdist(directory))
print("wheel", build_meta.build_wheel(directory))
"""


def package_files() -> set[str]:
    """Every module and data file of the packages, relative to the checkout."""
    return {
        str(path.relative_to(ROOT))
        for package in ("mini_ipam", "stores")
        for path in (ROOT / package).rglob("*")
        if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts
    }


def clean_copy(destination: Path) -> Path:
    """The checkout without what tools and earlier builds left in it (a build/ would hide missing packages)."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*LEFT_BY_TOOLS))
    return destination


def listing(tree: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``tree`` with its size and modification time."""
    return {str(p.relative_to(tree)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(tree.rglob("*"))}


def build_environment() -> dict[str, str]:
    """The environment of a build: warnings are errors, and nothing here turns a setuptools step off."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS")}
    return environment | {"PYTHONWARNINGS": "error"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """The sdist and the wheel, built by the backend with exactly the pinned build requirements; its output."""
    work = tmp_path_factory.mktemp("build")
    venv.create(work / "venv", with_pip=True)
    python = str(work / "venv" / "bin" / "python")
    requirements = PYPROJECT["build-system"]["requires"]
    installed = subprocess.run([python, "-m", "pip", "install", "--quiet", *requirements],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    source = clean_copy(work / "source")
    result = subprocess.run([python, "-c", BUILD, str(work / "dist")], cwd=source, capture_output=True, text=True,
                            timeout=300, env=build_environment())  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist,) = (work / "dist").glob("mini_ipam-*.tar.gz")
    (wheel,) = (work / "dist").glob("mini_ipam-*.whl")
    yield sdist, wheel, result.stdout + result.stderr


def test_the_build_requirements_are_pinned() -> None:
    requirements = PYPROJECT["build-system"]["requires"]
    assert requirements and all("==" in requirement for requirement in requirements), requirements


def test_the_build_has_no_warning(built: tuple[Path, Path, str]) -> None:
    output = built[2]
    assert "sdist mini_ipam-" in output and "wheel mini_ipam-" in output
    warnings = [line for line in output.splitlines() if "warn" in line.lower()]
    assert warnings == []


def test_the_wheel_holds_every_module_the_script_and_the_license(built: tuple[Path, Path, str]) -> None:
    names = set(zipfile.ZipFile(built[1]).namelist())
    assert package_files() - names == set()
    assert not any(name.startswith("tests/") for name in names)
    dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(built[1]).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata.splitlines()
    assert zipfile.ZipFile(built[1]).read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert (
        "[console_scripts]\nmini-ipam = mini_ipam.commands:main"
        in zipfile.ZipFile(built[1]).read(f"{dist_info}/entry_points.txt").decode()
    )


def test_the_sdist_ships_the_package_and_no_tests(built: tuple[Path, Path, str]) -> None:
    with tarfile.open(built[0]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        top = sdist.getnames()[0].split("/")[0]
        pkg_info = sdist.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode().splitlines()
    assert package_files() - members == set()
    assert {"LICENSE", "README.md", "pyproject.toml"} <= members
    assert [name for name in members if name.startswith(("tests/", "bench/", "compose/"))] == []
    assert "License-Expression: MIT" in metadata


# -- scripts/install.sh and scripts/build-plugin.sh -------------------------------------------------------------


def script(path: Path, *args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(path), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **environment})  # fmt: skip


def site_packages(prefix: Path) -> Path:
    (found,) = prefix.glob("lib/python3*/site-packages")
    return found


@pytest.mark.slow
def test_install_upgrade_and_a_module_deleted_upstream(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("scripts/install.sh runs as root")
    checkout = clean_copy(tmp_path / "checkout")
    (checkout / "mini_ipam" / "retired.py").write_text('"""A module the next version no longer has."""\n')
    prefix, bin_dir = tmp_path / "opt", tmp_path / "bin"
    install = checkout / "scripts" / "install.sh"
    paths = {"MINI_IPAM_PREFIX": str(prefix), "MINI_IPAM_BIN_DIR": str(bin_dir)}

    before = listing(checkout)
    first = script(install, **paths)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.strip().splitlines()[-1] == f"installed mini-ipam 0.1.0 in {prefix}"
    assert listing(checkout) == before, "install.sh changed the checkout"
    assert (site_packages(prefix) / "mini_ipam" / "retired.py").is_file()
    version = subprocess.run([str(bin_dir / "mini-ipam"), "serve", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "mini-ipam 0.1.0"

    again = script(install, **paths)
    assert again.returncode == 0, again.stderr
    assert f"mini-ipam 0.1.0 in {prefix} is already this checkout's; nothing to do" in again.stdout

    (checkout / "mini_ipam" / "retired.py").unlink()
    before = listing(checkout)
    upgrade = script(install, **paths)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert upgrade.stdout.strip().splitlines()[-1] == f"installed mini-ipam 0.1.0 in {prefix}"
    assert listing(checkout) == before
    installed = site_packages(prefix)
    assert not (installed / "mini_ipam" / "retired.py").exists()
    assert {str(p.relative_to(installed)) for p in installed.glob("mini_ipam/**/*.py")} == {
        name for name in package_files() if name.startswith("mini_ipam/")
    }
    record = next(installed.glob("mini_ipam-*.dist-info")) / "RECORD"
    assert "retired" not in record.read_text()

    # build-plugin.sh on this host builds its wheels with the install's pip, and leaves the checkout alone.
    wheels = tmp_path / "wheels"
    built = script(checkout / "scripts" / "build-plugin.sh", "--wheels-only", str(wheels), **paths)
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"building wheels with the pip of {prefix}" in built.stdout
    assert listing(checkout) == before
    (wheel,) = wheels.glob("mini_ipam-0.1.0-*.whl")
    assert not any("retired" in name for name in zipfile.ZipFile(wheel).namelist())
    assert {p.name.split("-")[0].lower() for p in wheels.glob("*.whl")} >= {"flask", "waitress", "redis"}


@pytest.mark.slow
def test_build_plugin_without_an_install_makes_its_own_pip(tmp_path: Path) -> None:
    checkout = clean_copy(tmp_path / "checkout")
    before = listing(checkout)
    wheels = tmp_path / "wheels"
    # No install's virtualenv, and the script never asks python3 for a pip (Debian's may have none).
    built = script(checkout / "scripts" / "build-plugin.sh", "--wheels-only", str(wheels),
                   MINI_IPAM_PREFIX=str(tmp_path / "no-install"))  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    assert "building wheels with the pip of a temporary virtualenv" in built.stdout
    assert list(wheels.glob("mini_ipam-0.1.0-*.whl"))
    assert listing(checkout) == before


def test_build_plugin_says_what_it_needs_without_docker(tmp_path: Path) -> None:
    result = script(ROOT / "scripts" / "build-plugin.sh", DOCKER="/nonexistent/docker")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("build-plugin.sh: needs the docker command (apt-get install docker.io), or DOCKER naming "
                             "it; found no '/nonexistent/docker'\n")  # fmt: skip


def test_build_plugin_says_what_it_needs_without_an_engine(tmp_path: Path) -> None:
    docker = require_binary("docker")
    command = f"{docker} -H unix://{tmp_path}/no-engine.sock"
    result = script(ROOT / "scripts" / "build-plugin.sh", DOCKER=command)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"build-plugin.sh: cannot reach the Docker engine with '{command}': is dockerd running, "
                             "and may this user use it (root, or the docker group)?\n")  # fmt: skip
