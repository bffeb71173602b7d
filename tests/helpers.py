"""Small views of a store that many tests read."""

from __future__ import annotations

from stores import Address, Network, Store


def addresses_of(store: Store, subnet: Network, scope: str) -> list[Address]:
    """The claimed addresses of a pool, in ascending order (UnknownPool when there is no such pool)."""
    return [claim.address for claim in store.address_claims(subnet, scope)]
