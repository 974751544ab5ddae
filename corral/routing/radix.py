"""A bounded radix tree of prompt blocks, recording which workers hold each prefix.

It approximates what each engine keeps in its prefix (KV) cache: a request sent
to a worker leaves its prompt's whole blocks cached there, so the next request
sharing that prefix is cheaper on the same worker.

Shape: each node's ``edge`` is a run of whole blocks (packed token ids, or a
string for untokenized text); a node is the child of its parent under the
digest of its edge's first block (``blocks.block_key``). Runs are compressed, so
a 4k-token conversation is one node, not 256. Every node maps the workers
(tenants) that hold it to the tick at which each last used it; a worker holding
a node holds all its ancestors, which lets a purge drop whole subtrees.

Bounds: ``total_blocks`` never exceeds ``max_blocks`` after an insert. Leaves are
kept in LRU order and the least recently used are dropped inline, as part of
the insert that went over (amortised O(1) per inserted block; no background
task). Nodes never outnumber blocks, and tenant maps never hold more than the
workers seen, which ``remove_tenant`` trims. So memory stays bounded whatever
prompts clients send.
"""

from __future__ import annotations

import logging
from array import array
from collections import OrderedDict
from typing import TypeAlias

from corral.routing.blocks import block_key, common_blocks

logger = logging.getLogger(__name__)

Seq: TypeAlias = "array[int] | str"


class _Node:
    __slots__ = ("children", "edge", "key", "parent", "tenants")

    def __init__(
        self, edge: Seq, tenants: dict[str, int], parent: _Node | None, key: int
    ) -> None:
        self.edge = edge
        self.children: dict[int, _Node] | None = None
        self.tenants = tenants
        self.parent = parent
        self.key = key


