"""The plain-PyTorch Transformer: shapes, causality, config, KV cache, sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tinyllm.model import (
    ModelConfig,
    Transformer,
    apply_rotary,
    rotary_tables,
    sample_next_token,
    sample_next_tokens,
    sinusoidal_encoding,
)

VOCAB = 23


def build(seed: int = 0, **overrides) -> Transformer:
    config = ModelConfig(
        **({"vocab_size": VOCAB, "context_length": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
           | overrides)
    )  # fmt: skip
    torch.manual_seed(seed)
    return Transformer(config).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


VARIANTS = [
    pytest.param({}, id="learned"),
    pytest.param({"positional": "sinusoidal"}, id="sinusoidal"),
    pytest.param({"positional": "rotary"}, id="rotary"),
    pytest.param({"tie_weights": True}, id="tied"),
    pytest.param({"positional": "sinusoidal", "tie_weights": True, "bias": False}, id="sin-tied"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shape(variant):
    model = build(**variant)
    for batch, length in [(1, 1), (3, 7), (2, 16)]:
        logits = model(random_ids(batch, length))
        assert logits.shape == (batch, length, VOCAB)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


def test_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="17 positions exceeds the context length 16"):
        build()(random_ids(1, 17))


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """Changing token t changes no logits before t, and does change those from t on."""
    model = build(**variant)
    ids = random_ids(2, 16)
    reference = model(ids)
    for t in (0, 5, 15):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        logits = model(changed)
        torch.testing.assert_close(logits[:, :t], reference[:, :t], rtol=0, atol=1e-6)
        assert (logits[:, t] - reference[:, t]).abs().max() > 1e-4


def test_positions_matter():
    """Both encodings make the model position-aware: a repeated token gets different logits."""
    for positional in ("learned", "sinusoidal"):
        model = build(positional=positional)
        logits = model(torch.full((1, 8), 3))
        assert (logits[0, 0] - logits[0, 7]).abs().max() > 1e-4


def test_tie_weights_shares_the_embedding():
    tied = build(tie_weights=True)
    assert tied.lm_head.weight is tied.token_embedding.weight
    untied = build()
    assert untied.lm_head.weight is not untied.token_embedding.weight
    shared = VOCAB * 16
    assert untied.num_parameters() - tied.num_parameters() == shared


def test_position_tables_are_cos_and_sin_rounded_to_float32():
    """Exact to float32 (the same in every process): torch's float32 cos/sin was off by up to
    1.5e-4 in a process's first parallel region now and then (tinyllm.model._cos_sin)."""
    cos, sin = rotary_tables(256, 64)
    frequency = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    angles = (torch.arange(256, dtype=torch.float32)[:, None] * frequency).tolist()
    assert torch.equal(cos, torch.tensor([[math.cos(a) for a in row] for row in angles]))
    assert torch.equal(sin, torch.tensor([[math.sin(a) for a in row] for row in angles]))
    table = sinusoidal_encoding(50, 7)  # odd width: one cos column fewer than sin columns
    assert table.shape == (50, 7)
    assert table[10, 0] == torch.tensor(math.sin(10.0)).float()  # frequency 1: angle 10
    assert table[10, 1] == torch.tensor(math.cos(10.0)).float()
    with torch.device("meta"):  # a size check builds the model without data
        assert rotary_tables(10**9, 64)[0].shape == (10**9, 32)


def test_rotary_attention_depends_only_on_relative_position():
    cos, sin = rotary_tables(40, 8)
    q, k = torch.randn(8), torch.randn(8)

    def score(i: int, j: int) -> torch.Tensor:
        return apply_rotary(q, cos[i], sin[i]) @ apply_rotary(k, cos[j], sin[j])

    assert torch.allclose(score(5, 2), score(35, 32), atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)
    assert not any("position" in name for name in build(positional="rotary").state_dict())


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match="rotary needs an even head size"):
        ModelConfig(n_head=4, n_embd=12, positional="rotary")


def test_sinusoidal_has_no_position_parameters():
    learned, sinusoidal = build(), build(positional="sinusoidal")
    assert "position_embedding.weight" in learned.state_dict()
    assert not any("position" in name for name in sinusoidal.state_dict())
    assert learned.num_parameters() - sinusoidal.num_parameters() == 16 * 16


@pytest.mark.parametrize("attn_dropout", [True, False])
def test_attn_dropout_decides_whether_attention_weights_are_dropped(attn_dropout):
    block = build(dropout=0.5, attn_dropout=attn_dropout).blocks[0].attn.train()
    block.resid_dropout = torch.nn.Identity()  # isolate the attention weights' dropout
    x = torch.randn(2, 16, 16)
    torch.manual_seed(3)
    trained = block(x)
    assert torch.allclose(trained, block.eval()(x)) is not attn_dropout


