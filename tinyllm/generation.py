"""Text in, text out: the one generation path shared by the console, the sampling callback,
scripts and the HTTP server. The model streams token ids; this module turns prompts into ids and
ids into text, applies the sampling settings, and stops at a stop string.

    stream_text(model, tokenizer, prompt, settings)  -> pieces of text, as they are generated
    generate_text(model, tokenizer, prompt, ...)     -> the whole continuation (joins the above)
    BatchDecoder(model, slots)                        many sequences decoded as one batch, each
                                                      with its own position and settings
    Detokenizer(tokenizer), StopFilter(stops)         ids -> text, and stop strings, per sequence
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace

import torch

from tinyllm.model import Transformer, sample_next_tokens
from tinyllm.tokenizer import CharacterTokenizer


class SettingsError(ValueError):
    """A sampling setting out of range; `field` names it (for an API error's `param`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


# The limits of every sampling setting, wherever it comes from (the console, a model's stored
# defaults, a server request): SamplingSettings enforces them, the others quote them.
MAX_TOKENS = 100_000
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 100_000
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int = 500
    temperature: float = 0.8
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None
    # stop once this text (or any of these texts) has been generated
    stop: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens):
            raise SettingsError(
                "max_tokens", f"max tokens must be an integer, got {self.max_tokens!r}"
            )
        if not 1 <= self.max_tokens <= MAX_TOKENS:
            raise SettingsError(
                "max_tokens", f"max tokens must be in [1, {MAX_TOKENS}], got {self.max_tokens}"
            )
        if not _is_number(self.temperature) or not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise SettingsError(
                "temperature",
                f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {self.temperature!r}",
            )
        if not _is_int(self.top_k) or not 0 <= self.top_k <= MAX_TOP_K:
            raise SettingsError(
                "top_k",
                f"top-k must be an integer in [0, {MAX_TOP_K}] (0 turns it off), "
                f"got {self.top_k!r}",
            )
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise SettingsError(
                "top_p", f"top-p must be in (0, 1] (1 turns it off), got {self.top_p!r}"
            )
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise SettingsError(
                "seed", f"seed must be an integer in [0, 2**63) or None, got {self.seed!r}"
            )
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop, tuple):
            if not all(isinstance(s, str) and s for s in self.stop):
                raise SettingsError("stop", f"stop texts must be non-empty text, got {self.stop!r}")
        elif self.stop is not None and not isinstance(self.stop, str):
            raise SettingsError("stop", f"stop must be text or None, got {self.stop!r}")

    @property
    def stops(self) -> tuple[str, ...]:
        """The stop texts as a tuple (empty: none)."""
        if not self.stop:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else self.stop

    def updated(self, **changes) -> SamplingSettings:
        return replace(self, **changes)

    def within(self, max_tokens: int) -> SamplingSettings:
        """These settings, refused if they ask for more than `max_tokens` (a server's cap)."""
        if self.max_tokens > max_tokens:
            raise SettingsError(
                "max_tokens",
                f"max tokens must be at most {max_tokens} on this server, got {self.max_tokens}",
            )
        return self


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def split_unknown(
    tokenizer: CharacterTokenizer, text: str, *, lowercase: bool = False
) -> tuple[str, list[str]]:
    """`text` without the characters the tokenizer lacks, and those characters (sorted, once).
    `lowercase`: the model's corpus was lowercased (`data.lowercase`), so the text is too, as
    its training text was: a capital is read as its small letter instead of being dropped."""
    if lowercase:
        text = text.lower()
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
        generator = seeded_generator(model, settings.seed)
    tokens = model.stream(
        ids,
        settings.max_tokens,
        settings.temperature,
        settings.top_k or None,
        settings.top_p,
        generator=generator,
        use_cache=use_cache,
    )
    text = Detokenizer(tokenizer)
    with closing(tokens):
        if not settings.stops:
            for token in tokens:
                if piece := text.push(token):
                    yield piece
            return
        stops = StopFilter(settings.stops)
        for token in tokens:
            piece = stops.push(text.push(token))
            if piece:
                yield piece
            if stops.stopped:
                return
        if piece := stops.flush():
            yield piece


def seeded_generator(model: Transformer, seed: int) -> torch.Generator:
    """A generator of its own for one sequence: its samples do not depend on anything else."""
    generator = torch.Generator(device=model.token_embedding.weight.device)
    generator.manual_seed(seed)
    return generator


class Detokenizer:
    """Token ids to text for one sequence: the one place generated ids become text. A byte
    tokenizer's character may span tokens: its decoder holds bytes until the character is whole,
    so a push can give no text, and a character the sequence ends inside of (the length limit
    cut it) is dropped, as when the reader stops it, rather than shown as U+FFFD."""

    def __init__(self, tokenizer: CharacterTokenizer):
        self.decoder = tokenizer.incremental_decoder()

    def push(self, token: int) -> str:
        return self.decoder.decode([token])