class BlockTree:
    """One pool's tree for one kind of sequence (tokens or characters).

    ``block`` is the block length in sequence units; every sequence passed in
    must already be cut to whole blocks (``blocks.token_blocks`` /
    ``blocks.text_blocks``). Not thread-safe: it lives on the event loop thread.
    """

    def __init__(self, block: int, max_blocks: int) -> None:
        self.block = block
        self.max_blocks = max_blocks
        self.total_blocks = 0
        self.node_count = 0
        self._root = _Node("", {}, None, 0)
        self._leaves: OrderedDict[_Node, None] = OrderedDict()
        self._tick = 0

    def __repr__(self) -> str:
        return (
            f"<BlockTree block={self.block} blocks={self.total_blocks}/"
            f"{self.max_blocks} nodes={self.node_count}>"
        )

    def match(self, seq: Seq) -> list[tuple[_Node, int]]:
        """The path ``seq`` follows: ``(node, units matched up to and within
        it)`` pairs, root excluded, shallowest first. Read-only."""
        path: list[tuple[_Node, int]] = []
        node = self._root
        block = self.block
        pos = 0
        n = len(seq)
        while pos < n:
            children = node.children
            if not children:
                break
            child = children.get(block_key(seq, pos, block))
            if child is None:
                break
            edge_blocks = len(child.edge) // block
            common = common_blocks(child.edge, seq, pos, block)
            if common == 0:
                break
            pos += common * block
            path.append((child, pos))
            if common < edge_blocks:
                break
            node = child
        return path

    def tenant_matches(self, seq: Seq) -> dict[str, int]:
        """For each tenant holding part of ``seq``'s prefix, how many units of it."""
        found: dict[str, int] = {}
        for node, length in reversed(self.match(seq)):
            for tenant in node.tenants:
                if tenant not in found:
                    found[tenant] = length
        return found

    def insert(self, seq: Seq, tenant: str) -> None:
        """Record that ``tenant`` now holds every block of ``seq``, then evict
        least recently used leaves while over ``max_blocks``."""
        block = self.block
        n = len(seq)
        if n < block:
            return
        self._tick += 1
        tick = self._tick
        node = self._root
        pos = 0
        while pos < n:
            key = block_key(seq, pos, block)
            children = node.children
            child = children.get(key) if children else None
            if child is None:
                self._append(node, seq[pos:], key, tenant, tick)
                break
            common = common_blocks(child.edge, seq, pos, block)
            if common == 0:
                # Digest collision with a different block: leave it uncached.
                break
            if common * block < len(child.edge):
                child = self._split(child, common * block)
            child.tenants[tenant] = tick
            pos += common * block
            node = child
        else:
            if node in self._leaves:
                self._leaves.move_to_end(node)
        if self.total_blocks > self.max_blocks:
            self._evict()

    def remove_tenant(self, tenant: str) -> int:
        """Forget ``tenant`` everywhere; nodes nobody holds any more go.
        Returns the number of nodes removed. O(nodes): membership changes only."""
        removed = 0
        stack = list(self._root.children.values()) if self._root.children else []
        while stack:
            node = stack.pop()
            if node.tenants.pop(tenant, None) is None:
                continue  # nor do its descendants hold it
            if not node.tenants:
                removed += self._drop_subtree(node)
            elif node.children:
                stack.extend(node.children.values())
        if removed:
            logger.debug("tree purge of %s removed %d nodes", tenant, removed)
        return removed

    def tenants(self) -> set[str]:
        """Every tenant that holds at least one node (O(nodes))."""
        seen: set[str] = set()
        stack = list(self._root.children.values()) if self._root.children else []
        while stack:
            node = stack.pop()
            seen.update(node.tenants)
            if node.children:
                stack.extend(node.children.values())
        return seen

    # -- internals ----------------------------------------------------------

    def _append(self, node: _Node, rest: Seq, key: int, tenant: str, tick: int) -> None:
        """Store ``rest`` below ``node``. A leaf held by this tenant alone grows
        in place (a conversation's next turn), keeping the node count low."""
        blocks = len(rest) // self.block
        leaves = self._leaves
        if (
            node is not self._root
            and node.children is None
            and len(node.tenants) == 1
            and tenant in node.tenants
        ):
            node.edge = node.edge + rest  # type: ignore[operator]
            node.tenants[tenant] = tick
            leaves.move_to_end(node)
        else:
            leaf = _Node(rest, {tenant: tick}, node, key)
            if node.children is None:
                node.children = {}
                leaves.pop(node, None)
            node.children[key] = leaf
            leaves[leaf] = None
            self.node_count += 1
        self.total_blocks += blocks

    def _split(self, child: _Node, at: int) -> _Node:
        """Cut ``child``'s edge at unit ``at``: a new node takes the head and
        the same tenants (holders of the whole edge hold its head), and
        ``child`` keeps the tail below it."""
        parent = child.parent
        assert parent is not None and parent.children is not None
        head = _Node(child.edge[:at], dict(child.tenants), parent, child.key)
        child.edge = child.edge[at:]
        child.key = block_key(child.edge, 0, self.block)
        child.parent = head
        head.children = {child.key: child}
        parent.children[head.key] = head
        self.node_count += 1
        return head

    def _evict(self) -> None:
        leaves = self._leaves
        block = self.block
        root = self._root
        evicted = 0
        while self.total_blocks > self.max_blocks and leaves:
            leaf, _ = leaves.popitem(last=False)
            parent = leaf.parent
            assert parent is not None and parent.children is not None
            del parent.children[leaf.key]
            self.total_blocks -= len(leaf.edge) // block
            self.node_count -= 1
            evicted += 1
            if not parent.children:
                parent.children = None
                if parent is not root:
                    # Its last use was no later than the leaf's, which was the
                    # oldest: it goes to the front of the order.
                    leaves[parent] = None
                    leaves.move_to_end(parent, last=False)
        logger.debug("tree eviction removed %d leaves", evicted)

    def _drop_subtree(self, top: _Node) -> int:
        parent = top.parent
        assert parent is not None and parent.children is not None
        del parent.children[top.key]
        if not parent.children:
            parent.children = None
            if parent is not self._root:
                self._leaves[parent] = None
        removed = 0
        stack = [top]
        while stack:
            node = stack.pop()
            removed += 1
            self.total_blocks -= len(node.edge) // self.block
            if node.children:
                stack.extend(node.children.values())
            else:
                self._leaves.pop(node, None)
        self.node_count -= removed
        return removed
