"""The installed package is complete: every module and data file of the source tree is in the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module_and_script(tmp_path: Path) -> None:
    # Build from a clean copy: a build/ directory left in the tree would hide missing packages.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", ".venv", ".git", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("mini_ipam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        str(path.relative_to(ROOT))
        for package in ("mini_ipam", "stores")
        for path in (ROOT / package).rglob("*")
        if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts
    }
    assert expected - names == set()
    assert any(name.endswith("entry_points.txt") for name in names)
