"""The one generation path: KV cache against full recomputation (also past the context), the
text layer (streaming, seeds, stop strings, unknown characters) and its settings."""

from __future__ import annotations

import pytest
import torch

import tinyllm
import tinyllm.model
from tinyllm import generation
from tinyllm.callbacks import SampleTextCallback
from tinyllm.generation import SamplingSettings, generate_text, split_unknown, stream_text
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import CharacterTokenizer, UnknownCharactersError

CONTEXT = 16
TEXT = "the king and the queen love the night.\nROMEO:\nsweet day!\n"
VARIANTS = [
    pytest.param({}, id="learned"),
    pytest.param({"positional": "sinusoidal", "tie_weights": True}, id="sinusoidal-tied"),
    pytest.param({"context_length": 9, "n_layer": 1}, id="odd-context"),
    pytest.param({"positional": "rotary"}, id="rotary"),
    pytest.param({"positional": "rotary", "context_length": 9, "n_layer": 1}, id="rotary-odd"),
]


def build(seed: int = 0, vocab_size: int = 23, **overrides) -> Transformer:
    settings = {"vocab_size": vocab_size, "context_length": CONTEXT, "n_layer": 2, "n_head": 2,
                "n_embd": 16} | overrides  # fmt: skip
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**settings)).eval()


@pytest.fixture(scope="module")
def tokenizer() -> CharacterTokenizer:
    return CharacterTokenizer().fit(TEXT)


@pytest.fixture(scope="module")
def model(tokenizer) -> Transformer:
    return build(vocab_size=tokenizer.vocab_size)


# --- KV cache against recomputing every window ------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "sampling",
    [
        pytest.param({"temperature": 0.0}, id="greedy"),
        pytest.param({"temperature": 1.3, "top_k": 7, "top_p": 0.9}, id="seeded"),
    ],
)
def test_cached_and_uncached_tokens_are_identical_past_the_context(variant, sampling):
    model = build(**variant)
    prompt = [3, 1, 4, 1, 5]
    steps = 6 * model.config.context_length  # the window slides (and re-primes) several times

    def tokens(use_cache: bool) -> list[int]:
        generator = torch.Generator().manual_seed(11)
        return list(
            model.stream(prompt, steps, generator=generator, use_cache=use_cache, **sampling)
        )

    cached, uncached = tokens(True), tokens(False)
    assert len(cached) == steps
    assert cached == uncached


