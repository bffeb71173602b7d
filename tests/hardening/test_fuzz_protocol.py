"""Every endpoint fuzzed over the Flask test client, against a seeded store of every in-process kind.

Each example posts one request to one path: a near-valid request (the method's own
keys, each value kept, perturbed to a wrong type, nulled, renamed or dropped, plus
extra keys), any JSON value, raw bytes, or a mutated encoding of any of those
(non-UTF-8 bytes, truncation, a BOM ...). Whatever comes in, the reply must be a
JSON object with the protocol's content type; a refusal is exactly ``{"Err": str}``
with a 4xx status and leaves the store exactly as it was; an acceptance has the
documented shape and changed only what it names. A 500 means an exception escaped
the driver's checks: that is a finding, never an acceptable answer.

Violations are collected rather than raised at once, so one run reports every
distinct kind of failure (with the shortest request that shows it) and the number
of cases run; the pinned examples at the bottom keep each finding reproducible.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.app import create_app
from mini_ipam.driver import Driver
from mini_ipam.pool_id import PoolId
from mini_ipam.protocol import CONTENT_TYPE, GATEWAY_MARKER, SERIAL_OPTION
from stores import Store
from tests.hardening.support import Snapshot, snapshot
from tests.helpers import addresses_of

HOST, OTHER_HOST = "host-a", "host-b"
SETTINGS = Settings(
    parents4=(ipaddress.IPv4Network("10.99.0.0/24"),),
    parents6=(ipaddress.IPv6Network("fd00:99::/56"),),
    host_id=HOST,
)
N = ipaddress.ip_network
A = ipaddress.ip_address

# -- the seeded state every example starts from -----------------------------------

SEED_POOLS = [
    "local/10.99.0.0/28",  # dynamic, gateway .1 and .2
    "local/10.50.0.0/24/10.50.0.128/25",  # explicit with an ip-range, gateway .128
    "global/10.60.0.0/24",  # a swarm pool, .1 held
    "local/10.60.0.0/24",  # its node-local copy, .1 held
    "local/fd00:99::/64",  # IPv6, gateway ::1
    "local/10.70.0.0/30",  # full: .1 and .2 held
    "local/10.80.0.0/24",  # held by the other host
]
HELD = {
    "local/10.99.0.0/28": ["10.99.0.1", "10.99.0.2"],
    "local/10.50.0.0/24/10.50.0.128/25": ["10.50.0.128"],
    "global/10.60.0.0/24": ["10.60.0.1"],
    "local/10.60.0.0/24": ["10.60.0.1"],
    "local/fd00:99::/64": ["fd00:99::1"],
    "local/10.70.0.0/30": ["10.70.0.1", "10.70.0.2"],
    "local/10.80.0.0/24": ["10.80.0.1"],
}
SEED_SUBNETS = [N("10.99.0.0/28"), N("10.50.0.0/24"), N("10.60.0.0/24"), N("fd00:99::/64"), N("10.70.0.0/30"),
                N("10.80.0.0/24")]  # fmt: skip


def seed(store: Store) -> None:
    mine = Allocator(store, SETTINGS)
    other = Allocator(store, replace(SETTINGS, host_id=OTHER_HOST))
    dynamic = mine.request_pool(PoolRequest("local", size=28)).pool_id
    mine.request_address(dynamic, gateway=True)
    mine.request_address(dynamic)
    ranged = mine.request_pool(PoolRequest("local", subnet=N("10.50.0.0/24"), ip_range=N("10.50.0.128/25"))).pool_id
    mine.request_address(ranged, gateway=True)
    swarm = mine.request_pool(PoolRequest("global", subnet=N("10.60.0.0/24"))).pool_id
    mine.request_address(swarm, A("10.60.0.1"))
    copy = mine.request_pool(PoolRequest("local", subnet=N("10.60.0.0/24"))).pool_id
    mine.request_address(copy, A("10.60.0.1"))
    six = mine.request_pool(PoolRequest("local", v6=True, size=64)).pool_id
    mine.request_address(six, gateway=True)
    full = mine.request_pool(PoolRequest("local", subnet=N("10.70.0.0/30"))).pool_id
    mine.request_address(full)
    mine.request_address(full)
    theirs = other.request_pool(PoolRequest("local", subnet=N("10.80.0.0/24"))).pool_id
    other.request_address(theirs, gateway=True)
    assert [str(p) for p in (dynamic, ranged, swarm, copy, six, full, theirs)] == SEED_POOLS
    for pool_id, held in HELD.items():
        parsed = PoolId.parse(pool_id)
        host = OTHER_HOST if pool_id == SEED_POOLS[-1] else HOST
        scope = "global" if parsed.space == "global" else f"local@{host}"
        assert [str(a) for a in addresses_of(store, parsed.subnet, scope)] == held


# -- strategies ---------------------------------------------------------------------

KNOWN_PATHS = [
    "/Plugin.Activate",
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
    "/IpamDriver.RequestPool",
    "/IpamDriver.ReleasePool",
    "/IpamDriver.RequestAddress",
    "/IpamDriver.ReleaseAddress",
]
UNKNOWN_PATHS = [
    "/IpamDriver.Nope", "/IpamDriver.", "/IpamDriver.requestpool", "/ipamdriver.RequestPool", "/Plugin.Deactivate",
    "/NetworkDriver.CreateNetwork", "/", "/IpamDriver.RequestPool/x", "/IpamDriver.__init__",
    "/IpamDriver.request_pool", "/%ff%fe", "/IpamDriver.Request%00Pool", "/Plugin.Activate/",
    "/IpamDriver.RequestPool.",
]  # fmt: skip
SURROGATES = ["\ud800", "\udfff", "\ud83d"]
junk_text = st.one_of(st.text(max_size=24), st.sampled_from(["", " ", "null", "None", "\x00", "%", *SURROGATES]))
junk_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**64, -(2**63), 10**20, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    junk_text,
)
json_values = st.recursive(
    junk_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_text, inner, max_size=4),
    max_leaves=10,
)

EDGE_CIDRS = [
    "10.99.0.0/28", "10.99.0.16/28", "10.99.0.0/24", "10.99.0.0/16", "10.50.0.0/24", "10.50.0.128/25", "10.60.0.0/24",
    "10.70.0.0/30", "10.80.0.0/24", "10.0.0.0/8", "0.0.0.0/0", "0.0.0.0/24", "0.0.0.0/30", "::/0", "::/64", "::/126",
    "fd00:99::/64", "fd00:99::/56", "fd00:99:0:1::/64", "fd00::/8", "10.99.0.1/28", "10.99.0.0/31", "10.99.0.0/32",
    "255.255.255.255/32", "255.255.255.252/30", "10.99.0.0/33", "10.99.0.0/-1", "10.99.0.256/24", "10.99.0/24",
    "10.99.0.0/24 ", " 10.99.0.0/24", "10.99.0.0 /24", "10.99.0.0/024", "010.99.0.0/24", "10.99.0.0/+24",
    "10.99.0.0/255.255.255.0", "10.99.0.0/0.0.0.255", "10.99.0.0", "10.99.0.0/", "/24", "/", "fd00:99::/129",
    "fd00:99:::/64", "fe80::%eth0/64", "fe80::%1/64", "::ffff:10.99.0.0/120", "::ffff:0:0/96", "10.99.0.0/28/29",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "1e400", "0x0a630000/24", "10.99.0.0\x00/24",
]  # fmt: skip
EDGE_ADDRESSES = [
    "10.99.0.0", "10.99.0.1", "10.99.0.2", "10.99.0.3", "10.99.0.14", "10.99.0.15", "10.99.0.16", "10.50.0.0",
    "10.50.0.1", "10.50.0.128", "10.50.0.129", "10.50.0.255", "10.60.0.1", "10.60.0.2", "10.70.0.1", "10.70.0.3",
    "10.80.0.1", "fd00:99::", "fd00:99::1", "fd00:99::2", "fd00:99::ffff:ffff:ffff:ffff", "fd00:99::1%eth0",
    "fe80::1%eth0", "::ffff:10.99.0.2", "::", "0.0.0.0", "255.255.255.255", "10.99.0.2/28", "10.99.0.02",
    "010.99.0.2", " 10.99.0.2", "10.99.0.2 ", "10.99.2", "10.99.0.256", "167969538", "fd00:99::1/64", "fd00:99:::1",
]  # fmt: skip
EDGE_POOL_IDS = [
    "local/10.99.0.16/28", "global/10.99.0.0/28", "global/10.50.0.0/24/10.50.0.128/25", "local/10.50.0.0/24",
    "local/10.50.0.0/24/10.50.0.0/25", "global/10.60.0.0/24/10.60.0.0/25", "local/fd00:99:0:1::/64",
    "global/10.80.0.0/24",
    "", "local", "local/", "local/10.99.0.0", "local/10.99.0.1/28", "remote/10.99.0.0/28", "local/10.99.0.0/28/",
    "local/10.99.0.0/28/10.98.0.0/29", "local/10.99.0.0/28/fd00::/64", "LOCAL/10.99.0.0/28", "local/10.99.0.0/33",
    "local//28", "local/10.99.0.0/28/x/y", "local/10.99.0.0/31", "local/10.99.0.0/32", "local/0.0.0.0/0", "global/::/0",
    "local/255.255.255.255/32", "local/0.0.0.0/32", "local/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
    "local/fe80::%eth0/64", " local/10.99.0.0/28", "local/10.99.0.0/28\x00", "local/10.99.0.0/28/10.99.0.0/28",
]  # fmt: skip
EDGE_SIZES = ["28", "/28", "30", "/30", "24", "16", "0", "1", "29", "31", "32", "64", "120", "126", "127", "128", "129",
              "999", "1000", "-1", "+28", "028", "0x1c", "28.0", "1e1", "", " ", " 28 ", "/", "//28", "²", "٢٨", "２８",
              "99999999999999999999"]  # fmt: skip


@st.composite
def networks(draw: st.DrawFn) -> str:
    """CIDR text: seed neighbours, random aligned or unaligned networks of both families, or junk."""
    how = draw(st.sampled_from(["edge", "edge", "near", "near", "random", "text", "junk"]))
    if how == "edge":
        return draw(st.sampled_from(EDGE_CIDRS))
    if how == "near":
        base = draw(st.sampled_from(SEED_SUBNETS))
        plen = draw(st.integers(max(0, base.prefixlen - 4), min(base.max_prefixlen, base.prefixlen + 6)))
        offset = draw(st.integers(-4, 16)) << (base.max_prefixlen - plen)
        value = (int(base.network_address) + offset) % (1 << base.max_prefixlen)
        return str(ipaddress.ip_network((value, plen), strict=False))
    if how == "random":
        version = draw(st.sampled_from([4, 6]))
        bits = 32 if version == 4 else 128
        value = draw(st.integers(0, (1 << bits) - 1))
        plen = draw(st.integers(-1, bits + 2))
        return f"{ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)}/{plen}"
    if how == "text":
        return draw(st.text(alphabet="0123456789abcdef.:/%x -", max_size=45))
    return draw(junk_text)


@st.composite
def addresses(draw: st.DrawFn) -> str:
    how = draw(st.sampled_from(["edge", "edge", "inside", "inside", "text", "junk"]))
    if how == "edge":
        return draw(st.sampled_from(EDGE_ADDRESSES))
    if how == "inside":
        subnet = draw(st.sampled_from(SEED_SUBNETS))
        offset = draw(st.integers(-2, min(subnet.num_addresses + 1, 2**16)))
        value = (int(subnet.network_address) + offset) % (1 << subnet.max_prefixlen)
        return str(ipaddress.ip_address(value) if subnet.version == 4 else ipaddress.IPv6Address(value))
    if how == "text":
        return draw(st.text(alphabet="0123456789abcdef.:/%x ", max_size=45))
    return draw(junk_text)


@st.composite
def pool_ids(draw: st.DrawFn) -> str:
    how = draw(st.sampled_from(["seed"] * 4 + ["edge", "edge", "built", "junk"]))
    if how == "seed":
        return draw(st.sampled_from(SEED_POOLS))
    if how == "edge":
        return draw(st.sampled_from(EDGE_POOL_IDS))
    if how == "built":
        space = draw(st.sampled_from(["local", "global", "Local", "x", ""]))
        parts = [space, draw(networks())]
        if draw(st.booleans()):
            parts.append(draw(networks()))
        return "/".join(parts)
    return draw(junk_text)


@st.composite
def addresses_for(draw: st.DrawFn, pool_id: Any) -> str:
    """Mostly addresses that matter to the named seed pool: held ones, its edges, its first hosts."""
    how = draw(st.sampled_from(["held"] * 3 + ["near"] * 2 + ["any"]))
    if not isinstance(pool_id, str) or pool_id not in HELD or how == "any":
        return draw(addresses())
    subnet = PoolId.parse(pool_id).subnet
    if how == "held":
        return draw(st.sampled_from(HELD[pool_id]))
    offset = draw(st.one_of(st.integers(0, 20), st.integers(-3, 0).map(lambda o: subnet.num_addresses - 1 + o)))
    return str(subnet.network_address + offset)


sizes = st.one_of(st.sampled_from(EDGE_SIZES), st.sampled_from(EDGE_SIZES), st.integers(-3, 140).map(str), junk_text)
pool_options = st.one_of(
    st.dictionaries(
        st.sampled_from(["size", "size6", "mini.cidr_mask_length", SERIAL_OPTION, "com.docker.network.x", "Size"]),
        st.one_of(sizes, sizes, json_values),
        max_size=3,
    ),
    st.just({}),
)
address_options = st.one_of(
    st.fixed_dictionaries({"RequestAddressType": st.sampled_from([GATEWAY_MARKER, GATEWAY_MARKER.upper(), "", "x"])}),
    st.fixed_dictionaries({SERIAL_OPTION: st.sampled_from(["true", "false", "True", "1", ""])}),
    st.dictionaries(st.sampled_from(["RequestAddressType", SERIAL_OPTION, "x"]), st.one_of(junk_text, json_values)),
    st.just({}),
)
spaces = st.sampled_from(["local", "local", "global", "", "LOCAL", "Global", "null", "local ", "default"])
v6_flags = st.one_of(st.booleans(), st.sampled_from(["true", "false", 0, 1, "", [], {}]))

FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "/IpamDriver.RequestPool": {
        "AddressSpace": spaces,
        "Pool": st.one_of(st.just(""), networks()),
        "SubPool": st.one_of(st.just(""), st.just(""), networks()),
        "Options": st.one_of(st.none(), pool_options),
        "V6": v6_flags,
    },
    "/IpamDriver.ReleasePool": {"PoolID": pool_ids()},
    "/IpamDriver.RequestAddress": {
        "PoolID": pool_ids(),
        "Address": st.one_of(st.just(""), addresses()),
        "Options": st.one_of(st.none(), address_options),
    },
    "/IpamDriver.ReleaseAddress": {"PoolID": pool_ids(), "Address": addresses()},
}
HOW = ["keep"] * 14 + ["wrong type", "null", "missing", "rename"]


@st.composite
def near_valid(draw: st.DrawFn, path: str, pristine: bool = False) -> dict[str, Any]:
    """The path's own keys (another method's, for paths without any), each kept, perturbed, nulled or dropped.

    ``pristine`` keeps every key with a well-typed (not necessarily sensible) value.
    """
    fields = FIELDS.get(path) or draw(st.sampled_from(list(FIELDS.values())))
    body: dict[str, Any] = {}
    for key, good in fields.items():
        how = "keep" if pristine else draw(st.sampled_from(HOW))
        if how == "missing":
            continue
        if how == "rename":
            key = draw(st.sampled_from([key.lower(), key.upper(), f"{key} ", f"_{key}"]))
        if key == "Address" and how == "keep" and (path == "/IpamDriver.ReleaseAddress" or draw(st.booleans())):
            good = addresses_for(body.get("PoolID"))
        body[key] = draw(good) if how in ("keep", "rename") else None if how == "null" else draw(json_values)
    if pristine:
        return body
    if draw(st.integers(0, 5)) == 0:
        other = draw(st.sampled_from(list(FIELDS.values())))
        body.update({k: draw(v) for k, v in other.items() if k not in body})  # a mix-up of two methods
    if draw(st.integers(0, 4)) == 0:
        body.update(draw(st.dictionaries(junk_text, json_values, max_size=3)))
    return body


INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80", b"\xc0\xaf"]


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON bytes, sometimes damaged: non-UTF-8, truncated, prefixed, doubled ..."""
    data = json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    mutation = draw(st.sampled_from(["none"] * 6 + ["non-utf8", "truncate", "bom", "space", "append", "utf16"]))
    if mutation == "non-utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    elif mutation == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "bom":
        data = b"\xef\xbb\xbf" + data
    elif mutation == "space":
        data = b" \n\t" + data + b"\r\n"
    elif mutation == "append":
        data = data + draw(st.sampled_from([b"x", b"{}", b",", b"\x00", data]))
    elif mutation == "utf16":
        data = json.dumps(value).encode("utf-16")
    return data


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b" ", b"\r\n", b"null", b"true", b"0", b"[]", b"{}", b'""', b"1e999", b"-", b"{", b"}", b"\x00",
         b"[" * 50_000, b"{\"a\":" * 20_000, b"1" * 5000, b'{"PoolID": "local/10.99.0.0/28", "PoolID": 7}',
         b'{"AddressSpace":"local","AddressSpace":"global","Pool":"10.99.0.0/28"}', b"x" * (64 * 1024 + 1),
         json.dumps({"AddressSpace": "local", "Pool": "", "Options": {"size": "28"}, "pad": "x" * 70_000}).encode()]
    ),
)  # fmt: skip
CONTENT_TYPES = [None, None, None, "application/json", "text/plain; charset=latin-1",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/json; charset=utf-16", "\x00"]  # fmt: skip


@dataclass(frozen=True)
class Case:
    path: str
    verb: str
    content_type: str | None
    body: bytes

    def __str__(self) -> str:
        shown = self.body if len(self.body) <= 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return f"{self.verb} {self.path} content-type={self.content_type!r} body={shown!r}"


@st.composite
def cases(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(KNOWN_PATHS * 6 + UNKNOWN_PATHS))
    kind = draw(st.sampled_from(["pristine"] * 3 + ["near-valid"] * 5 + ["json", "raw"]))
    if kind == "pristine":
        body = json.dumps(draw(near_valid(path, pristine=True))).encode("utf-8", "surrogatepass")
    elif kind == "near-valid":
        body = draw(encoded(draw(near_valid(path))))
    elif kind == "json":
        body = draw(encoded(draw(json_values)))
    else:
        body = draw(raw_bodies)
    verb = draw(st.sampled_from(["POST"] * 12 + ["GET", "PUT", "DELETE", "PATCH"]))
    return Case(path, verb, draw(st.sampled_from(CONTENT_TYPES)), body)


# -- judging one reply -----------------------------------------------------------------


def scope_of(pool_id: PoolId) -> str:
    return "global" if pool_id.space == "global" else f"local@{HOST}"


def plain_network(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str) or "%" in text:
        raise ValueError(f"{text!r} is not zone-free CIDR text")
    network = ipaddress.ip_network(text)
    if str(network) != text:
        raise ValueError(f"{text!r} is not canonical CIDR text")
    return network


def judge(case: Case, status: int, content_type: str, raw: bytes, before: Snapshot, after: Snapshot) -> list[str]:
    """Every way the reply breaks the contract; empty when it keeps it."""
    problems: list[str] = []
    try:
        payload = json.loads(raw)
    except ValueError:
        return [f"{status} reply is not JSON"]
    if not isinstance(payload, dict):
        return [f"{status} reply is JSON {type(payload).__name__}, not an object"]
    if content_type != CONTENT_TYPE:
        problems.append(f"content type {content_type!r}")
    if status >= 500:
        problems.append(f"{status}: an exception escaped the driver's checks: {payload.get('Err')}")
    if status != 200:
        if set(payload) != {"Err"} or not isinstance(payload["Err"], str) or not payload["Err"]:
            problems.append(f"refusal {status} is not exactly {{'Err': str}}: {payload}")
        if not 400 <= status < 600:
            problems.append(f"refusal with status {status}")
        if after != before:
            problems.append(f"refused with {status} but the store changed")
        return problems
    if case.path not in KNOWN_PATHS or case.verb != "POST":
        return [f"200 for {case.verb} {case.path}"]
    try:
        problems += check_accepted(case.path, payload, case.body, before, after)
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"200 {case.path} {type(exc).__name__}: {exc}")
    return problems


