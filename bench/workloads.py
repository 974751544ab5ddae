"""The benchmark's workloads: fixed-seed request sets, identical for every contender.

A workload is a list of sessions; a session is one or more user turns sent one
after the other (a turn waits for the previous answer). Sessions run
concurrently up to the workload's concurrency. Text is made of pseudo-words
drawn from a seeded generator and cut to a target length in tokens of the
tokenizer the workers use, so prompt lengths are exact where they matter
(shared system prompts, long documents).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

SEED = 20260


class Encoder(Protocol):
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str: ...


@dataclass(frozen=True)
class Session:
    """One conversation: an optional system prompt and user turns in order."""

    user_turns: tuple[str, ...]
    system: str | None = None
    tag: str = ""
    """Group label (shared-prefix group, document); used only in reports."""


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    sessions: tuple[Session, ...]
    concurrency: int
    max_tokens: int
    stream: bool = True
    keep_history: bool = False
    """Each turn resends the conversation so far, answers included."""
    time_limit_s: float = 120.0
    request_timeout_s: float = 60.0

    @property
    def request_count(self) -> int:
        return sum(len(s.user_turns) for s in self.sessions)


_CONSONANTS = "bcdfghklmnprstvwz"
_VOWELS = "aeiou"


def _lexicon(rng: random.Random, size: int = 3000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(1, 3)
        words.add("".join(
            rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables)
        ))
    return sorted(words)


class TextMaker:
    """Seeded pseudo-text of a given length in tokens."""

    def __init__(self, tokenizer: Encoder, seed: int = SEED) -> None:
        self._tokenizer = tokenizer
        self._rng = random.Random(seed)
        self._words = _lexicon(self._rng)

    def words(self, count: int) -> str:
        out = []
        for i in range(count):
            word = self._rng.choice(self._words)
            out.append(word)
            if i % 14 == 13:
                out[-1] += "."
        return " ".join(out)

    def tokens(self, count: int) -> str:
        """About ``count`` tokens of text (exact up to re-tokenization at the cut)."""
        # Pseudo-words average well under two tokens; ask for enough and cut.
        text = self.words(max(4, count))
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        while len(ids) < count:
            text += " " + self.words(count)
            ids = self._tokenizer.encode(text, add_special_tokens=False)
        return self._tokenizer.decode(ids[:count])


@dataclass(frozen=True)
class Sizes:
    shared_groups: int
    shared_users: int
    shared_prefix_tokens: int
    shared_concurrency: int
    chat_sessions: int
    chat_turns: int
    chat_concurrency: int
    short_requests: int
    long_docs: int
    long_questions: int
    long_tokens: int


FULL = Sizes(
    shared_groups=24,
    shared_users=8,
    shared_prefix_tokens=3000,
    shared_concurrency=16,
    chat_sessions=24,
    chat_turns=6,
    chat_concurrency=12,
    short_requests=300,
    long_docs=2,
    long_questions=2,
    long_tokens=100_000,
)

QUICK = Sizes(
    shared_groups=8,
    shared_users=4,
    shared_prefix_tokens=2000,
    shared_concurrency=8,
    chat_sessions=6,
    chat_turns=3,
    chat_concurrency=6,
    short_requests=60,
    long_docs=2,
    long_questions=2,
    long_tokens=20_000,
)


def shared_prefix(maker: TextMaker, sizes: Sizes) -> Workload:
    sessions: list[Session] = []
    for group in range(sizes.shared_groups):
        system = (
            f"You are assistant number {group} of the support desk. "
            + maker.tokens(sizes.shared_prefix_tokens)
        )
        for user in range(sizes.shared_users):
            question = f"Question {user}: " + maker.tokens(40)
            sessions.append(Session((question,), system=system, tag=f"group{group}"))
    # Users of all groups arrive mixed, as they would at a shared endpoint.
    random.Random(SEED + 1).shuffle(sessions)
    return Workload(
        name="shared_prefix",
        description=(
            f"{sizes.shared_groups} groups x {sizes.shared_users} users; each group "
            f"shares a ~{sizes.shared_prefix_tokens}-token system prompt, each user "
            f"asks a different ~40-token question; streamed, 64 output tokens, "
            f"{sizes.shared_concurrency} in flight"
        ),
        sessions=tuple(sessions),
        concurrency=sizes.shared_concurrency,
        max_tokens=64,
    )


def multi_turn(maker: TextMaker, sizes: Sizes) -> Workload:
    sessions = []
    for index in range(sizes.chat_sessions):
        system = f"Conversation {index}. " + maker.tokens(200)
        turns = tuple(
            f"Turn {turn}: " + maker.tokens(150) for turn in range(sizes.chat_turns)
        )
        sessions.append(Session(turns, system=system, tag=f"chat{index}"))
    return Workload(
        name="multi_turn",
        description=(
            f"{sizes.chat_sessions} conversations x {sizes.chat_turns} turns; each "
            f"turn adds ~150 user tokens and resends the whole history (answers "
            f"included); streamed, 96 output tokens, {sizes.chat_concurrency} "
            f"conversations in flight"
        ),
        sessions=tuple(sessions),
        concurrency=sizes.chat_concurrency,
        max_tokens=96,
        keep_history=True,
    )


def short(sizes: Sizes) -> Workload:
    sessions = tuple(
        Session((f"Say hi {i}.",), tag="short") for i in range(sizes.short_requests)
    )
    return Workload(
        name="short",
        description=(
            f"{sizes.short_requests} tiny requests one at a time, 1 output token, "
            f"not streamed: the gateway's own added latency"
        ),
        sessions=sessions,
        concurrency=1,
        max_tokens=1,
        stream=False,
        request_timeout_s=10.0,
    )


def long_prompts(maker: TextMaker, sizes: Sizes) -> Workload:
    documents = [
        f"Document {doc}. " + maker.tokens(sizes.long_tokens)
        for doc in range(sizes.long_docs)
    ]
    # Question-major order: every document's first question goes out before
    # any second one, so a second question finds its document already
    # prefilled somewhere and only a router that sends it there gets the hit.
    sessions = [
        Session((f"{text}\n\nQuestion {q}: summarise part {q + 1}.",), tag=f"doc{d}")
        for q in range(sizes.long_questions)
        for d, text in enumerate(documents)
    ]
    return Workload(
        name="long",
        description=(
            f"{sizes.long_docs} documents of ~{sizes.long_tokens // 1000}K tokens, "
            f"{sizes.long_questions} questions each (the second can reuse the "
            f"first's cache); streamed, 32 output tokens, 2 in flight"
        ),
        sessions=tuple(sessions),
        concurrency=2,
        max_tokens=32,
        request_timeout_s=120.0,
        time_limit_s=300.0,
    )


def build_workloads(tokenizer: Encoder, *, quick: bool) -> list[Workload]:
    """Every workload, deterministic for a given tokenizer and mode."""
    sizes = QUICK if quick else FULL
    maker = TextMaker(tokenizer)
    return [
        shared_prefix(maker, sizes),
        multi_turn(maker, sizes),
        short(sizes),
        long_prompts(maker, sizes),
    ]
