"""The two-level tokenizer cache: hits, exact prefix splicing, memory bounds."""

from __future__ import annotations

import pytest

from corral.tokenizer import load_tokenizer
from corral.tokenizer.cache import TokenizerCache


@pytest.fixture
def tinyllama(tinyllama_path):
    return load_tokenizer(str(tinyllama_path))


def _conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You answer in one line. \u00e9\u4e16"}]
    for i in range(turns):
        messages.append(
            {"role": "user", "content": f"Question {i}: what is {i} * {i}?"}
        )
        messages.append({"role": "assistant", "content": f"It is {i * i}.\n\nDone."})
    messages.append({"role": "user", "content": "And now?"})
    return messages


def test_repeated_prompt_hits_l0_with_identical_ids(tinyllama):
    cache = TokenizerCache(tinyllama)
    prompt = tinyllama.render_chat(_conversation(2))
    first = cache.encode(prompt, add_special_tokens=False)
    second = cache.encode(prompt, add_special_tokens=False)
    assert (first.level, second.level) == ("miss", "l0")
    assert list(second.ids) == tinyllama.encode(prompt, add_special_tokens=False)
    assert cache.lookup(prompt, add_special_tokens=False) is not None
    assert cache.lookup(prompt, add_special_tokens=True) is None


@pytest.mark.parametrize("add_special_tokens", [False, True])
@pytest.mark.parametrize("turns", [1, 3, 8])
def test_growing_conversation_hits_l1_and_equals_whole_encoding(
    tinyllama, turns: int, add_special_tokens: bool
):
    cache = TokenizerCache(tinyllama)
    shorter = tinyllama.render_chat(
        _conversation(turns - 1), add_generation_prompt=False
    )
    cache.encode(shorter, add_special_tokens=add_special_tokens)
    longer = tinyllama.render_chat(_conversation(turns))
    result = cache.encode(longer, add_special_tokens=add_special_tokens)
    assert result.level == "l1"
    assert list(result.ids) == tinyllama.encode(
        longer, add_special_tokens=add_special_tokens
    )


def test_tinyllama_chat_prompts_split_exactly_at_special_tokens(tinyllama):
    cache = TokenizerCache(tinyllama)
    for turns in range(6):
        prompt = tinyllama.render_chat(_conversation(turns))
        assert cache.verify_split(prompt, add_special_tokens=False)
        assert cache.verify_split(prompt, add_special_tokens=True)
    assert cache.l1_enabled


def test_inexact_split_turns_l1_off_and_falls_back_to_whole_encoding(tinyllama):
    cache = TokenizerCache(tinyllama)
    # Pretend "Question" were a special token: cutting inside ordinary text
    # changes how the words around it merge, and the check must notice.
    import re

    cache._boundary = re.compile("Quest")
    prompt = tinyllama.render_chat(_conversation(3))
    result = cache.encode(prompt, add_special_tokens=False)
    assert not cache.l1_enabled
    assert result.level == "miss"
    assert list(result.ids) == tinyllama.encode(prompt, add_special_tokens=False)


def test_l0_stays_within_its_entry_and_byte_bounds(tinyllama):
    cache = TokenizerCache(tinyllama, l0_max_entries=3, l0_max_bytes=10_000)
    prompts = [f"prompt number {i} " * 20 for i in range(10)]
    for prompt in prompts:
        cache.encode(prompt, add_special_tokens=True)
    assert len(cache._l0) <= 3
    assert cache.l0_bytes <= 10_000
    # Least recently used went first: the last three remain.
    assert cache.lookup(prompts[-1], add_special_tokens=True) is not None
    assert cache.lookup(prompts[0], add_special_tokens=True) is None


def test_l1_stays_within_its_byte_bound(tinyllama):
    cache = TokenizerCache(tinyllama, l1_max_bytes=2_000)
    for turns in range(1, 12):
        cache.encode(
            tinyllama.render_chat(_conversation(turns)), add_special_tokens=False
        )
    assert 0 < cache.l1_bytes <= 2_000


def test_builtin_tokenizer_splices_exactly():
    tokenizer = load_tokenizer("builtin")
    cache = TokenizerCache(tokenizer)
    base = _conversation(2)
    cache.encode(tokenizer.render_chat(base), add_special_tokens=False)
    longer = tokenizer.render_chat(_conversation(3))
    result = cache.encode(longer, add_special_tokens=False)
    assert result.level == "l1"
    assert list(result.ids) == tokenizer.encode(longer, add_special_tokens=False)
