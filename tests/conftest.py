"""Fixtures shared by every test: free ports, the shared tokenizer, Envoy."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TINYLLAMA = SHARED / "tokenizers" / "TinyLlama-1.1B-Chat-v1.0"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tinyllama_path() -> Path:
    if not (TINYLLAMA / "tokenizer.json").is_file():
        pytest.fail(f"the shared TinyLlama tokenizer is missing at {TINYLLAMA}")
    return TINYLLAMA


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the builtin tokenizer cache inside the test run's temporary folder."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
