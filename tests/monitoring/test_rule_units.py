"""``promtool test rules``: every shipped alert's threshold, ``for:`` and texts, on made-up series.

This covers the alerts whose condition a test cannot bring about for real
(a lost map, slow requests, internal errors); test_alerts.py makes the others fire.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.monitoring.conftest import ALERT_RULES
from tests.servers import require_binary

UNIT_TESTS = Path(__file__).with_name("alert_rules_test.yml")
RULES_LINE = "  - ../../packaging/prometheus/mini-ipam-alerts.yml\n"

pytestmark = pytest.mark.prometheus


def promtool_test(tests: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120)


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool_test(UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("change", "alert"),
    [(("< 0.10", "< 0.05"), "MiniIpamParentNearlyFull"), (("for: 2m", "for: 5m"), "MiniIpamDown"),
     (("[10m]) > 0\n        labels:\n          severity: critical", "[1m]) > 0\n        labels:\n          "
       "severity: critical"), "MiniIpamMapLost")],
    ids=["threshold", "for", "window"],
)  # fmt: skip
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path, change: tuple[str, str], alert: str) -> None:
    rules = ALERT_RULES.read_text()
    assert rules.count(change[0]) == 1, f"{change[0]!r} is not in the rules once: update this test"
    (tmp_path / "rules.yml").write_text(rules.replace(*change))
    tests = UNIT_TESTS.read_text()
    assert tests.count(RULES_LINE) == 1
    (tmp_path / "tests.yml").write_text(tests.replace(RULES_LINE, "  - rules.yml\n"))
    result = promtool_test(tmp_path / "tests.yml")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and f"alertname: {alert}" in output, output