@pytest.mark.parametrize("mask", ["element", "sequence"])
def test_dropout_mask_draws_per_value_or_per_sequence_and_channel(mask):
    model = build(dropout=0.25, dropout_mask=mask).train()
    dropout = model.blocks[0].mlp.dropout
    x = torch.ones(64, 16, 32)
    torch.manual_seed(0)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.tensor(1 / 0.75))  # kept values scaled by 1 / (1 - p)
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.02
    # sequence: every position of a sequence keeps the same channels
    same_at_every_position = bool((kept == kept[:, :1]).all())
    assert same_at_every_position is (mask == "sequence")
    assert torch.equal(dropout.eval()(x), x)


def test_model_config_json_round_trip():
    config = ModelConfig(
        vocab_size=77, context_length=64, n_layer=3, n_head=6, n_embd=48, dropout=0.1,
        attn_dropout=False, bias=False, positional="sinusoidal", tie_weights=True,
    )  # fmt: skip
    text = json.dumps(config.to_dict())  # as artifacts write model_config.json
    assert json.loads(text)["n_head"] == 6
    restored = ModelConfig.from_dict(json.loads(text))
    assert restored == config
    assert restored.head_dim == 8


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_head": 3, "n_embd": 128}, r"model\.n_head=3 must divide model\.n_embd=128"),
        ({"n_layer": 0}, r"model\.n_layer must be a positive integer"),
        ({"vocab_size": -1}, r"model\.vocab_size must be a positive integer"),
        ({"n_embd": 32.0}, r"model\.n_embd must be a positive integer"),
        ({"context_length": True}, r"model\.context_length must be a positive integer"),
        ({"dropout": 1.0}, r"model\.dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"model\.dropout must be in \[0, 1\)"),
        ({"positional": "alibi"}, r"model\.positional must be one of"),
        ({"dropout_mask": "token"}, r"model\.dropout_mask must be one of"),
    ],
)
def test_model_config_validation(changes, match):
    with pytest.raises(ValueError, match=match) as info:
        ModelConfig(**changes)
    assert "\n" not in str(info.value)


def test_model_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown model config keys: \['n_heads'\]"):
        ModelConfig.from_dict({"n_heads": 4})
    with pytest.raises(ValueError, match="JSON object"):
        ModelConfig.from_dict([1, 2])


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_matches_full_forward(variant):
    model = build(**variant)
    ids = random_ids(2, 16)
    full = model(ids)
    cache = model.new_cache(batch_size=2)
    pieces = [model(ids[:, :5], cache)]  # prompt at once
    pieces.append(model(ids[:, 5:8], cache))  # a chunk of three (masked attention path)
    for t in range(8, 16):  # then one token at a time
        pieces.append(model(ids[:, t : t + 1], cache))
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the context length"):
        model(ids[:, :1], cache)


def test_generate_returns_the_requested_number_of_ids():
    model = build()
    for n in (1, 10, 40):  # 40 > context 16: the window slides
        out = model.generate([1, 2, 3], max_new_tokens=n, temperature=1.0)
        assert len(out) == n
        assert all(isinstance(i, int) and 0 <= i < VOCAB for i in out)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([], 5)


def test_generate_is_reproducible_with_a_seeded_generator():
    model = build()

    def draw(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(torch.tensor([4, 5]), 60, 1.5, generator=generator)

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_greedy_is_deterministic_and_takes_the_argmax():
    model = build()
    prompt = [1, 2, 3]
    first = model.generate(prompt, 30, temperature=0.0)
    assert first == model.generate(prompt, 30, temperature=0.0)
    # the first greedy token is the argmax of the full forward pass
    assert first[0] == int(model(torch.tensor([prompt]))[0, -1].argmax())
    # and each next one continues the sequence the same way (window not yet full)
    sequence = prompt + first[:10]
    logits = model(torch.tensor([sequence]))[0]
    assert first[1:11] == logits[len(prompt) : len(prompt) + 10].argmax(-1).tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_and_uncached_generation_agree_past_the_context(variant):
    model = build(**variant)
    with_cache = list(model.stream([7, 8, 9], 50, temperature=0.0))
    without = list(model.stream([7, 8, 9], 50, temperature=0.0, use_cache=False))
    assert with_cache == without and len(with_cache) == 50


def test_generation_leaves_training_mode_as_it_was():
    model = build(dropout=0.1).train()
    model.generate([1], 3)
    assert model.training


def _draws(logits, n=600, **kwargs) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    return {sample_next_token(logits, generator=generator, **kwargs) for _ in range(n)}


def test_sample_next_token_top_k_restricts_the_support():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9, 0.0, 1.8, -3.0])
    assert _draws(logits, n=3000) == set(range(7))
    assert _draws(logits, top_k=3) == {1, 3, 5}
    assert _draws(logits, top_k=1) == {1}
    assert _draws(logits, top_k=100) == _draws(logits)  # k above the vocabulary: no limit


