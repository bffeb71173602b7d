"""The libnetwork remote IPAM protocol, mapped onto the Allocator.

Wire names (``PoolID``, ``SubPool``, ``RequestAddressType`` ...) stop here: every
method reads its request's fields with ``mini_ipam.protocol``, calls the Allocator,
and builds the reply. The rules about what may be granted are the Allocator's;
this layer only checks the shape of the request. A request that does not decode
is an ``InvalidRequest`` and changes nothing.
"""

from __future__ import annotations

from mini_ipam import protocol
from mini_ipam.allocator import Allocator, PoolRequest
from mini_ipam.errors import InvalidRequest
from mini_ipam.pool_id import GLOBAL, LOCAL, PoolId, parse_address, parse_network
from mini_ipam.protocol import Json
from stores import Network


class Driver:
    """Answers the IpamDriver methods with plain JSON-able dicts."""

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def get_capabilities(self, request: Json) -> protocol.Capabilities:
        """State is durable, so the engine must not replay requests at start-up."""
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, request: Json) -> protocol.AddressSpaces:
        """Local networks use ``local``; swarm networks ``global``."""
        return {"LocalDefaultAddressSpace": LOCAL, "GlobalDefaultAddressSpace": GLOBAL}

    def request_pool(self, request: Json) -> protocol.RequestPoolReply:
        """Claim a subnet: ``Pool`` exactly, or any free one of the requested size."""
        space = protocol.string(request, "AddressSpace", required=True)
        v6 = protocol.boolean(request, "V6")
        options = protocol.options(request)
        pool_text = protocol.string(request, "Pool")
        sub_pool_text = protocol.string(request, "SubPool")
        if sub_pool_text and not pool_text:
            raise InvalidRequest("SubPool (--ip-range) needs Pool (--subnet)")
        subnet = parse_network(pool_text, "Pool") if pool_text else None
        _refuse_what_swarm_cannot_share(space, v6, subnet, swarm=protocol.is_serial(options))
        if space == GLOBAL and subnet is not None and subnet.version == 6:
            v6 = True  # swarm's manager sends V6 false for every subnet, its IPv6 --subnet too
        allocated = self.allocator.request_pool(
            PoolRequest(
                space=space,
                v6=v6,
                subnet=subnet,
                ip_range=parse_network(sub_pool_text, "SubPool") if sub_pool_text else None,
                size=protocol.size_option(options, v6),
            )
        )
        return {"PoolID": str(allocated.pool_id), "Pool": str(allocated.subnet), "Data": {}}

    def release_pool(self, request: Json) -> Json:
        """Release a pool and every address in it."""
        self.allocator.release_pool(_pool_id(request))
        return {}

    def request_address(self, request: Json) -> protocol.RequestAddressReply:
        """Claim an address: the requested one, the gateway, or the next free one."""
        pool_id = _pool_id(request)
        options = protocol.options(request)
        text = protocol.string(request, "Address")
        interface = self.allocator.request_address(
            pool_id,
            parse_address(text, "Address") if text else None,
            gateway=protocol.is_gateway(options),
            serial=protocol.is_serial(options),
        )
        return {"Address": str(interface), "Data": {}}

    def release_address(self, request: Json) -> Json:
        """Release one address of a pool."""
        pool_id = _pool_id(request)
        text = protocol.string(request, "Address", required=True)
        self.allocator.release_address(pool_id, parse_address(text, "Address"))
        return {}


def _refuse_what_swarm_cannot_share(space: str, v6: bool, subnet: Network | None, *, swarm: bool) -> None:
    """Refuse the pool requests of a swarm network that every node would answer differently.

    A swarm network's requests are the ones in the global space (the manager's) and the
    ones that carry swarm's serial option (each node's copy, in its local space). Swarm
    sends every node the network's subnet as the user wrote it, so a subnet that mini-ipam
    reads as "any free /N", or no IPv6 subnet at all (swarm allocates IPv6 only when given
    one), would give each node a subnet of its own for the same network. Refused here,
    before anything is claimed.
    """
    if not (swarm or space == GLOBAL):
        return
    if subnet is not None and protocol.is_any_subnet(subnet):
        family, example = ("IPv6", "fd12:3456:789a:1::/64") if subnet.version == 6 else ("IPv4", "10.20.0.0/24")
        size = subnet.prefixlen
        hint = "" if subnet.version == 6 else f", or --ipam-opt size={size} for any free /{size}"
        raise InvalidRequest(
            f"--subnet {subnet} (any free /{size}) is for local networks only: a swarm network keeps "
            f"{subnet} as its subnet and each node would get a different /{size}; give a real {family} "
            f"--subnet such as {example}{hint}"
        )
    if subnet is None and v6 and space == LOCAL:
        raise InvalidRequest(
            "a swarm network with --ipv6 needs an explicit IPv6 --subnet (such as --subnet fd12:3456:789a:1::/64): "
            "without one swarm allocates no IPv6 subnet and each node would get a different one"
        )


def _pool_id(request: Json) -> PoolId:
    return PoolId.parse(protocol.string(request, "PoolID", required=True))