def check_accepted(path: str, payload: dict[str, Any], body: bytes, before: Snapshot, after: Snapshot) -> list[str]:
    """The documented reply shape, and a store change limited to what the call names."""
    blocks0, pools0, addrs0 = (set(part) for part in before)
    blocks1, pools1, addrs1 = (set(part) for part in after)
    addresses0 = {(s, scope): a for s, scope, a in before[2]}
    addresses1 = {(s, scope): a for s, scope, a in after[2]}
    if path == "/Plugin.Activate":
        assert payload == {"Implements": ["IpamDriver"]}, payload
    elif path == "/IpamDriver.GetCapabilities":
        assert set(payload) <= {"RequiresMACAddress", "RequiresRequestReplay"}, payload
        assert all(isinstance(v, bool) for v in payload.values()), payload
    elif path == "/IpamDriver.GetDefaultAddressSpaces":
        assert set(payload) == {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"}, payload
        assert all(isinstance(v, str) and v for v in payload.values()), payload
    if path in ("/Plugin.Activate", "/IpamDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces"):
        assert after == before, "a read-only call changed the store"
        return []
    if path == "/IpamDriver.RequestPool":
        assert set(payload) == {"PoolID", "Pool", "Data"} and payload["Data"] == {}, payload
        pool_id = PoolId.parse(payload["PoolID"])
        subnet = plain_network(payload["Pool"])
        assert pool_id.subnet == subnet and str(pool_id) == payload["PoolID"], payload
        key = (str(subnet), scope_of(pool_id))
        assert key in addresses1, f"the granted pool {key} is not in the store"
        assert pools0 <= pools1 and blocks0 <= blocks1 and addrs0 <= addrs1, "a RequestPool took something away"
        assert addrs1 - addrs0 <= {(*key, ())}, addrs1 - addrs0
        assert {(r[0], r[1]) for r in pools1 - pools0} <= {key}, pools1 - pools0
        assert {r[0] for r in blocks1 - blocks0} <= {str(subnet)}, blocks1 - blocks0
    elif path == "/IpamDriver.ReleasePool":
        assert payload == {}, payload
        assert pools1 <= pools0 and blocks1 <= blocks0
        assert len(pools0 - pools1) == 1, pools0 - pools1
        (gone,) = pools0 - pools1
        assert {r[0] for r in blocks0 - blocks1} <= {gone[0]}
        named = PoolId.parse(json.loads(body)["PoolID"])
        assert (gone[0], gone[1]) == (str(named.subnet), scope_of(named)), (gone, named)
    else:
        assert blocks1 == blocks0 and pools1 == pools0, "an address call changed blocks or pools"
        changed = {k for k in addresses0 if addresses0[k] != addresses1.get(k)}
        if path == "/IpamDriver.RequestAddress":
            assert set(payload) == {"Address", "Data"} and payload["Data"] == {}, payload
            text = payload["Address"]
            assert isinstance(text, str) and "%" not in text, f"address {text!r} is not plain CIDR"
            interface = ipaddress.ip_interface(text)
            assert len(changed) <= 1, changed
            held = [k for k, v in addresses1.items() if str(interface.ip) in v and k[0] == str(interface.network)]
            assert held, f"{text} is not held in a pool of its subnet"
            subnet = interface.network
            if subnet.version == 4:
                assert interface.ip not in (subnet.network_address, subnet.broadcast_address), text
            for key in changed:
                assert set(addresses1[key]) - set(addresses0[key]) == {str(interface.ip)}, key
        else:
            assert payload == {}, payload
            assert len(changed) == 1, changed
            (key,) = changed
            assert set(addresses1[key]) < set(addresses0[key]), key
            request = json.loads(body)
            assert [A(a) for a in set(addresses0[key]) - set(addresses1[key])] == [A(request["Address"])], request
    return []


# -- running ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a fuzz run saw: cases per (path, status), and every distinct violation with its shortest case."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    violations: dict[str, Case] = field(default_factory=dict)
    cases: int = 0

    def report(self, kind: str) -> str:
        lines = [f"fuzz[{kind}]: {self.cases} cases"]
        for path in sorted({p for p, _ in self.statuses}):
            counts = {s: n for (p, s), n in sorted(self.statuses.items()) if p == path}
            lines.append(f"  {path}: {counts}")
        return "\n".join(lines)


@contextmanager
def fresh_store(kind: str, directory: Path, number: int) -> Iterator[Store]:
    store = make_store(kind, directory, number)
    try:
        yield store
    finally:
        store.close()


def make_store(kind: str, directory: Path, number: int) -> Store:
    if kind == "memory":
        from stores.memory import MemoryStore

        return MemoryStore()
    if kind == "file":
        from stores.file import FileStore

        return FileStore(directory / str(number) / "state.json")
    import fakeredis

    from stores.redis import RedisStore

    return RedisStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="fuzz")