def test_sample_next_token_top_p_restricts_the_support():
    probs = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05])
    logits = probs.log()
    assert _draws(logits, n=2000) == {0, 1, 2, 3, 4}
    assert _draws(logits, top_p=0.6) == {1, 3}  # 0.5 < 0.6 <= 0.5 + 0.3
    assert _draws(logits, top_p=0.85) == {1, 2, 3}  # 0.8 < 0.85 <= 0.9
    assert _draws(logits, top_p=0.3) == {1}  # the top token alone already covers it
    assert _draws(logits, top_p=0.85, top_k=2) == {1, 3}  # both limits apply


def test_sample_next_token_temperature():
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert sample_next_token(logits, temperature=0.0) == 1
    assert _draws(logits, n=50, temperature=1e-4) == {1}  # nearly greedy
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next_token(logits, temperature=-1.0)


@pytest.mark.parametrize("temperature", [1e-30, 1e-40, 5e-324])
def test_a_tiny_positive_temperature_is_greedy_not_nan(temperature):
    """logits / 1e-40 overflows float32 to inf, and softmax of inf is NaN: multinomial failed."""
    logits = torch.tensor([0.5, 3.0, 1.0, -2.0])
    assert _draws(logits, n=20, temperature=temperature) == {1}
    masked = torch.tensor([float("-inf"), 3.0, 1.0, float("-inf")])
    assert _draws(masked, n=20, temperature=temperature) == {1}


def test_top_k_keeps_exactly_k_candidates_when_logits_tie():
    """A `logits < kth` mask kept every token tied with the k-th: all 6 here, not 2."""
    assert len(_draws(torch.zeros(6), n=400, top_k=2)) == 2
    tied = torch.tensor([5.0, 1.0, 1.0, 1.0, 0.0])
    support = _draws(tied, n=2000, top_k=2, temperature=5.0)
    assert len(support) == 2 and 0 in support


def test_a_batch_samples_each_seeded_row_as_it_would_alone():
    """One batched call gives a seeded row the ids that one-row calls with its generator give,
    whatever the other rows' settings (greedy ones draw nothing from their generator)."""
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    rows = [(0.8, 0, 1.0), (1.2, 5, 1.0), (0.7, 0, 0.6), (0.0, 3, 0.5), (1.5, 4, 0.9)]
    batch = [torch.Generator().manual_seed(i) for i in range(len(rows))]
    alone = [torch.Generator().manual_seed(i) for i in range(len(rows))]
    for _ in range(50):
        got = sample_next_tokens(logits, *zip(*rows, strict=True), batch)
        want = [sample_next_token(logits[i], t, k, p, alone[i]) for i, (t, k, p) in enumerate(rows)]
        assert got == want
    unseeded = {
        tuple(sample_next_tokens(logits[:2], [1.0, 0.0], [2, 0], [1.0, 1.0], [None, None]))
        for _ in range(200)
    }
    assert {t for t, _ in unseeded} == set(logits[0].topk(2).indices.tolist())
    assert {g for _, g in unseeded} == {int(logits[1].argmax())}


def test_decoding_steps_run_without_onednn_and_give_it_back_between_tokens(monkeypatch):
    """oneDNN's GELU costs a decoded token more than the GELU itself: each decoding step runs
    without it, and the process-wide switch is back on whenever the stream yields a token."""
    import torch.nn.functional as F

    inside = []
    gelu = F.gelu

    def recording_gelu(x, *args, **kwargs):
        inside.append(torch.backends.mkldnn.enabled)
        return gelu(x, *args, **kwargs)

    monkeypatch.setattr(F, "gelu", recording_gelu)
    model = build(mlp="gelu")
    tokens = model.stream([1, 2, 3], 20)
    for _ in range(20):
        next(tokens)
        assert torch.backends.mkldnn.enabled  # between tokens: as the caller had it
    assert len(inside) == 20 * 2 and not any(inside)  # 20 steps of 2 layers, all without it
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 needs oneDNN: it keeps it
        inside.clear()
        model.generate([1, 2, 3], 2)
        assert inside and all(inside)
    cache = model.new_slot_cache(2)
    inside.clear()
    with torch.inference_mode():  # the server's batched step too
        model.decode(torch.tensor([1, 2]), torch.tensor([0, 0]), cache)
    assert inside == [False, False] and torch.backends.mkldnn.enabled
