"""A two-level, memory-bounded cache in front of a model's tokenizer.

L0 maps a whole prompt (a BLAKE2 digest of its text and the special-token flag)
to its token ids: repeated prompts cost a hash and a dict lookup.

L1 reuses shared prefixes. The prompt is cut at the end of every special-token
occurrence (for chat prompts: the end-of-turn markers the template writes), and
each segment's token ids are stored under the digest of the text up to the
segment's end. A new prompt walks its boundaries from the start while the
segments are cached, then encodes only the rest. Splicing is exact only where
the tokenizer never merges across the boundary and the text after it encodes
the same on its own; special tokens are split out before any model merges,
which makes them the safe cut points. The cache does not take that on trust:
it compares the spliced result with a whole encoding on the first prompts it
seeds (``verify_samples``) and turns L1 off for good at the first mismatch.

Both levels are LRU and bounded by bytes of stored ids (4 bytes a token).
Methods are thread-safe: dict operations hold a lock, encoding does not, so
long prompts may be encoded in worker threads (the tokenizer releases the GIL).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from corral.tokenizer.model import ModelTokenizer

logger = logging.getLogger(__name__)

TokenIds = Sequence[int]

DEFAULT_L0_MAX_ENTRIES = 10_000
DEFAULT_L0_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_L1_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_VERIFY_SAMPLES = 16
VERIFY_MAX_CHARS = 64 * 1024
"""Prompts longer than this are not used as verification samples (cost)."""
VERIFY_MAX_CUTS = 8
"""Boundaries checked per verification sample, spread over the prompt."""
_ENTRY_OVERHEAD = 200
"""Approximate bytes per entry beyond its ids (key, array header, dict slot)."""


class _Lru:
    """An LRU map of digest -> ``array('I')`` bounded by entries and bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[bytes, array[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> array[int] | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: array[int]) -> None:
        size = _size(value)
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= _size(old)
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._items) > self.max_entries:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= _size(evicted)