class Bench:
    """One app, and a seeded store that every case starts from.

    A refused request must leave the store as it was (that is checked), so the
    store is only rebuilt after a case that changed it: every case starts from
    exactly the seeded state.
    """

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind, self.directory, self.builds = kind, directory, 0
        self.store = self._build()
        self.driver = Driver(Allocator(self.store, SETTINGS))
        self.client = create_app(self.driver).test_client()
        self.seeded = snapshot(self.store)

    def _build(self) -> Store:
        store = make_store(self.kind, self.directory, self.builds)
        self.builds += 1
        seed(store)
        return store

    def reset(self) -> None:
        self.store.close()
        self.store = self._build()
        self.driver.allocator = Allocator(self.store, SETTINGS)
        self.seeded = snapshot(self.store)

    def close(self) -> None:
        self.store.close()

    def run(self, case: Case, tally: Tally) -> None:
        headers = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        response = self.client.open(case.path, method=case.verb, data=case.body, headers=headers)
        after = snapshot(self.store)
        tally.cases += 1
        tally.statuses[(case.path if case.path in KNOWN_PATHS else "(unknown paths)", response.status_code)] += 1
        for problem in judge(
            case, response.status_code, response.content_type or "", response.data, self.seeded, after
        ):
            signature = f"{case.path if case.path in KNOWN_PATHS else '(unknown path)'}: {problem[:160]}"
            known = tally.violations.get(signature)
            if known is None or len(str(case)) < len(str(known)):
                tally.violations[signature] = case
        if after != self.seeded:
            self.reset()


