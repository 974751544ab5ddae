"""Running one prompt through the engine and producing its choices token by token."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from corral.simulator.engine import Engine
from corral.simulator.metrics import SimMetrics
from corral.simulator.sampler import TokenStream, Vocabulary, seed_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of generation, after validation."""

    n: int = 1
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class Delta:
    """New text of one choice after one step; ``finish_reason`` on its last."""

    index: int
    text: str
    tokens: int
    finish_reason: str | None = None
    matched_stop: str | None = None


@dataclass
class Outcome:
    """Totals of a finished prompt, for ``usage``."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class _Choice:
    index: int
    stream: TokenStream
    limit: int
    hard_limit: bool
    stop: tuple[str, ...]
    text: str = ""
    emitted: int = 0
    tokens: int = 0
    finish_reason: str | None = None
    matched: str | None = field(default=None)

    def step(self) -> Delta:
        _, piece = self.stream.next()
        self.tokens += 1
        self.text += piece
        end = len(self.text)
        for stop in self.stop:
            # Only the region the new piece could complete is searched.
            found = self.text.find(stop, max(0, self.emitted - len(stop)))
            if found != -1 and found < end:
                end, self.matched = found, stop
        if self.matched is not None:
            self.text = self.text[:end]
            self.finish_reason = "stop"
        elif self.tokens >= self.limit:
            self.finish_reason = "length" if self.hard_limit else "stop"
        else:
            # Hold back text that may be the start of a stop string, as engines
            # do, so a stop string is never streamed before it is recognised.
            hold = max((len(s) - 1 for s in self.stop), default=0)
            end = max(self.emitted, len(self.text) - hold)
        delta = Delta(
            self.index,
            self.text[self.emitted : end],
            1,
            self.finish_reason,
            self.matched,
        )
        self.emitted = end
        return delta


async def generate(
    engine: Engine,
    metrics: SimMetrics,
    vocab: Vocabulary,
    prompt: Sequence[int],
    params: SamplingParams,
    outcome: Outcome,
    *,
    index_offset: int = 0,
) -> AsyncGenerator[list[Delta], None]:
    """Yield, per engine step, the deltas of the choices still generating.

    The first step comes out of prefill (the first token), the others after a
    decode step each. ``outcome`` is filled in as tokens are produced. Closing
    the generator early (client gone) frees the engine slot at once.
    """
    cfg = engine.config
    room = cfg.max_model_len - len(prompt)
    choices = []
    for i in range(params.n):
        stream = TokenStream(vocab, seed_for(params.seed, prompt, i))
        natural = stream.natural_length(
            max(1, cfg.min_output_tokens), max(1, cfg.max_output_tokens)
        )
        limit = min(params.max_tokens or room, room)
        hard = True
        if not params.ignore_eos and natural < limit:
            limit, hard = natural, False
        choices.append(
            _Choice(index_offset + i, stream, max(1, limit), hard, params.stop)
        )
    async with engine.slot(prompt, params.n) as slot:
        outcome.cached_tokens = slot.cached_tokens
        await slot.prefill()
        last = time.monotonic()
        metrics.first_token(last - slot.arrived)
        active = choices
        while True:
            deltas = [c.step() for c in active]
            outcome.completion_tokens += len(deltas)
            metrics.generated(len(deltas))
            yield deltas
            active = [c for c in active if c.finish_reason is None]
            if not active:
                break
            total = len(prompt) + max(c.tokens for c in active)
            await slot.decode_step(len(active), total)
            now = time.monotonic()
            metrics.inter_token(now - last)
            last = now
        reason = choices[0].finish_reason or "stop"
        metrics.finished(reason, time.monotonic() - slot.arrived, slot.queue_time)
