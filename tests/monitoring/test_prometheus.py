"""Debian's real Prometheus scrapes a real driver through --metrics-address: what arrives is what happened.

One Prometheus and one driver serve the module: a known workload runs against the
driver's plugin socket after the first scrape, and the tests read the result through
Prometheus's own HTTP API, with the shipped alert rules and dashboard loaded against it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mini_ipam.metrics import ERROR_KINDS
from tests.driver_process import call
from tests.monitoring.conftest import ALERT_RULES, DASHBOARD, Scraped, start_driver
from tests.monitoring.prometheus import JOB, Prometheus, finite
from tests.servers import require_binary, wait_until

PARENT = "10.99.0.0/24"
PARENT6 = "fd99:0:1::/48"
POOLS = 3  # K RequestPool, each a /28
ADDRESSES = 5  # M RequestAddress: a gateway and two containers in the first pool, two in the second
# and one refused RequestPool (a subnet that overlaps the first pool)

pytestmark = pytest.mark.prometheus


def request_pool(socket: Path) -> str:
    status, reply = call(socket, "IpamDriver.RequestPool", {"AddressSpace": "local", "Options": {"size": "28"}})
    assert status == 200, reply
    pool_id: str = reply["PoolID"]
    return pool_id


def request_address(socket: Path, pool_id: str, gateway: bool = False) -> None:
    options = {"RequestAddressType": "com.docker.network.gateway"} if gateway else {}
    status, reply = call(socket, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "", "Options": options})
    assert status == 200, reply


def start_workload(socket: Path) -> str:
    """Before the first scrape: one pool and its gateway, so both series exist when rate() starts looking."""
    first = request_pool(socket)
    request_address(socket, first, gateway=True)
    return first


def finish_workload(socket: Path, first: str) -> None:
    """After it: K pools and M addresses in all, and one refused request."""
    second = request_pool(socket)
    for _ in range(POOLS - 2):
        request_pool(socket)
    for pool_id in (first, first, second, second):  # two containers in each of the first two pools
        request_address(socket, pool_id)
    status, reply = call(socket, "IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "10.99.0.0/26"})
    assert status == 409 and "overlaps" in reply["Err"], reply


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    directory = tmp_path_factory.mktemp("scrape")
    driver, target = start_driver(directory, "--store", "memory://", "--pool", PARENT, "--pool6", PARENT6,
                                  "--host-id", "scraped")  # fmt: skip
    prometheus = Prometheus(directory, [target], [ALERT_RULES])
    try:
        first = start_workload(driver.socket_path)
        prometheus.start()
        # Most of the workload after a first scrape, so that rate() over the window sees it happen.
        prometheus.wait_for(f'up{{job="{JOB}"}} == 1', what="a first successful scrape")
        finish_workload(driver.socket_path, first)
        done = time.time()
        # The map gauges are cached for seconds: wait for a scrape whose map was read after the workload.
        prometheus.wait_for_scrape_after(done)
        yield Scraped(driver, prometheus, target)
    finally:
        prometheus.stop()
        driver.stop()


def test_request_counters_arrive_with_the_workload_s_values(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    requests = prometheus.values(f'mini_ipam_requests_total{{job="{JOB}"}}', "method", "result", "instance")
    plugin_activations = requests.pop(("Plugin.Activate", "ok", scraped.target), None)
    assert plugin_activations is not None and plugin_activations >= 1  # the test's readiness probes
    assert requests == {
        ("RequestPool", "ok", scraped.target): POOLS,
        ("RequestPool", "error", scraped.target): 1,
        ("RequestAddress", "ok", scraped.target): ADDRESSES,
    }
    errors = prometheus.values("mini_ipam_errors_total", "kind")
    assert errors.pop(("Conflict",)) == 1
    # Every other kind is there from the start, at 0 (so that increase() sees a first refusal).
    assert errors == {(kind,): 0 for kind in ERROR_KINDS if kind != "Conflict"} and len(errors) >= 5
    latency = prometheus.values("mini_ipam_request_seconds_count", "method")
    assert latency[("RequestPool",)] == POOLS + 1 and latency[("RequestAddress",)] == ADDRESSES


def test_map_gauges_arrive_with_the_workload_s_values(scraped: Scraped) -> None:
    prometheus = scraped.prometheus
    assert prometheus.values("mini_ipam_pools", "parent", "prefixlen") == {(PARENT, "28"): POOLS}
    assert prometheus.values("mini_ipam_addresses", "parent", "prefixlen") == {(PARENT, "28"): ADDRESSES}
    # 10.99.0.0/24 less three /28s; the largest free block left is 10.99.0.128/25.
    assert prometheus.values("mini_ipam_free_addresses", "parent") == {(PARENT,): 256 - POOLS * 16, (PARENT6,): 2**80}
    assert prometheus.values("mini_ipam_largest_free_prefixlen", "parent") == {(PARENT,): 25, (PARENT6,): 48}
    assert prometheus.values("mini_ipam_parent_addresses", "parent") == {(PARENT,): 256, (PARENT6,): 2**80}
    assert prometheus.values("mini_ipam_store_up", "instance") == {(scraped.target,): 1}
    assert prometheus.values("mini_ipam_twin_host", "instance") == {(scraped.target,): 0}


def test_the_shipped_alert_rules_load_and_stay_quiet_on_a_healthy_driver(scraped: Scraped) -> None:
    rules = all_rules(scraped.prometheus)
    expected = {
        "MiniIpamDown", "MiniIpamNotScraped", "MiniIpamStoreUnreachable", "MiniIpamStoreFailures", "MiniIpamMapLost",
        "MiniIpamMapUnreadable", "MiniIpamTwinHostId", "MiniIpamParentNearlyFull", "MiniIpamRefusedForSpace",
        "MiniIpamSlowRequests", "MiniIpamInternalErrors",
    }  # fmt: skip
    assert set(rules) == expected
    # Evaluated, without an error (a rule whose expression fails to evaluate has health "err").
    wait_until(lambda: all(r["health"] != "unknown" for r in all_rules(scraped.prometheus).values()),
               what="every rule to be evaluated")  # fmt: skip
    assert {name: rule["health"] for name, rule in all_rules(scraped.prometheus).items()} == dict.fromkeys(
        expected, "ok"
    )
    assert [alert["labels"]["alertname"] for alert in scraped.prometheus.api("alerts")["alerts"]] == []


def all_rules(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    return {rule["name"]: rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]}


def test_promtool_checks_the_rules_and_the_example_configuration(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = subprocess.run([promtool, "check", "rules", str(ALERT_RULES)], capture_output=True, text=True, timeout=60)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 11 rules found" in rules.stdout
    config = ALERT_RULES.parent / "prometheus.yml"
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout
    # And promtool does catch a broken rule, so the checks above are looking.
    broken = tmp_path / "broken.yml"
    broken.write_text(ALERT_RULES.read_text().replace("== 0", "== = 0", 1))
    result = subprocess.run([promtool, "check", "rules", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


# -- the Grafana dashboard ----------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    board = dashboard()
    assert board["title"] and board["uid"] == "mini-ipam" and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query" and "label_values" in json.dumps(variables["instance"]["query"])
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    graphs = [panel for panel in panels(board) if panel["type"] != "row"]
    assert len(graphs) >= 8
    for panel in graphs:
        assert panel["title"] and panel["type"] in {"stat", "timeseries", "gauge", "bargauge", "table"}, panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert target["refId"] and target["expr"].strip(), panel["title"]
            assert 'instance=~"$instance"' in target["expr"], f"{panel['title']}: every query follows $instance"
            assert "[$__rate_interval]" in target["expr"] or "rate(" not in target["expr"], panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def grafana_to_promql(expression: str, instance: str) -> str:
    """What Grafana would send: its variables replaced by concrete values (an instance is a fine regex of itself)."""
    expression = expression.replace("$__rate_interval", "5m").replace("$instance", instance)
    assert "$" not in expression, f"a Grafana variable left in {expression}"
    return expression


def test_every_dashboard_query_runs_on_prometheus_and_returns_data(scraped: Scraped) -> None:
    # The driver picker: label_values(SELECTOR, instance) lists this driver.
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "instance"]
    selector = re.fullmatch(r"label_values\((.+), instance\)", variable["query"]["query"])
    assert selector is not None, variable
    assert scraped.target in {s["metric"]["instance"] for s in scraped.prometheus.query(selector[1])}
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expression = grafana_to_promql(target["expr"], scraped.target)
            samples = scraped.prometheus.query(expression)  # fails the test if Prometheus cannot parse it
            assert samples, f"panel {panel['title']!r}: {expression} returned no data"
            assert finite(samples), f"panel {panel['title']!r}: {expression} returned only NaN: {samples}"
