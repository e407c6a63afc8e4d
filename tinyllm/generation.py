"""Text in, text out: the one generation path shared by the console, the sampling callback and
scripts. The model streams token ids; this module turns prompts into ids and ids into text,
applies the sampling settings, and stops at a stop string."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from tinyllm.model import Transformer
from tinyllm.tokenizer import CharacterTokenizer


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None
    stop: str | None = None  # stop once this text has been generated

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise ValueError(f"max tokens must be an integer, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be in (0, 1] (1 turns it off), got {self.top_p}")

    def updated(self, **changes) -> SamplingSettings:
        return replace(self, **changes)


def stream_text(
    model: Transformer,
    tokenizer: CharacterTokenizer,
    prompt: str,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece (one character per token).

    Raises UnknownCharactersError before generating if the prompt has characters the model
    never saw. A fresh generator is seeded from `settings.seed` unless one is passed in.
    """
    ids = tokenizer.encode(prompt)
    if generator is None and settings.seed is not None:
        generator = torch.Generator(device=model.token_embedding.weight.device)
        generator.manual_seed(settings.seed)
    pending = ""  # text held back because it might be the start of the stop string
    for token in model.stream(
        ids,
        settings.max_tokens,
        settings.temperature,
        settings.top_k or None,
        settings.top_p,
        generator=generator,
    ):
        piece = tokenizer.decode([token])
        if not settings.stop:
            yield piece
            continue
        pending += piece
        cut = pending.find(settings.stop)
        if cut != -1:
            if cut:
                yield pending[:cut]
            return
        held = _longest_stop_prefix_suffix(pending, settings.stop)
        if len(pending) > held:
            yield pending[: len(pending) - held]
            pending = pending[len(pending) - held :]
    if pending:
        yield pending


def _longest_stop_prefix_suffix(text: str, stop: str) -> int:
    """Length of the longest end of `text` that could grow into `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-n:]):
            return n
    return 0


def generate_text(
    model: Transformer,
    tokenizer: CharacterTokenizer,
    prompt: str,
    settings: SamplingSettings | None = None,
    **overrides,
) -> str:
    """The whole continuation of `prompt` as one string (the prompt is not repeated)."""
    settings = (settings or SamplingSettings()).updated(**overrides)
    return "".join(stream_text(model, tokenizer, prompt, settings))
