"""packaging/mini-ipam.service passes ``systemd-analyze verify`` without a single warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import require_binary

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "mini-ipam.service"
INSTALLED = "ExecStart=/usr/local/bin/mini-ipam serve"


def checkable_copy(directory: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this environment's ``mini-ipam``.

    verify refuses an ExecStart binary that does not exist, and the unit's
    /usr/local/bin/mini-ipam exists only once scripts/install.sh has run, which a test
    must not do (it writes /opt and /usr/local/bin). The entry point installed beside
    this interpreter is the same program; only that one line differs.
    """
    entry_point = Path(sys.executable).with_name("mini-ipam")
    assert entry_point.exists(), f"{entry_point} is missing: install the package (pip install -e .)"
    original = UNIT.read_text() if text is None else text
    assert original.count(INSTALLED) == 1, f"the unit no longer starts {INSTALLED!r}: update this test"
    copy = directory / "mini-ipam.service"  # the same name: verify checks it matches the unit's type
    copy.write_text(original.replace(INSTALLED, f"ExecStart={entry_point} serve"))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = require_binary("systemd-analyze")
    # --recursive-errors=no: judge this unit, not whatever units of this machine it orders itself against.
    return subprocess.run(
        [analyze, "verify", "--recursive-errors=no", str(unit)],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
    )  # fmt: skip


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    result = verify(checkable_copy(tmp_path))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_does_report_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad duration are warnings with exit status 0, so the
    test must fail on any output, not only on the exit status."""
    broken = (
        UNIT.read_text().replace("Restart=on-failure", "Restrat=on-failure").replace("RestartSec=1", "RestartSec=x")
    )
    result = verify(checkable_copy(tmp_path, broken))
    output = result.stdout + result.stderr
    assert "Unknown key" in output and "Restrat" in output, output
    assert "Failed to parse sec value" in output, output
