"""A sparse buddy tree: claim aligned blocks of an address range in O(prefix length).

Every node is an aligned block ``(prefixlen, network)``. Only nodes with something
claimed beneath them are stored; an absent node is entirely free. A stored node
holds either ``CLAIMED`` (the block itself is taken) or the prefix length of the
largest free aligned block anywhere below it (``bits + 1`` when nothing is free).

That one number per node is enough to find the first free block of a size by a
single descent, to check an exact claim against every ancestor and descendant,
and to merge freed buddies back into their parent, all in a number of steps that
depends on the prefix lengths only, never on how many blocks are claimed.

Nodes are stored under their *heap index*, one int: a 1 bit followed by the
block's first ``prefixlen`` bits. The root is 1, the children of ``k`` are
``2k`` and ``2k + 1`` and its parent is ``k >> 1``, so walking the tree is integer
arithmetic, and a node costs one int key instead of a tuple of two (the map of a
driver holding 100,000 pools has about 200,000 nodes).

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
        self._nodes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def _index(self, plen: int, net: int) -> int:
        """The heap index of the block ``(plen, net)``."""
        return (1 << plen) | (net >> (self.bits - plen))

    def _block(self, index: int) -> tuple[int, int]:
        """``(plen, net)`` of a heap index."""
        plen = index.bit_length() - 1
        return plen, (index ^ (1 << plen)) << (self.bits - plen)

    def _claimed_ancestor(self, index: int, plen: int) -> int | None:
        """The claimed node strictly above ``index`` (down to the root block), if any.

        The walk stops at the first stored ancestor: a claimed node never has stored
        descendants, so a stored, unclaimed node has no claimed ancestor either.
        """
        nodes = self._nodes
        for _ in range(plen - self.root_len):
            index >>= 1
            value = nodes.get(index)
            if value is not None:
                return index if value == CLAIMED else None
        return None

    def holder(self, net: int, plen: int) -> tuple[int, int] | None:
        """A claimed block overlapping ``(plen, net)``: an ancestor, itself, or a descendant."""
        index = self._index(plen, net)
        above = self._claimed_ancestor(index, plen)
        if above is not None:
            return self._block(above)
        nodes = self._nodes
        while index in nodes:
            if nodes[index] == CLAIMED:
                return self._block(index)
            # Some descendant is claimed: follow whichever child has a record.
            index = index << 1 if index << 1 in nodes else index << 1 | 1
        return None

    def claim(self, net: int, plen: int) -> tuple[int, int] | None:
        """Claim exactly ``(plen, net)``; return the overlapping holder instead if there is one."""
        found = self.holder(net, plen)
        if found is not None:
            return found
        index = self._index(plen, net)
        self._nodes[index] = CLAIMED
        self._update_ancestors(index, plen)
        return None

    def find_first(self, within_net: int, within_len: int, plen: int, start: int = 0) -> int | None:
        """The lowest free aligned ``/plen`` inside ``within`` starting at or after ``start``.

        Returns its network, or None when there is none. Claims nothing.
        """
        if not within_len <= plen <= self.bits:
            return None
        index = self._index(within_len, within_net)
        if self._claimed_ancestor(index, within_len) is not None:
            return None
        return self._first_free(index, within_len, plen, start)

    def _first_free(self, index: int, length: int, want: int, start: int) -> int | None:
        shift = self.bits - length
        base = (index ^ (1 << length)) << shift
        size = 1 << shift
        if base + size <= start:
            return None
        value = self._nodes.get(index)
        if value is None:
            step = 1 << (self.bits - want)
            candidate = max(base, -(-start // step) * step)
            return candidate if candidate + step <= base + size else None
        if value == CLAIMED or value > want:
            return None
        found = self._first_free(index << 1, length + 1, want, start)
        if found is None:
            found = self._first_free(index << 1 | 1, length + 1, want, start)
        return found

    def release(self, net: int, plen: int) -> bool:
        """Release a claimed block; False when it was not claimed."""
        index = self._index(plen, net)
        if self._nodes.get(index) != CLAIMED:
            return False
        del self._nodes[index]
        self._update_ancestors(index, plen)
        return True

    def _update_ancestors(self, index: int, plen: int) -> None:
        nodes = self._nodes
        full = self.bits + 1
        for length in range(plen - 1, self.root_len - 1, -1):
            index >>= 1
            left = nodes.get(index << 1)
            right = nodes.get(index << 1 | 1)
            if left is None and right is None:
                new = None  # both halves free: the buddies merge
            else:
                child = length + 1
                left_free = child if left is None else full if left == CLAIMED else left
                right_free = child if right is None else full if right == CLAIMED else right
                new = min(left_free, right_free)
            if new == nodes.get(index):
                return  # nothing above can change either
            if new is None:
                del nodes[index]
            else:
                nodes[index] = new

    def free_blocks(self, within_net: int, within_len: int) -> Iterator[tuple[int, int]]:
        """The maximal free aligned blocks inside ``within``, as ``(network, prefixlen)``, lowest first."""
        start = self._index(within_len, within_net)
        if self._claimed_ancestor(start, within_len) is not None:
            return
        pending = [start]
        while pending:
            index = pending.pop()
            value = self._nodes.get(index)
            if value is None:
                plen, net = self._block(index)
                yield net, plen
            elif value != CLAIMED:
                pending.append(index << 1 | 1)
                pending.append(index << 1)
