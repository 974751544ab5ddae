from corral.tokenizer import load_builtin_tokenizer, load_tokenizer


def test_tinyllama_chat_renders_and_tokenizes_as_transformers(tinyllama_path):
    tokenizer = load_tokenizer(str(tinyllama_path))
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there"},
    ]
    prompt = tokenizer.render_chat(messages)
    assert prompt == "<|system|>\nYou are terse.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n"
    ids = tokenizer.encode(prompt)
    assert len(ids) == 33
    assert ids[:7] == [1, 529, 29989, 5205, 29989, 29958, 13]


def test_builtin_tokenizer_is_deterministic_across_training_runs(tmp_path):
    first = load_builtin_tokenizer(tmp_path / "a")
    second = load_builtin_tokenizer(tmp_path / "b")
    text = "The quick brown fox jumps over the lazy dog."
    assert first.encode(text) == second.encode(text)
    assert first.raw.to_str() == second.raw.to_str()
    assert first.decode(first.encode(text)) == text
