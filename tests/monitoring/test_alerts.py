"""The shipped alert rules fire in a real Prometheus when their condition is made true for real.

Each test loads a copy of packaging/prometheus/mini-ipam-alerts.yml whose ``for:``
durations are cut to 0s (the expressions are the shipped ones), scrapes real drivers,
brings the condition about (fill a parent, stop the driver, stop the Redis, start a
second driver with the same host id) and polls ``/api/v1/alerts`` until it fires.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.driver_process import DriverProcess, call
from tests.monitoring.conftest import quick_rules, start_driver
from tests.monitoring.prometheus import JOB, Prometheus
from tests.servers import RedisServer, wait_until

pytestmark = pytest.mark.prometheus

SMALL_PARENT = "10.98.0.0/27"


def test_a_full_parent_a_refusal_for_space_and_a_stopped_driver_fire(
    tmp_path: Path, stack: list[DriverProcess | Prometheus]
) -> None:
    driver, target = start_driver(tmp_path, "--store", "memory://", "--pool", SMALL_PARENT, "--pool6", "fd98::/48")
    stack.append(driver)
    prometheus = Prometheus(tmp_path, [target], [quick_rules(tmp_path)])
    stack.append(prometheus.start())
    prometheus.wait_for(f'mini_ipam_free_addresses{{parent="{SMALL_PARENT}"}} == 32', what="the empty parent")
    # Quiet once scraped (MiniIpamNotScraped may fire at an evaluation before the first scrape).
    wait_until(lambda: prometheus.api("alerts")["alerts"] == [], what="no alert for an empty parent")

    body = {"AddressSpace": "local", "Options": {"size": "28"}}
    assert [call(driver.socket_path, "IpamDriver.RequestPool", body)[0] for _ in range(3)] == [200, 200, 409]

    full = prometheus.wait_for_alert("MiniIpamParentNearlyFull", instance=target, parent=SMALL_PARENT)
    assert full["labels"]["severity"] == "warning"
    assert "10.98.0.0/27" in full["annotations"]["summary"] and "0%" in full["annotations"]["description"]
    refused = prometheus.wait_for_alert("MiniIpamRefusedForSpace", instance=target)
    assert "lack of space" in refused["annotations"]["summary"]
    # The IPv6 parent is nearly empty: no alert for it.
    assert prometheus.query('ALERTS{alertname="MiniIpamParentNearlyFull", parent="fd98::/48"}') == []

    driver.stop()
    down = prometheus.wait_for_alert("MiniIpamDown", instance=target)
    assert down["labels"]["severity"] == "critical"


@pytest.mark.redis
def test_a_twin_host_id_and_an_unreachable_store_fire(tmp_path: Path, stack: list[DriverProcess | Prometheus]) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        flags = ("--store", f"{redis.url}?prefix=alerts", "--host-id", "cloned", "--host-ttl", "1",
                 "--store-timeout", "0.5")  # fmt: skip
        first, first_target = start_driver(tmp_path, *flags, name="first")
        stack.append(first)
        second, second_target = start_driver(tmp_path, *flags, name="second")
        stack.append(second)
        prometheus = Prometheus(tmp_path, [first_target, second_target], [quick_rules(tmp_path)])
        stack.append(prometheus.start())
        prometheus.wait_for(f'count(up{{job="{JOB}"}} == 1) == 2', what="both drivers scraped")

        for target in (first_target, second_target):
            twin = prometheus.wait_for_alert("MiniIpamTwinHostId", instance=target)
            assert twin["labels"]["severity"] == "critical"
        assert prometheus.query("ALERTS{alertname='MiniIpamStoreUnreachable'}") == []

        redis.stop()
        for target in (first_target, second_target):
            prometheus.wait_for_alert("MiniIpamStoreUnreachable", instance=target)
        # The drivers still answer scrapes while their store is away.
        assert prometheus.values(f'up{{job="{JOB}"}}', "instance") == {(first_target,): 1, (second_target,): 1}
    finally:
        redis.stop()