def _recorded_logits(monkeypatch, model: Transformer, prompt, steps: int, use_cache: bool):
    """The logits `Transformer.stream` samples each token from (greedy)."""
    seen: list[torch.Tensor] = []
    real = tinyllm.model.sample_next_token

    def record(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(tinyllm.model, "sample_next_token", record)
    tokens = list(model.stream(prompt, steps, temperature=0.0, use_cache=use_cache))
    monkeypatch.setattr(tinyllm.model, "sample_next_token", real)
    return tokens, seen


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_match_the_full_forward_pass_past_the_context(monkeypatch, variant):
    model = build(**variant)
    context = model.config.context_length
    prompt = [i % 23 for i in range(1, 2 * context + 3)]  # longer than the context: cropped
    steps = 5 * context
    cached_tokens, cached = _recorded_logits(monkeypatch, model, prompt, steps, True)
    full_tokens, full = _recorded_logits(monkeypatch, model, prompt, steps, False)
    assert cached_tokens == full_tokens and len(cached) == len(full) == steps
    torch.testing.assert_close(torch.stack(cached), torch.stack(full), rtol=1e-5, atol=1e-5)

    # and the uncached path is what it claims: the model over the last (sliding) window
    # (full: the window is cut to its last half when it is full, as the cache is re-primed)
    window = prompt[-context:]
    keep = context // 2
    for step, token in enumerate(full_tokens[: 3 * context]):
        expected = model(torch.tensor([window]))[0, -1]
        torch.testing.assert_close(full[step], expected, rtol=0, atol=1e-6)
        window = window[-(keep - 1) :] + [token] if len(window) == context else window + [token]


def test_incremental_logits_match_the_full_forward_pass(model):
    ids = torch.randint(model.config.vocab_size, (1, CONTEXT), generator=torch.Generator())
    full = model(ids)
    cache = model.new_cache()
    steps = [model(ids[:, :3], cache)] + [model(ids[:, t : t + 1], cache) for t in range(3, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


# --- the text layer ---------------------------------------------------------------------------


def test_stream_text_yields_one_character_at_a_time(model, tokenizer):
    settings = SamplingSettings(max_tokens=40, temperature=1.0, seed=1)
    pieces = list(stream_text(model, tokenizer, "ROMEO:", settings))
    assert len(pieces) == 40 and all(len(p) == 1 for p in pieces)
    assert set("".join(pieces)) <= set(tokenizer.vocab)


def test_same_seed_same_text_and_generate_text_joins_the_stream(model, tokenizer):
    settings = SamplingSettings(max_tokens=60, temperature=1.2, top_k=10, top_p=0.95, seed=5)
    first = generate_text(model, tokenizer, "the ", settings)
    assert first == generate_text(model, tokenizer, "the ", settings)
    assert first == "".join(stream_text(model, tokenizer, "the ", settings))
    assert first != generate_text(model, tokenizer, "the ", settings, seed=6)
    # a generator passed in wins over the seed
    generator = torch.Generator().manual_seed(5)
    assert first == "".join(
        stream_text(model, tokenizer, "the ", settings.updated(seed=9), generator)
    )
    # the uncached path makes the same text
    assert first == "".join(stream_text(model, tokenizer, "the ", settings, use_cache=False))


def test_generate_text_goes_through_stream_text(monkeypatch, model, tokenizer):
    """One code path: generate_text (the sampling callback's, and the library's) is stream_text."""
    calls = []

    def fake(model_, tokenizer_, prompt, settings, generator=None, **kwargs):
        calls.append((prompt, settings))
        yield from "ab"

    monkeypatch.setattr(generation, "stream_text", fake)
    assert generate_text(model, tokenizer, "x", SamplingSettings(max_tokens=2), seed=3) == "ab"
    assert calls == [("x", SamplingSettings(max_tokens=2, seed=3))]
    callback = SampleTextCallback(max_new_tokens=5, temperature=0.5, top_k=3, seed=2)
    assert callback.settings == SamplingSettings(max_tokens=5, temperature=0.5, top_k=3, seed=2)


def _greedy(model, tokenizer, prompt, n=80) -> str:
    return generate_text(model, tokenizer, prompt, SamplingSettings(max_tokens=n, temperature=0))


def test_stop_string_ends_generation_without_being_shown(model, tokenizer):
    prompt = "ROMEO:\n"
    text = _greedy(model, tokenizer, prompt)
    greedy = SamplingSettings(max_tokens=80, temperature=0)
    for start, length in [(20, 3), (5, 1), (40, 6)]:
        stop = text[start : start + length]
        expected = text[: text.find(stop)]
        pieces = list(stream_text(model, tokenizer, prompt, greedy.updated(stop=stop)))
        assert "".join(pieces) == expected
        assert stop not in "".join(pieces)
    # the stop text at the very start: nothing at all
    assert list(stream_text(model, tokenizer, prompt, greedy.updated(stop=text[:4]))) == []


def test_held_back_characters_are_released(model, tokenizer):
    """Characters that start like the stop text but do not finish it are shown after all,
    including those at the very end of the reply."""
    prompt = "the "
    text = _greedy(model, tokenizer, prompt, 50)
    extra = next(c for c in tokenizer.vocab if text[-3:] + c not in text)
    settings = SamplingSettings(max_tokens=50, temperature=0, stop=text[-3:] + extra)
    assert generate_text(model, tokenizer, prompt, settings) == text
    # a stop text of a character the model never writes changes nothing
    unseen = next(c for c in tokenizer.vocab if c not in text)
    assert generate_text(model, tokenizer, prompt, settings.updated(stop=unseen * 2)) == text


def test_stop_text_is_looked_for_in_the_reply_only(model, tokenizer):
    prompt = "night."
    text = _greedy(model, tokenizer, prompt, 30)
    stop = prompt[-1] + text[0]  # spans the prompt and the reply
    settings = SamplingSettings(max_tokens=30, temperature=0, stop=stop)
    expected = text if stop not in text else text[: text.find(stop)]
    assert generate_text(model, tokenizer, prompt, settings) == expected


def test_prompt_errors_and_long_prompts(model, tokenizer):
    settings = SamplingSettings(max_tokens=5, seed=0)
    with pytest.raises(UnknownCharactersError, match="'@'"):
        generate_text(model, tokenizer, "the @ king", settings)
    with pytest.raises(ValueError, match="empty"):
        generate_text(model, tokenizer, "", settings)
    long_prompt = (TEXT * 2000)[:50_000]
    assert len(generate_text(model, tokenizer, long_prompt, settings)) == 5
    # only the end of a long prompt matters
    assert generate_text(model, tokenizer, long_prompt, settings) == generate_text(
        model, tokenizer, long_prompt[-CONTEXT:], settings
    )


def test_split_unknown(tokenizer):
    assert split_unknown(tokenizer, "the king") == ("the king", [])
    assert split_unknown(tokenizer, "thé kïng é") == ("th kng ", ["é", "ï"])
    assert split_unknown(tokenizer, "☃☃") == ("", ["☃"])


def test_closing_the_stream_early_stops_cleanly(tokenizer):
    model = build(vocab_size=tokenizer.vocab_size, dropout=0.1).train()
    pieces = stream_text(model, tokenizer, "the", SamplingSettings(max_tokens=1000, seed=0))
    assert next(pieces) and model.training is False  # generating in eval mode
    pieces.close()
    assert model.training  # restored as soon as the stream is closed


@pytest.mark.parametrize(
    "changes",
    [
        {"max_tokens": 0},
        {"max_tokens": 2.5},
        {"max_tokens": True},
        {"temperature": -0.1},
        {"temperature": 101},
        {"temperature": float("nan")},
        {"temperature": "hot"},
        {"top_k": -1},
        {"top_k": 1.5},
        {"top_p": 0},
        {"top_p": 1.01},
        {"top_p": float("nan")},
        {"seed": -1},
        {"seed": 2**63},
        {"seed": "7"},
        {"stop": 5},
    ],
)
def test_bad_settings_are_refused(changes):
    with pytest.raises(ValueError):
        SamplingSettings(**changes)


def test_settings_defaults_and_updates():
    settings = SamplingSettings()
    assert (settings.top_k, settings.top_p, settings.seed, settings.stop) == (0, 1.0, None, None)
    assert settings.updated(stop="\n\n").stop == "\n\n"
    assert settings.updated(temperature=0).temperature == 0
