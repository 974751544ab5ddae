from __future__ import annotations

import random

import pytest

from corral.routing.blocks import text_blocks, token_blocks
from corral.routing.radix import BlockTree

BLOCK = 16


def _seq(tokens: list[int]):
    packed = token_blocks(tokens, BLOCK)
    assert packed is not None
    return packed


def _random(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32000) for _ in range(n)]


def test_a_stored_prompt_matches_whole_blocks_only():
    tree = BlockTree(BLOCK, 1000)
    tokens = list(range(40))  # two whole blocks and a tail of 8
    tree.insert(_seq(tokens), "a")
    assert tree.total_blocks == 2
    assert tree.tenant_matches(_seq(tokens + [99] * 30)) == {"a": 32}


DIVERGE = [
    ("inside_first_block", 5, 0),
    ("at_block_boundary", 32, 32),
    ("inside_third_block", 40, 32),
]


@pytest.mark.parametrize(
    ("diverge_at", "shared"),
    [case[1:] for case in DIVERGE],
    ids=[case[0] for case in DIVERGE],
)
def test_diverging_prompts_split_and_keep_each_holder(diverge_at, shared):
    rng = random.Random(1)
    base = _random(rng, 96)
    other = base[:diverge_at] + [t + 1 for t in base[diverge_at:]]
    tree = BlockTree(BLOCK, 1000)
    tree.insert(_seq(base), "a")
    tree.insert(_seq(other), "b")
    matches_base = tree.tenant_matches(_seq(base))
    assert matches_base["a"] == 96
    assert matches_base.get("b", 0) == shared
    assert tree.tenant_matches(_seq(other)) == (
        {"a": shared, "b": 96} if shared else {"b": 96}
    )
    assert tree.total_blocks == 6 + (96 - shared) // BLOCK


def test_a_growing_conversation_extends_one_node():
    rng = random.Random(2)
    tree = BlockTree(BLOCK, 10_000)
    conversation: list[int] = []
    for _ in range(10):
        conversation += _random(rng, 64)
        tree.insert(_seq(conversation), "a")
    assert tree.node_count == 1
    assert tree.total_blocks == 40


def test_eviction_keeps_blocks_within_the_bound_whatever_is_inserted():
    rng = random.Random(3)
    tree = BlockTree(BLOCK, 500)
    shared = _random(rng, 256)
    for i in range(2000):
        head = shared[: rng.randrange(0, 256)]
        tree.insert(_seq(head + _random(rng, rng.randrange(16, 600))), f"w{i % 7}")
        assert tree.total_blocks <= 500
    assert 0 < tree.node_count <= tree.total_blocks
    # Every counted block is reachable: a full walk agrees with the counters.
    assert _walk_blocks(tree) == (tree.total_blocks, tree.node_count)


def test_eviction_drops_the_least_recently_used_first():
    rng = random.Random(4)
    tree = BlockTree(BLOCK, 100)
    hot = _seq(_random(rng, 160))
    tree.insert(hot, "a")
    for _ in range(50):
        tree.insert(_seq(_random(rng, 160)), "b")
        tree.insert(hot, "a")  # keeps it recent
    assert tree.tenant_matches(hot) == {"a": 160}


def test_removing_a_tenant_drops_what_only_it_held():
    rng = random.Random(5)
    tree = BlockTree(BLOCK, 1000)
    shared = _random(rng, 64)
    only_a = _seq(shared + _random(rng, 64))
    only_b = _seq(shared + _random(rng, 64))
    tree.insert(only_a, "a")
    tree.insert(only_b, "b")
    removed = tree.remove_tenant("a")
    assert removed == 1
    assert tree.tenants() == {"b"}
    assert tree.tenant_matches(only_a) == {"b": 64}
    assert tree.total_blocks == 8
    assert _walk_blocks(tree) == (tree.total_blocks, tree.node_count)
    tree.remove_tenant("b")
    assert (tree.total_blocks, tree.node_count) == (0, 0)


def test_character_blocks_use_the_same_tree():
    tree = BlockTree(64, 1000)
    text = "system: you are terse. " * 20
    tree.insert(text_blocks(text, 64), "a")
    longer = text_blocks(text + "user: hello " * 10, 64)
    assert tree.tenant_matches(longer) == {"a": len(text) // 64 * 64}


def _walk_blocks(tree: BlockTree) -> tuple[int, int]:
    blocks = nodes = 0
    leaves = set()
    stack = list(tree._root.children.values()) if tree._root.children else []
    while stack:
        node = stack.pop()
        nodes += 1
        blocks += len(node.edge) // tree.block
        assert node.tenants
        if node.children:
            stack.extend(node.children.values())
            for child in node.children.values():
                assert set(child.tenants) <= set(node.tenants)
        else:
            leaves.add(node)
    # The LRU order tracks exactly the leaves.
    assert leaves == set(tree._leaves)
    return blocks, nodes
