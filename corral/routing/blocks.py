"""Every hash and block cut the routing policies make, in one place.

Two kinds of hashing happen here:

* ``stable_hash64``: a keyed-by-nothing 64-bit BLAKE2b digest, the same in every
  process and on every restart, so several gateway replicas place a session key
  or a prompt prefix on the same worker. Python's ``hash()`` is salted per
  process and must never be used for that.
* block keys for the cache-aware tree: prompts are cut into fixed blocks (16
  tokens by default, as engines page their KV cache; 64 characters when the
  request was not tokenized), and a tree child is keyed by the digest of its
  first block. Only whole blocks count: engines do not share a partial page, so
  a sub-block tail is never matched or stored.

Token ids are packed into ``array('I')`` (4 bytes a token): compact to store
and compared in C, which keeps a 4k-token prompt's match in microseconds.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from hashlib import blake2b
from typing import TypeAlias

Packed: TypeAlias = "array[int]"
"""Token ids packed with typecode ``'I'``."""


def stable_hash64(data: bytes) -> int:
    """A 64-bit unsigned digest of ``data``, stable across processes."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def stable_hash_text(text: str) -> int:
    return stable_hash64(text.encode("utf-8", "surrogatepass"))


def pack_tokens(tokens: Sequence[int], limit: int | None = None) -> Packed | None:
    """The first ``limit`` token ids (all when ``None``) packed, or ``None`` if
    an id does not fit an unsigned 32-bit integer (no real vocabulary is that
    large; such a request is treated as untokenized rather than failing)."""
    if limit is not None and len(tokens) > limit:
        tokens = tokens[:limit]
    if isinstance(tokens, array) and tokens.typecode == "I":
        return tokens
    try:
        return array("I", tokens)
    except (OverflowError, TypeError, ValueError):
        return None


def token_blocks(
    tokens: Sequence[int], block_size: int, max_blocks: int | None = None
) -> Packed | None:
    """The prompt cut to whole blocks (at most ``max_blocks``), packed."""
    whole = len(tokens) // block_size
    if max_blocks is not None and whole > max_blocks:
        whole = max_blocks
    return pack_tokens(tokens, whole * block_size)


def text_blocks(text: str, block_chars: int, max_blocks: int | None = None) -> str:
    """The text cut to whole character blocks (at most ``max_blocks``)."""
    whole = len(text) // block_chars
    if max_blocks is not None and whole > max_blocks:
        whole = max_blocks
    return text[: whole * block_chars]


def block_key(seq: Packed | str, start: int, size: int) -> int:
    """The digest of the block of ``seq`` that begins at ``start``: the key of a
    tree child. A collision only costs a missed match, since the tree compares
    the whole edge after the key lookup."""
    block = seq[start : start + size]
    if isinstance(block, str):
        return stable_hash_text(block)
    return stable_hash64(block.tobytes())


def prefix_digest(
    tokens: Sequence[int] | None, text: str | None, prefix_tokens: int
) -> int | None:
    """Digest of the first ``prefix_tokens`` tokens, or of the first
    ``4 * prefix_tokens`` characters when the request was not tokenized (about
    four characters a token in English text); ``None`` when there is neither."""
    if tokens:
        packed = pack_tokens(tokens, prefix_tokens)
        if packed is not None:
            return stable_hash64(b"t" + packed.tobytes())
    if text:
        return stable_hash_text("c" + text[: 4 * prefix_tokens])
    return None


def common_blocks(edge: Packed | str, seq: Packed | str, start: int, size: int) -> int:
    """How many whole blocks of ``edge`` equal ``seq`` from ``start`` on.

    Equal edges, the common case, cost one C-level comparison; otherwise a
    binary search over block counts compares O(log n) slices."""
    length = min(len(edge), len(seq) - start)
    blocks = length // size
    if blocks <= 0:
        return 0
    span = blocks * size
    if edge[:span] == seq[start : start + span]:
        return blocks
    low, high = 0, blocks - 1  # ``low`` blocks match; more than ``high`` do not
    while low < high:
        mid = (low + high + 1) // 2
        span = mid * size
        if edge[:span] == seq[start : start + span]:
            low = mid
        else:
            high = mid - 1
    return low