EXAMPLES = {"memory": 1500, "file": 300, "fakeredis": 200}


@pytest.mark.parametrize(
    "kind", [pytest.param(kind, marks=[pytest.mark.slow] if kind != "file" else []) for kind in EXAMPLES]
)
def test_every_endpoint_answers_hostile_input_with_a_json_object_and_changes_nothing(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()
    bench = Bench(kind, tmp_path)

    @settings(
        max_examples=EXAMPLES[kind],
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: a CI run is reproducible
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(case=cases())
    def fuzz(case: Case) -> None:
        bench.run(case, tally)

    try:
        fuzz()
    finally:
        bench.close()
    with capsys.disabled():
        print("\n" + tally.report(kind))
    assert not tally.violations, f"{len(tally.violations)} kinds of contract violation:\n" + "\n".join(
        f"- {signature}\n    e.g. {case}" for signature, case in sorted(tally.violations.items())
    )
    # The strategy must reach deep: every method both granted and refused, unknown paths refused. The smaller
    # runs (file, fakeredis) need only reach the pool and address requests: which rarer cases a few hundred
    # examples hit depends on the hypothesis version.
    deep = KNOWN_PATHS if EXAMPLES[kind] >= 1000 else [p for p in KNOWN_PATHS if p.endswith(("Pool", "Address"))][:3]
    for path in deep:
        assert tally.statuses[(path, 200)] > 0, f"no case of {path} was accepted: the strategy is too shallow"
    for path in KNOWN_PATHS[3:]:
        refused = sum(n for (p, s), n in tally.statuses.items() if p == path and s != 200)
        assert refused > 0, f"no case of {path} was refused"
    assert tally.statuses[("(unknown paths)", 404)] > 0
    assert tally.cases >= EXAMPLES[kind] * 0.9


# -- the findings, pinned -----------------------------------------------------------------------

PINNED: list[tuple[str, str, dict[str, Any]]] = [
    # A size of non-ASCII digits passes str.isdigit() and then breaks int(): ValueError, a 500.
    ("superscript-size", "/IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "", "Options": {"size": "²"}}),
    # PoolIDs naming a single address: subnet.network_address + 1 (or broadcast - 1) overflows, a 500.
    ("pool-id-slash32-top", "/IpamDriver.RequestAddress", {"PoolID": "local/255.255.255.255/32", "Address": ""}),
    ("pool-id-slash32-zero", "/IpamDriver.RequestAddress", {"PoolID": "local/0.0.0.0/32", "Address": ""}),
    ("pool-id-slash128-top", "/IpamDriver.RequestAddress",
     {"PoolID": "local/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "Address": ""}),
    ("release-in-slash32", "/IpamDriver.ReleaseAddress",
     {"PoolID": "local/255.255.255.255/32", "Address": "255.255.255.255"}),
    # An IPv6 zone is not part of a CIDR, but "fe80::%eth0/64" is claimed and echoed back as the Pool.
    ("zoned-pool", "/IpamDriver.RequestPool", {"AddressSpace": "local", "Pool": "fe80::%eth0/64", "V6": True}),
    ("zoned-address", "/IpamDriver.RequestAddress", {"PoolID": "local/fd00:99::/64", "Address": "fd00:99::5%eth0"}),
]  # fmt: skip


@pytest.mark.parametrize("kind", ["memory", "fakeredis"])
@pytest.mark.parametrize(("name", "path", "body"), PINNED, ids=[p[0] for p in PINNED])
def test_pinned_hostile_inputs_are_clean_refusals(kind: str, name: str, path: str, body: dict[str, Any],
                                                  tmp_path: Path) -> None:  # fmt: skip
    tally = Tally()
    bench = Bench(kind, tmp_path)
    try:
        bench.run(Case(path, "POST", None, json.dumps(body).encode()), tally)
    finally:
        bench.close()
    assert not tally.violations, "\n".join(tally.violations)
    ((_, status),) = tally.statuses
    assert status == 400, f"{name}: expected a 400 refusal, got {status}"


def test_a_zoned_subnet_never_breaks_later_requests(tmp_path: Path) -> None:
    """Once a zoned pool was granted, an overlapping plain request must still be a clean 409, not a 500."""
    for number, kind in enumerate(EXAMPLES):
        with fresh_store(kind, tmp_path, number) as store:
            client = create_app(Driver(Allocator(store, SETTINGS))).test_client()
            client.post("/IpamDriver.RequestPool", data=json.dumps(
                {"AddressSpace": "local", "Pool": "fe80::%eth0/64", "V6": True}))  # fmt: skip
            response = client.post("/IpamDriver.RequestPool", data=json.dumps(
                {"AddressSpace": "local", "Pool": "fe80::/48", "V6": True}))  # fmt: skip
            assert response.status_code < 500, (kind, response.status_code, response.data)
