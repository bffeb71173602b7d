"""The file store's own promises: a journal before every reply, torn tails, corruption, compaction."""

from __future__ import annotations

import ipaddress
import json
import shutil
import threading
from pathlib import Path

import pytest

from stores import AnySubnet, ConfigurationError, CorruptState, ExactSubnet, Granted, StoreError, from_url
from stores.file import MIN_COMPACT_EVENTS, FileStore
from tests.helpers import addresses_of

net = ipaddress.ip_network
ip = ipaddress.ip_address
PARENT = (net("10.0.0.0/16"),)


def open_dynamic(store: FileStore, size: int = 28) -> ipaddress.IPv4Network:
    result = store.open_pool(AnySubnet(PARENT, size), scope="s", label="local", owner="a")
    assert isinstance(result, Granted)
    subnet = result.pool.subnet
    assert isinstance(subnet, ipaddress.IPv4Network)
    return subnet


def test_every_change_is_on_disk_before_the_call_returns(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    subnet = open_dynamic(store)
    store.claim_address(subnet, "s", ip("10.0.0.1"))
    lines = (tmp_path / "state.json.0.log").read_text().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["open", "claim"]
    store.close()


def test_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    subnet = open_dynamic(store)
    store.close()
    log = tmp_path / "state.json.0.log"
    with log.open("ab") as handle:
        handle.write(b'{"op":"claim","subnet":"10.0.0.0/28","sc')  # a write cut short by a crash
    reopened = FileStore(tmp_path / "state.json")
    assert addresses_of(reopened, subnet, "s") == []
    assert log.read_bytes().endswith(b"\n")
    assert reopened.claim_address(subnet, "s", ip("10.0.0.3"))
    reopened.close()
    assert addresses_of(FileStore(tmp_path / "state.json"), subnet, "s") == [ip("10.0.0.3")]


def test_a_corrupt_middle_line_stops_start_up(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    open_dynamic(store)
    open_dynamic(store)
    store.close()
    log = tmp_path / "state.json.0.log"
    lines = log.read_bytes().split(b"\n")
    lines[0] = b"garbage"
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptState, match=r"state.json.0.log line 1"):
        FileStore(tmp_path / "state.json")


def test_an_event_that_contradicts_the_state_stops_start_up(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    open_dynamic(store)
    store.close()
    log = tmp_path / "state.json.0.log"
    log.write_bytes(log.read_bytes() * 2)  # the same block opened twice
    with pytest.raises(CorruptState, match="line 2"):
        FileStore(tmp_path / "state.json")


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'{"format": "1"}'])
def test_an_unreadable_snapshot_stops_start_up(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(CorruptState, match="state.json"):
        FileStore(tmp_path / "state.json")


def test_a_snapshot_of_another_format_is_not_called_corrupt(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b'{"format": 99, "generation": 0, "events": []}')
    with pytest.raises(StoreError, match="is in format 99, which another version of mini-ipam wrote") as raised:
        FileStore(tmp_path / "state.json")
    assert not isinstance(raised.value, CorruptState)


def test_two_processes_cannot_share_one_file(tmp_path: Path) -> None:
    first = FileStore(tmp_path / "state.json")
    with pytest.raises(StoreError, match="in use"):
        FileStore(tmp_path / "state.json")
    first.close()
    FileStore(tmp_path / "state.json").close()


def test_compaction_keeps_the_journal_short_and_the_state_whole(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    kept = [open_dynamic(store) for _ in range(10)]
    for _ in range(MIN_COMPACT_EVENTS):  # churn: open and close the same subnet again and again
        churn = open_dynamic(store)
        store.close_pool(churn, "s")
    store.claim_address(kept[3], "s", ip(kept[3][5]))
    store.close()
    snapshot = json.loads((tmp_path / "state.json").read_text())
    assert snapshot["generation"] >= 1
    logs = sorted(tmp_path.glob("state.json.*.log"))
    assert [p.name for p in logs] == [f"state.json.{snapshot['generation']}.log"]
    assert len(logs[0].read_text().splitlines()) < MIN_COMPACT_EVENTS
    reopened = FileStore(tmp_path / "state.json")
    assert sorted(b.subnet for b in reopened.blocks()) == kept
    assert addresses_of(reopened, kept[3], "s") == [ip(kept[3][5])]


def test_a_compaction_interrupted_before_its_snapshot_landed_is_recovered(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    first = open_dynamic(store)
    store.close()
    # As if the next journal had been started but the snapshot never renamed into place.
    (tmp_path / "state.json.1.log").write_text(
        json.dumps({"op": "claim", "subnet": str(first), "scope": "s", "address": "10.0.0.2"}) + "\n"
    )
    reopened = FileStore(tmp_path / "state.json")
    assert addresses_of(reopened, first, "s") == [ip("10.0.0.2")]
    assert reopened.claim_address(first, "s", ip("10.0.0.3"))
    reopened.close()
    assert addresses_of(FileStore(tmp_path / "state.json"), first, "s") == [ip("10.0.0.2"), ip("10.0.0.3")]


def test_from_url(tmp_path: Path) -> None:
    store = from_url(f"file://{tmp_path}/sub/dir/state.json")
    assert isinstance(store, FileStore)
    assert store.open_pool(ExactSubnet(net("10.1.0.0/24")), scope="s", label="l", owner="a")
    store.close()
    for bad in ["file://relative/path.json", "file:///x.json?mode=1"]:
        with pytest.raises(ConfigurationError):
            from_url(bad)


# A state as the file store wrote it before events carried ints (snapshot generation 1 and its journal):
# a shared block, a serial cursor, a setting, an IPv6 pool, an ip-range label, a release.
OLD_SNAPSHOT = (
    '{"format":1,"generation":1,"events":[{"op":"set","name":"pool6","value":"fd12:3456:789a::/48"},'
    '{"op":"open","subnet":"10.0.0.0/24","scope":"global","owner":"a","since":1795861400.883884,'
    '"block":{"label":"global","owner":"a","since":1795861400.883884},"cursor":167772162},'
    '{"op":"claim","subnet":"10.0.0.0/24","scope":"global","address":"10.0.0.1"},'
    '{"op":"claim","subnet":"10.0.0.0/24","scope":"global","address":"10.0.0.2"},'
    '{"op":"open","subnet":"10.0.0.0/24","scope":"local@b","owner":"b","since":1795861400.8842192,"block":null,'
    '"cursor":null},{"op":"open","subnet":"fd12:3456:789a:1::/64","scope":"local@a","owner":"a",'
    '"since":1795861400.8850422,"block":{"label":"local","owner":"a","since":1795861400.8850422},"cursor":null},'
    '{"op":"claim","subnet":"fd12:3456:789a:1::/64","scope":"local@a","address":"fd12:3456:789a:1::1"}]}'
)
OLD_JOURNAL = (
    '{"op":"claim","subnet":"fd12:3456:789a:1::/64","scope":"local@a","address":"fd12:3456:789a:1::2",'
    '"since":1795861400.887212}\n'
    '{"op":"open","subnet":"10.0.1.0/28","scope":"local@a","owner":"a","since":1795861400.8875034,'
    '"block":{"label":"local 10.0.1.8/29","owner":"a","since":1795861400.8875034}}\n'
    '{"op":"release","subnet":"10.0.0.0/24","scope":"global","address":"10.0.0.2"}\n'
)


def test_a_state_written_by_earlier_versions_loads(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(OLD_SNAPSHOT)
    (tmp_path / "state.json.1.log").write_text(OLD_JOURNAL)
    store = FileStore(tmp_path / "state.json")
    assert store.make_setting("pool6", "unused") == "fd12:3456:789a::/48"
    blocks = {b.subnet: (b.label, b.owner, b.since) for b in store.blocks()}
    assert blocks == {
        net("10.0.0.0/24"): ("global", "a", 1795861400.883884),
        net("fd12:3456:789a:1::/64"): ("local", "a", 1795861400.8850422),
        net("10.0.1.0/28"): ("local 10.0.1.8/29", "a", 1795861400.8875034),
    }
    pools = {(p.subnet, p.scope): (p.owner, p.since) for p in store.pools()}
    assert pools[(net("10.0.0.0/24"), "local@b")] == ("b", 1795861400.8842192)
    assert len(pools) == 4
    assert addresses_of(store, net("10.0.0.0/24"), "global") == [ip("10.0.0.1")]
    assert addresses_of(store, net("fd12:3456:789a:1::/64"), "local@a") == [
        ip("fd12:3456:789a:1::1"),
        ip("fd12:3456:789a:1::2"),
    ]
    claims = store.address_claims(net("fd12:3456:789a:1::/64"), "local@a")
    assert [(c.since, c.note) for c in claims] == [(0.0, ""), (1795861400.887212, "")]
    # The serial cursor (10.0.0.2) came back too: the next serial claim goes after it.
    found = store.claim_next_address(net("10.0.0.0/24"), "global", ip("10.0.0.1"), ip("10.0.0.254"), True)
    assert found == ip("10.0.0.3")
    store.close()


def test_compaction_keeps_each_address_claims_time_and_note(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    subnet = open_dynamic(store)
    store.claim_address(subnet, "s", ip(subnet[1]), "gateway")
    store.claim_address(subnet, "s", ip(subnet[2]))
    before = store.address_claims(subnet, "s")
    store._compact()
    store.close()
    reopened = FileStore(tmp_path / "state.json")
    assert reopened.address_claims(subnet, "s") == before
    assert [c.note for c in before] == ["gateway", ""]
    reopened.close()


def test_the_journal_keeps_its_text_form(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    store.open_pool(ExactSubnet(net("fd00:1::/64")), scope="s", label="local", owner="a")
    store.claim_address(net("fd00:1::/64"), "s", ip("fd00:1::a"), "gateway")
    store.close()
    lines = [json.loads(line) for line in (tmp_path / "state.json.0.log").read_text().splitlines()]
    assert [(e["subnet"], e.get("address")) for e in lines] == [("fd00:1::/64", None), ("fd00:1::/64", "fd00:1::a")]
    assert lines[1]["note"] == "gateway"


def test_changes_made_while_a_snapshot_is_written_survive_a_crash(tmp_path: Path, monkeypatch) -> None:
    release = threading.Event()
    write_snapshot = FileStore._write_snapshot

    def held_back(self: FileStore, generation: int, state: object) -> None:
        release.wait(30)
        write_snapshot(self, generation, state)

    monkeypatch.setattr(FileStore, "_write_snapshot", held_back)
    store = FileStore(tmp_path / "live" / "state.json")
    kept = [open_dynamic(store) for _ in range(5)]
    store._compact()  # journal 1 starts now; snapshot 1 is not written yet
    kept.append(open_dynamic(store))
    store.claim_address(kept[0], "s", ip(kept[0][1]))
    # A crash at this moment leaves the files as they are now.
    shutil.copytree(tmp_path / "live", tmp_path / "crashed", ignore=shutil.ignore_patterns("*.lock"))
    release.set()
    store.close()
    assert json.loads((tmp_path / "live" / "state.json").read_text())["generation"] == 1
    for directory in ("live", "crashed"):
        reopened = FileStore(tmp_path / directory / "state.json")
        assert sorted(b.subnet for b in reopened.blocks()) == sorted(kept), directory
        assert addresses_of(reopened, kept[0], "s") == [ip(kept[0][1])], directory
        reopened.close()
