"""Text in, text out: the one generation path shared by the console, the sampling callback and
scripts. The model streams token ids; this module turns prompts into ids and ids into text,
applies the sampling settings, and stops at a stop string.

    stream_text(model, tokenizer, prompt, settings)  -> pieces of text, as they are generated
    generate_text(model, tokenizer, prompt, ...)     -> the whole continuation (joins the above)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
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
        if not _is_int(self.max_tokens):
            raise ValueError(f"max tokens must be an integer, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max tokens must be at least 1, got {self.max_tokens}")
        if not _is_number(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top-k must be an integer >= 0 (0 turns it off), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be in (0, 1] (1 turns it off), got {self.top_p!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an integer in [0, 2**63) or None, got {self.seed!r}")
        if self.stop is not None and not isinstance(self.stop, str):
            raise ValueError(f"stop must be text or None, got {self.stop!r}")

    def updated(self, **changes) -> SamplingSettings:
        return replace(self, **changes)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_unknown(tokenizer: CharacterTokenizer, text: str) -> tuple[str, list[str]]:
    """`text` without the characters the tokenizer lacks, and those characters (sorted, once)."""
    unknown = tokenizer.unknown_characters(text)
    if not unknown:
        return text, []
    dropped = set(unknown)
    return "".join(c for c in text if c not in dropped), unknown


def stream_text(
    model: Transformer,
    tokenizer: CharacterTokenizer,
    prompt: str,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    *,
    use_cache: bool = True,
) -> Iterator[str]:
    """Yield the continuation of `prompt` piece by piece (one character per token).

    Raises UnknownCharactersError before generating if the prompt has characters the model
    never saw (`split_unknown` removes them), ValueError if the prompt is empty. A fresh
    generator is seeded from `settings.seed` unless one is passed in; with neither, torch's
    global generator is used. Prompts longer than the model's context are cropped to their end,
    and the window slides as the text grows (see `Transformer.stream`).

    With `settings.stop`, generation ends as soon as the stop text has been generated and the
    stop text itself is not yielded: characters that might begin it are held back until they
    turn out not to, so a piece can then hold several characters.

    Closing the iterator early (`break`, Ctrl-C) stops the model at once; nothing is left
    running.
    """
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one character")
    if generator is None and settings.seed is not None:
        generator = torch.Generator(device=model.token_embedding.weight.device)
        generator.manual_seed(settings.seed)
    tokens = model.stream(
        ids,
        settings.max_tokens,
        settings.temperature,
        settings.top_k or None,
        settings.top_p,
        generator=generator,
        use_cache=use_cache,
    )
    # a byte tokenizer's character may span tokens: the decoder holds bytes until it is whole
    decoder = tokenizer.incremental_decoder()
    with closing(tokens):
        if not settings.stop:
            for token in tokens:
                if piece := decoder.decode([token]):
                    yield piece
            if tail := decoder.decode([], final=True):
                yield tail
            return
        stop = settings.stop
        pending = ""  # text held back because it might be the start of the stop string
        for token in tokens:
            pending += decoder.decode([token])
            cut = pending.find(stop)
            if cut != -1:
                if cut:
                    yield pending[:cut]
                return
            held = _longest_stop_prefix_suffix(pending, stop)
            if len(pending) > held:
                yield pending[: len(pending) - held]
                pending = pending[len(pending) - held :]
        pending += decoder.decode([], final=True)
        cut = pending.find(stop)
        if cut != -1:
            pending = pending[:cut]
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