def _size(value: array[int]) -> int:
    return len(value) * value.itemsize + _ENTRY_OVERHEAD


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids and where they came from: ``l0``, ``l1`` or ``miss``."""

    ids: TokenIds
    level: str


class TokenizerCache:
    """Caching ``encode`` for one tokenizer. See the module docstring."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        *,
        l0_max_entries: int = DEFAULT_L0_MAX_ENTRIES,
        l0_max_bytes: int = DEFAULT_L0_MAX_BYTES,
        l1_max_bytes: int = DEFAULT_L1_MAX_BYTES,
        verify_samples: int = DEFAULT_VERIFY_SAMPLES,
    ) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        self._l0 = _Lru(l0_max_entries, l0_max_bytes)
        self._l1 = _Lru(max(1, l1_max_bytes // _ENTRY_OVERHEAD), l1_max_bytes)
        self._verify_left = verify_samples
        specials = sorted(tokenizer.special_token_texts, key=len, reverse=True)
        self._boundary = (
            re.compile("|".join(re.escape(s) for s in specials)) if specials else None
        )
        self.l1_enabled = self._boundary is not None and l1_max_bytes > 0

    def __repr__(self) -> str:
        return (
            f"<TokenizerCache {self.tokenizer.name} l0={len(self._l0)}"
            f"/{self._l0.bytes}B l1={len(self._l1)}/{self._l1.bytes}B"
            f" l1_enabled={self.l1_enabled}>"
        )

    @property
    def l0_bytes(self) -> int:
        return self._l0.bytes

    @property
    def l1_bytes(self) -> int:
        return self._l1.bytes

    def lookup(self, text: str, *, add_special_tokens: bool) -> TokenIds | None:
        """The L0 entry for ``text``, or ``None``: a quick check for the loop."""
        key = _digest(text, add_special_tokens)
        with self._lock:
            return self._l0.get(key)

    def encode(self, text: str, *, add_special_tokens: bool) -> Encoded:
        """Token ids of ``text``, exactly as ``tokenizer.encode`` would give them.

        The returned ids must not be modified (they are shared with the cache).
        """
        key = _digest(text, add_special_tokens)
        with self._lock:
            hit = self._l0.get(key)
        if hit is not None:
            return Encoded(hit, "l0")
        result = self._encode_l1(text, add_special_tokens) if self.l1_enabled else None
        if result is None:
            ids = array(
                "I", self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
            )
            result = Encoded(ids, "miss")
        with self._lock:
            self._l0.put(key, result.ids)  # type: ignore[arg-type]
        return result

    # -- L1 ---------------------------------------------------------------------

    def _boundaries(self, text: str) -> list[int]:
        assert self._boundary is not None
        return [m.end() for m in self._boundary.finditer(text) if m.end() < len(text)]

    def _encode_l1(self, text: str, add_special_tokens: bool) -> Encoded | None:
        bounds = self._boundaries(text)
        if not bounds:
            return None
        if self._verify_left > 0 and len(text) <= VERIFY_MAX_CHARS:
            self._verify_left -= 1
            if not self.verify_split(text, add_special_tokens=add_special_tokens):
                return None
        digest = hashlib.blake2b(
            b"\x01" if add_special_tokens else b"\x00", digest_size=16
        )
        keys: list[bytes] = []
        previous = 0
        for end in bounds:
            digest.update(text[previous:end].encode("utf-8", "surrogatepass"))
            keys.append(digest.copy().digest())
            previous = end
        prefix = array("I")
        cached = 0
        with self._lock:
            for key in keys:
                segment = self._l1.get(key)
                if segment is None:
                    break
                prefix.extend(segment)
                cached += 1
        start = bounds[cached - 1] if cached else 0
        flag = add_special_tokens and cached == 0
        encoding = self.tokenizer.raw.encode(text[start:], add_special_tokens=flag)
        ids = array("I", encoding.ids)
        self._seed(keys[cached:], bounds[cached:], start, ids, encoding.offsets)
        if cached == 0:
            return Encoded(ids, "miss")
        prefix.extend(ids)
        return Encoded(prefix, "l1")

    def _seed(
        self,
        keys: list[bytes],
        bounds: list[int],
        start: int,
        ids: array[int],
        offsets: Sequence[tuple[int, int]],
    ) -> None:
        """Store the segments of a fresh encoding of ``text[start:]``."""
        cuts: list[int] = []
        index = 0
        for end in bounds:
            local = end - start
            # Tokens that start before the boundary belong to the segment; the
            # post-processor's leading added tokens report (0, 0) and stay first.
            while index < len(offsets) and offsets[index][0] < local:
                index += 1
            cuts.append(index)
        with self._lock:
            previous = 0
            for key, cut in zip(keys, cuts, strict=True):
                self._l1.put(key, ids[previous:cut])
                previous = cut

    def verify_split(self, text: str, *, add_special_tokens: bool) -> bool:
        """Whether splicing at the boundaries of ``text`` reproduces the whole
        encoding (up to ``VERIFY_MAX_CUTS`` boundaries, spread evenly, each
        costing one encoding of the rest). Turns L1 off, with a warning, when
        it does not."""
        if not self.l1_enabled:
            return False
        whole = self.tokenizer.raw.encode(text, add_special_tokens=add_special_tokens)
        ids, offsets = list(whole.ids), whole.offsets
        bounds = self._boundaries(text)
        step = max(1, -(-len(bounds) // VERIFY_MAX_CUTS))
        for end in bounds[::step]:
            index = 0
            while index < len(offsets) and offsets[index][0] < end:
                index += 1
            tail = self.tokenizer.encode(text[end:], add_special_tokens=False)
            if ids[:index] + tail != ids:
                logger.warning(
                    "tokenizer %s: encoding does not split exactly at special "
                    "tokens (char %d); prefix cache (L1) disabled",
                    self.tokenizer.name,
                    end,
                )
                self.l1_enabled = False
                return False
        return True


def _digest(text: str, add_special_tokens: bool) -> bytes:
    digest = hashlib.blake2b(b"\x01" if add_special_tokens else b"\x00", digest_size=16)
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.digest()
