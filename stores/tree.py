"""A sparse buddy tree: claim aligned blocks of an address range in O(prefix length).

Every node is an aligned block ``(prefixlen, network)``. Only nodes with something
claimed beneath them are stored; an absent node is entirely free. A stored node
holds either ``CLAIMED`` (the block itself is taken) or the prefix length of the
largest free aligned block anywhere below it (``bits + 1`` when nothing is free).

That one number per node is enough to find the first free block of a size by a
single descent, to check an exact claim against every ancestor and descendant,
and to merge freed buddies back into their parent, all in a number of steps that
depends on the prefix lengths only, never on how many blocks are claimed.

The Redis store runs the same algorithm in Lua (``stores/redis_scripts.lua``).
"""

from __future__ import annotations

from collections.abc import Iterator

CLAIMED = -1


class BlockTree:
    """Claims of aligned blocks below one root block of an address family."""

    __slots__ = ("bits", "root_len", "root_net", "_nodes")

    def __init__(self, bits: int, root_len: int = 0, root_net: int = 0) -> None:
        self.bits = bits
        self.root_len = root_len
        self.root_net = root_net
        self._nodes: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def _free_len(self, plen: int, net: int) -> int:
        """Prefix length of the largest free block at or below the node."""
        value = self._nodes.get((plen, net))
        if value is None:
            return plen
        if value == CLAIMED:
            return self.bits + 1
        return value

    def _mask(self, plen: int) -> int:
        return ((1 << plen) - 1) << (self.bits - plen)

    def _claimed_ancestor(self, net: int, plen: int) -> tuple[int, int] | None:
        """The claimed block strictly above ``(plen, net)``, if any."""
        for length in range(self.root_len, plen):
            node = (length, net & self._mask(length))
            if self._nodes.get(node) == CLAIMED:
                return node
        return None

    def holder(self, net: int, plen: int) -> tuple[int, int] | None:
        """A claimed block overlapping ``(plen, net)``: an ancestor, itself, or a descendant."""
        above = self._claimed_ancestor(net, plen)
        if above is not None:
            return above
        node = (plen, net)
        while node in self._nodes:
            if self._nodes[node] == CLAIMED:
                return node
            length, base = node
            # Some descendant is claimed: follow whichever child has a record.
            left = (length + 1, base)
            right = (length + 1, base | 1 << (self.bits - length - 1))
            node = left if left in self._nodes else right
        return None

    def claim(self, net: int, plen: int) -> tuple[int, int] | None:
        """Claim exactly ``(plen, net)``; return the overlapping holder instead if there is one."""
        found = self.holder(net, plen)
        if found is not None:
            return found
        self._nodes[(plen, net)] = CLAIMED
        self._update_ancestors(net, plen)
        return None

    def find_first(self, within_net: int, within_len: int, plen: int, start: int = 0) -> int | None:
        """The lowest free aligned ``/plen`` inside ``within`` starting at or after ``start``.

        Returns its network, or None when there is none. Claims nothing.
        """
        if not within_len <= plen <= self.bits or self._claimed_ancestor(within_net, within_len) is not None:
            return None
        return self._first_free(within_len, within_net, plen, start)

    def _first_free(self, length: int, base: int, want: int, start: int) -> int | None:
        size = 1 << (self.bits - length)
        if base + size <= start:
            return None
        value = self._nodes.get((length, base))
        if value is None:
            step = 1 << (self.bits - want)
            candidate = max(base, -(-start // step) * step)
            return candidate if candidate + step <= base + size else None
        if value == CLAIMED or value > want:
            return None
        child = length + 1
        found = self._first_free(child, base, want, start)
        if found is None:
            found = self._first_free(child, base | 1 << (self.bits - child), want, start)
        return found

    def release(self, net: int, plen: int) -> bool:
        """Release a claimed block; False when it was not claimed."""
        if self._nodes.get((plen, net)) != CLAIMED:
            return False
        del self._nodes[(plen, net)]
        self._update_ancestors(net, plen)
        return True

    def is_claimed(self, net: int, plen: int) -> bool:
        """Whether exactly ``(plen, net)`` is claimed."""
        return self._nodes.get((plen, net)) == CLAIMED

    def _update_ancestors(self, net: int, plen: int) -> None:
        for length in range(plen - 1, self.root_len - 1, -1):
            base = net & self._mask(length)
            left, right = (length + 1, base), (length + 1, base | 1 << (self.bits - length - 1))
            node = (length, base)
            old = self._nodes.get(node)
            if left not in self._nodes and right not in self._nodes:
                new = None  # both halves free: the buddies merge
            else:
                new = min(self._free_len(*left), self._free_len(*right))
            if new == old:
                return  # nothing above can change either
            if new is None:
                del self._nodes[node]
            else:
                self._nodes[node] = new

    def free_blocks(self, within_net: int, within_len: int) -> Iterator[tuple[int, int]]:
        """The maximal free aligned blocks inside ``within``, as ``(network, prefixlen)``, lowest first."""
        if self._claimed_ancestor(within_net, within_len) is not None:
            return
        pending = [(within_len, within_net)]
        while pending:
            length, base = pending.pop()
            value = self._nodes.get((length, base))
            if value is None:
                yield base, length
            elif value != CLAIMED:
                child = length + 1
                pending.append((child, base | 1 << (self.bits - child)))
                pending.append((child, base))

    def largest_free(self, within_net: int, within_len: int) -> int | None:
        """Prefix length of the largest free block inside ``within``; None when it is full."""
        if self._claimed_ancestor(within_net, within_len) is not None:
            return None
        free = self._free_len(within_len, within_net)
        return None if free > self.bits else free
