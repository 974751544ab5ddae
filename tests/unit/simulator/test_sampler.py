"""Output tokens: deterministic, plain text, consistent with the tokenizer."""

from __future__ import annotations

import pytest

from corral.errors import InvalidRequest
from corral.simulator.config import FaultConfig
from corral.simulator.sampler import TokenStream, seed_for, vocabulary
from corral.tokenizer import load_tokenizer


def _draw(tokenizer_spec: str, seed: str, count: int) -> tuple[list[int], str]:
    stream = TokenStream(vocabulary(load_tokenizer(tokenizer_spec)), seed)
    ids, text = [], ""
    for _ in range(count):
        token_id, piece = stream.next()
        ids.append(token_id)
        text += piece
    return ids, text


def test_same_seed_same_tokens_different_seed_different_tokens():
    assert _draw("builtin", "s1", 20) == _draw("builtin", "s1", 20)
    assert _draw("builtin", "s1", 20) != _draw("builtin", "s2", 20)


def test_seed_comes_from_request_seed_else_from_prompt():
    assert seed_for(5, [1, 2], 0) == seed_for(5, [3, 4], 0)
    assert seed_for(5, [1, 2], 0) != seed_for(5, [1, 2], 1)
    assert seed_for(None, [1, 2], 0) != seed_for(None, [1, 3], 0)


@pytest.mark.parametrize("which", ["builtin", "tinyllama"])
def test_pieces_concatenate_to_the_decoded_text(which, tinyllama_path):
    spec = "builtin" if which == "builtin" else str(tinyllama_path)
    ids, text = _draw(spec, "x", 50)
    decoded = load_tokenizer(spec).decode(ids)
    assert "\ufffd" not in text
    assert decoded.strip() == text.strip()
    assert text.isprintable()


def test_fault_update_validates_before_changing_anything():
    faults = FaultConfig()
    with pytest.raises(InvalidRequest):
        faults.update({"error_rate": 0.5, "error_status": 200})
    assert faults.error_rate == 0.0
    with pytest.raises(InvalidRequest):
        faults.update({"bogus": 1})
    faults.update({"hang": True, "fail_after": None, "drop_after_chunks": 2})
    assert faults.hang and faults.drop_after_chunks == 2