class StopFilter:
    """Generated text in, text safe to show out, until a stop text appears.

    The stop text itself is never shown: characters that might begin one are held back until
    they turn out not to, so one push can release several characters (or none).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""  # text held back because it might be the start of a stop text
        self.stopped = False

    def push(self, text: str) -> str:
        if not self.stops:  # nothing to hold back (most requests): skip the search
            return text
        if self.stopped:
            return ""
        pending = self.pending + text
        cuts = [cut for cut in (pending.find(stop) for stop in self.stops) if cut != -1]
        if cuts:
            self.stopped, self.pending = True, ""
            return pending[: min(cuts)]
        held = max((_longest_stop_prefix_suffix(pending, stop) for stop in self.stops), default=0)
        self.pending = pending[len(pending) - held :] if held else ""
        return pending[: len(pending) - held]

    def flush(self) -> str:
        """What is still held back, once generation ends without a stop."""
        text, self.pending = self.pending, ""
        return text


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


# --- batched decoding -------------------------------------------------------------------------


@dataclass(eq=False)
class DecodingRow:
    """One sequence in a `BatchDecoder`: its window of ids and how to sample it."""

    settings: SamplingSettings
    generator: torch.Generator | None
    window: list[int]  # the ids the model sees (the last `context_length` at most)
    cached: int = 0  # positions of `window` in the cache; 0: the next step prefills the window
    slot: int = -1
    produced: int = 0  # tokens sampled so far


class BatchDecoder:
    """Decode many sequences as one batch: each step samples one token for every live row.

    Rows join (`add`) and leave (`remove`) between steps. A new row's window is prefilled on its
    own (one forward of its prompt) and its first token sampled; every other row advances
    together in one `Transformer.decode` forward, each at its own position. All rows are then
    sampled in one `sample_next_tokens` call, each with its own temperature, top-k and top-p; a
    seeded row draws from its own generator, so it gives the same tokens as `Transformer.stream`
    with that seed, whatever else is in the batch. The context window slides
    as in `Transformer.stream`: when it is full, the row keeps the last half and is prefilled
    again.
    """

    def __init__(self, model: Transformer, slots: int):
        if slots < 1:
            raise ValueError(f"a batch needs at least one slot, got {slots}")
        self.model = model.eval()
        self.cache = model.new_slot_cache(slots)
        self.rows: list[DecodingRow] = []
        self.device = model.token_embedding.weight.device

    @property
    def free(self) -> int:
        return self.cache.slots - len(self.rows)

    def add(
        self,
        prompt_ids: Sequence[int],
        settings: SamplingSettings,
        generator: torch.Generator | None = None,
    ) -> DecodingRow:
        """A new row continuing `prompt_ids` (cropped to the context's end); its first token
        comes from the next `step`."""
        if not prompt_ids:
            raise ValueError("the prompt must hold at least one token")
        if not self.free:
            raise RuntimeError(f"the batch is full ({self.cache.slots} rows)")
        if generator is None and settings.seed is not None:
            generator = seeded_generator(self.model, settings.seed)
        window = list(prompt_ids)[-self.model.config.context_length :]
        row = DecodingRow(settings, generator, window, slot=len(self.rows))
        self.rows.append(row)
        return row

    def remove(self, row: DecodingRow) -> None:
        """Drop `row`; the last row moves into its slot so the live slots stay a prefix."""
        if row.slot < 0 or row.slot >= len(self.rows) or self.rows[row.slot] is not row:
            return  # already removed
        last = self.rows.pop()
        if last is not row:
            self.cache.move(last.slot, row.slot)
            last.slot = row.slot
            self.rows[row.slot] = last
        row.slot = -1

    @torch.inference_mode()
    def step(self) -> list[tuple[DecodingRow, int]]:
        """Sample one token for every row; returns (row, token) in row order."""
        if not self.rows:
            return []
        prefilled: dict[int, torch.Tensor] = {}
        decoding = [row for row in self.rows if row.cached]
        for row in self.rows:
            if not row.cached:  # a newcomer, or a row whose window just slid
                ids = torch.tensor([row.window], device=self.device)
                prefilled[row.slot] = self.model(ids, self.cache.slot(row.slot))[0, -1]
                row.cached = len(row.window)
        if decoding:
            tokens = torch.tensor([row.window[-1] for row in decoding], device=self.device)
            positions = torch.tensor([row.cached for row in decoding], device=self.device)
            slots = [row.slot for row in decoding]
            # the live prefix decodes on views of the cache; with prefilled rows among them,
            # the rows to advance are gathered by slot
            gather = (
                None
                if slots == list(range(len(slots)))
                else torch.tensor(slots, device=self.device)
            )
            decoded = self.model.decode(tokens, positions, self.cache, gather)
            for row in decoding:
                row.cached += 1
        if not prefilled:  # the usual step: every row decoded, already in row order
            logits = decoded
        else:
            decoded_at = {row.slot: i for i, row in enumerate(decoding)}
            logits = torch.stack([
                prefilled[row.slot] if row.slot in prefilled else decoded[decoded_at[row.slot]]
                for row in self.rows
            ])  # fmt: skip
        settings = [row.settings for row in self.rows]
        tokens = sample_next_tokens(
            logits,
            [s.temperature for s in settings],
            [s.top_k for s in settings],
            [s.top_p for s in settings],
            [row.generator for row in self.rows],
        )
        sampled = list(zip(self.rows, tokens, strict=True))
        for row, token in sampled:
            self._advance(row, token)
        return sampled

    def _advance(self, row: DecodingRow, token: int) -> None:
        """Append `token` to the row's window, sliding it as `Transformer.stream` does."""
        row.produced += 1
        size = self.model.config.context_length
        if len(row.window) == size:
            keep = max(1, size // 2)
            row.window = row.window[-(keep - 1) :] + [token] if keep > 1 else [token]
            row.cached = 0  # prefill the slid window at the next step
        else:
            row.window.append(token)
