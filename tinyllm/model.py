"""A small GPT-style transformer in plain PyTorch: no Lightning, no files, no tokenizer.

    ids (B, T) -> token embedding + positional encoding -> N x Block -> LayerNorm -> logits (B,T,V)
    Block: x + attn(ln1(x)), then x + mlp(ln2(x))                                       (pre-norm)

`forward` takes an optional `KVCache` so that generation pays for one new position per token
instead of re-running the whole context; `stream` is the one sampling loop of a single sequence.
`decode` advances many sequences at once, each at its own position of a `SlotKVCache` (the
batched decoding of tinyllm.generation.BatchDecoder); both sample with `sample_next_tokens`
(`sample_next_token` is its one-row case).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

POSITIONAL_ENCODINGS = ("learned", "sinusoidal", "rotary")
NORMS = ("layernorm", "rmsnorm")
# gelu: GELU(x W1) W2 (GPT-2); relu2: ReLU(x W1)^2 W2 (Primer, modded-nanogpt); swiglu:
# (SiLU(x Wg) * x Wu) W2 (Llama), with a hidden width of 8/3 n_embd so it has gelu's parameters
MLPS = ("gelu", "relu2", "swiglu")
# element: a mask per value (nn.Dropout); sequence: one mask per sequence and channel, shared by
# all its positions (as variational dropout in RNNs), T times fewer random numbers
DROPOUT_MASKS = ("element", "sequence")
# rotary positions: the (cos, sin) rows of the positions in the current input
Rope = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ModelConfig:
    vocab_size: int = 65
    context_length: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # also drop attention weights; off keeps the CPU flash-attention kernel (much faster step)
    attn_dropout: bool = True
    # how the residual dropout draws its mask: element | sequence (DROPOUT_MASKS)
    dropout_mask: str = "element"
    bias: bool = True
    positional: str = "learned"
    tie_weights: bool = False
    norm: str = "layernorm"
    mlp: str = "gelu"
    # RMS-normalise each head's queries and keys before attention (Qwen3, OLMo-2): bounded
    # attention logits, so higher learning rates stay stable
    qk_norm: bool = False
    # start the residual projections (attention and MLP outputs) and the output head at zero:
    # every block begins as the identity (modded-nanogpt); only the initial weights differ
    zero_init: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_head={self.n_head} must divide model.n_embd={self.n_embd} "
                f"(try n_head in {[h for h in range(1, 17) if self.n_embd % h == 0]})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        choices = {"dropout_mask": DROPOUT_MASKS, "positional": POSITIONAL_ENCODINGS,
                   "norm": NORMS, "mlp": MLPS}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.positional == "rotary" and self.head_dim % 2:
            raise ValueError(
                "model.positional=rotary needs an even head size, "
                f"got n_embd/n_head={self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """Width of the MLP's hidden layer: 4 n_embd, or 8/3 n_embd (to a multiple of 8) when
        gated, so that the three matrices of SwiGLU hold as many weights as GELU's two."""
        if self.mlp == "swiglu":
            return (8 * self.n_embd // 3 + 7) // 8 * 8
        return 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**data)


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to the context."""

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype):
        shape = (config.n_layer, batch_size, config.n_head, config.context_length, config.head_dim)
        self._hold(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )
        self.capacity = config.context_length

    def _hold(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep each layer's view of (layer, B, H, L, D) keys and values (an index per decoded
        token and layer fewer than indexing the whole)."""
        self.layers = [(keys[i], values[i]) for i in range(keys.size(0))]  # not unbind: writable
        self.length = 0  # positions filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store the new positions' k, v (B, H, T, D); return all k, v up to and including them."""
        keys, values = self.layers[layer]
        start, end = self.length, self.length + k.size(2)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]


class SlotKVCache:
    """Keys and values of many sequences decoded together, each at its own position.

    The first slots hold the live sequences; a sequence fills its slot by a prefill through
    `slot(i)` (a plain `KVCache` viewing that slot) and then advances one position per
    `Transformer.decode` call. Freeing a slot moves the last live one into it, so the live
    slots stay a prefix and a decode step attends a view, not a gathered copy.
    """

    def __init__(self, config: ModelConfig, slots: int, device, dtype):
        shape = (config.n_layer, slots, config.n_head, config.context_length, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.capacity = config.context_length
        self.slots = slots
        # set by Transformer.decode for the step in progress
        self.positions: torch.Tensor | None = None  # (B,) the position each row writes
        self.rows: torch.Tensor | None = None  # (B,) the slot of each row; None: slots 0..B-1
        self.mask: torch.Tensor | None = None  # (B, 1, 1, L) keys each row may attend

    def slot(self, index: int) -> KVCache:
        """An empty single-sequence cache writing into slot `index` (for its prefill)."""
        if not 0 <= index < self.slots:
            raise IndexError(f"slot {index} outside [0, {self.slots})")
        view = KVCache.__new__(KVCache)
        view._hold(self.keys[:, index : index + 1], self.values[:, index : index + 1])
        view.capacity = self.capacity
        return view

    def move(self, source: int, target: int) -> None:
        """Copy slot `source` over slot `target` (to close the hole a finished sequence left)."""
        if source != target:
            self.keys[:, target] = self.keys[:, source]
            self.values[:, target] = self.values[:, source]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store each row's new k, v (B, H, 1, D) at its own position; return the rows' k, v up
        to the furthest position of the step (rows shorter than that are masked)."""
        B, end = k.size(0), self.mask.size(-1)
        rows = torch.arange(B, device=k.device) if self.rows is None else self.rows
        self.keys[layer][rows, :, self.positions] = k[:, :, 0]
        self.values[layer][rows, :, self.positions] = v[:, :, 0]
        if self.rows is None:  # the live prefix: views, no copy
            return self.keys[layer, :B, :, :end], self.values[layer, :B, :, :end]
        return self.keys[layer][rows, :, :end], self.values[layer][rows, :, :end]


Cache = KVCache | SlotKVCache

RMS_NORM_EPS = 1e-6


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm with its weight cast to the input's dtype: under bf16 autocast a float32
    weight would make torch skip its fused kernel (2x slower on a CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


class SequenceDropout(nn.Dropout):
    """Dropout with one mask per sequence and channel, the same at every position of the
    sequence: (B, T, C) values take a (B, 1, C) mask, a T-th of the random numbers (which take
    a fifth of a compiled CPU step). A different regulariser: at the same rate it drew 21% more
    steps in 10 minutes and tied the per-value mask (benchmarks/RESULTS.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(1 - self.p).div_(1 - self.p)


def make_dropout(config: ModelConfig) -> nn.Dropout:
    """The residual dropout: `model.dropout`, drawn as `model.dropout_mask` says."""
    kind = SequenceDropout if config.dropout_mask == "sequence" else nn.Dropout
    return kind(config.dropout)


def make_norm(config: ModelConfig) -> nn.Module:
    """The model's normalisation layer over the residual stream (n_embd features)."""
    if config.norm == "rmsnorm":  # no mean subtraction, no bias: x / rms(x) * weight
        return RMSNorm(config.n_embd, eps=RMS_NORM_EPS)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout if config.attn_dropout else 0.0
        self.resid_dropout = make_dropout(config)
        if config.qk_norm:  # one weight of head_dim, shared by the heads (as Qwen3)
            self.q_norm = RMSNorm(config.head_dim, eps=RMS_NORM_EPS)
            self.k_norm = RMSNorm(config.head_dim, eps=RMS_NORM_EPS)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        cache: Cache | None = None,
        layer: int = 0,
        rope: Rope | None = None,
    ):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        # (B, T, 3C) -> (B, 3H, T, D): the heads of q, then of k, then of v
        qkv = self.qkv(x).view(B, T, 3 * H, D).transpose(1, 2)
        qk, v = qkv.split((2 * H, H), dim=1)
        # q and k are normalised and rotated together: a decoded token pays per call, not per value
        if self.q_norm is not None:  # (2H, 1, D): q_norm's weight for q's heads, k_norm's for k's
            weight = torch.cat((self.q_norm.weight.expand(H, D), self.k_norm.weight.expand(H, D)))
            qk = F.rms_norm(qk, (D,), eps=RMS_NORM_EPS) * weight[:, None].to(qk.dtype)
        if rope is not None:
            qk = apply_rotary(qk, *rope)
        q, k = qk.split(H, dim=1)
        dropout = self.dropout if self.training else 0.0
        if isinstance(cache, SlotKVCache):  # one new position per row, rows at their own
            k, v = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask, dropout_p=dropout)
        elif cache is None or cache.length == 0:
            if cache is not None:
                cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            past = cache.length
            k, v = cache.update(layer, k, v)
            # new position i (absolute past + i) may attend to every key at absolute <= past + i
            mask = None
            if T > 1:
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = self.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return self.resid_dropout(y) if self.training else y


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, hidden = config.mlp, config.mlp_hidden
        # swiglu: `fc` computes the gate and the up projection together, (C) -> (2 * hidden)
        inner = 2 * hidden if config.mlp == "swiglu" else hidden
        self.fc = nn.Linear(config.n_embd, inner, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = make_dropout(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        h = self.proj(h)
        return self.dropout(h) if self.training else h


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: Cache | None, layer: int, rope: Rope | None):
        x = x + self.attn(self.ln1(x), cache, layer, rope)
        return x + self.mlp(self.ln2(x))


def _cos_sin(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of float32 angles, exact to float32 and the same in every process: computed in
    float64 by numpy, then rounded. torch's own float32 cos/sin (2.13, CPU, 2 threads) was off by
    up to 1.5e-4 on half the table in about one process in six (its first parallel region), so a
    model's tables, and its outputs, differed from one process to the next."""
    if angle.is_meta:  # a size check builds the model without data (tinyllm.artifacts)
        return torch.empty_like(angle), torch.empty_like(angle)
    exact = angle.double().cpu().numpy()
    cos, sin = (torch.from_numpy(f(exact)).float().to(angle.device) for f in (np.cos, np.sin))
    return cos, sin


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos table of 'Attention Is All You Need': (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    cos, sin = _cos_sin(position * frequency)
    table = torch.zeros(length, dim)
    table[:, 0::2] = sin
    table[:, 1::2] = cos[:, : dim // 2]
    return table


def rotary_tables(length: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoFormer's rotation angles, position x frequency: (length, head_dim / 2)."""
    frequency = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return _cos_sin(torch.arange(length, dtype=torch.float32)[:, None] * frequency)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + D/2]) of every head by its position's angle: q.k then
    depends on the positions only through their difference."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@contextlib.contextmanager
def without_onednn(weight: torch.Tensor) -> Iterator[None]:
    """Run a decoding step of a float32 CPU model without oneDNN. On one position's values its
    fixed cost per call is most of the work: its GELU takes ~9 us where torch's own kernel takes
    1.5 (torch 2.13), and a GELU model decodes ~15% faster without it. Set per forward call, never
    across a `yield`, since the switch is process-wide; bf16 needs oneDNN, so it keeps it."""
    if (
        weight.device.type != "cpu"
        or weight.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or not torch.backends.mkldnn.enabled
    ):
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positional == "learned":
            self.position_embedding = nn.Embedding(config.context_length, config.n_embd)
        elif config.positional == "sinusoidal":
            table = sinusoidal_encoding(config.context_length, config.n_embd)
            self.register_buffer("position_table", table, persistent=False)
        else:  # rotary: positions enter inside attention, nothing is added to the embedding
            cos, sin = rotary_tables(config.context_length, config.head_dim)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        self.dropout = make_dropout(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the residual stream's variance does not grow
        # with depth; zero_init starts them (and an untied head) at zero instead.
        for name, p in self.named_parameters():
            if config.zero_init and (name.endswith("proj.weight") or name == "lm_head.weight"):
                nn.init.zeros_(p)  # a tied head is listed as token_embedding.weight: kept
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int = 1) -> KVCache:
        weight = self.token_embedding.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for ids (B, T); with a cache, `idx` continues its positions."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of {start + T} positions exceeds the context length "
                f"{self.config.context_length}"
            )
        # rows start..start+T of the position table: a slice, no lookup kernel (decoding speed)
        x, rope = self.token_embedding(idx), None
        if self.config.positional == "learned":
            x = x + self.position_embedding.weight[start : start + T]
        elif self.config.positional == "sinusoidal":
            x = x + self.position_table[start : start + T].to(x.dtype)
        else:
            rope = (self.rotary_cos[start : start + T], self.rotary_sin[start : start + T])
        x = self.dropout(x) if self.training else x
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rope)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.ln_f(x))

    def new_slot_cache(self, slots: int) -> SlotKVCache:
        weight = self.token_embedding.weight
        return SlotKVCache(self.config, slots, weight.device, weight.dtype)

    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: SlotKVCache,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, vocab) of one new token per row: row i of `tokens` (B,) sits at
        `positions[i]` of slot i (or of `slots[i]`), whose earlier positions the cache holds."""
        B = tokens.size(0)
        cache.rows = slots
        if cache.slots < B or int(positions.max()) >= self.config.context_length:
            raise ValueError(
                f"decode of {B} rows up to position {int(positions.max())} exceeds the cache "
                f"({cache.slots} slots of {self.config.context_length} positions)"
            )
        end = int(positions.max()) + 1
        keys = torch.arange(end, device=tokens.device)
        cache.positions = positions
        cache.mask = (keys[None, :] <= positions[:, None])[:, None, None, :]  # (B, 1, 1, L)
        x, rope = self.token_embedding(tokens[:, None]), None  # (B, 1, C)
        if self.config.positional == "learned":
            x = x + self.position_embedding(positions)[:, None]
        elif self.config.positional == "sinusoidal":
            x = x + self.position_table[positions][:, None].to(x.dtype)
        else:  # (B, 1, 1, D/2): broadcast over heads
            rope = (
                self.rotary_cos[positions][:, None, None],
                self.rotary_sin[positions][:, None, None],
            )
        x = self.dropout(x) if self.training else x
        with without_onednn(self.token_embedding.weight):
            for layer, block in enumerate(self.blocks):
                x = block(x, cache, layer, rope)
        return self.lm_head(self.ln_f(x))[:, 0]

    @torch.inference_mode()
    def stream(
        self,
        prompt_ids: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        *,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Iterator[int]:
        """Yield new token ids one at a time.

        The model sees at most `context_length` tokens. When the window is full it slides:
        the cache is rebuilt from the last half of the window, so each new token costs one
        position's work and a refill only every `context_length / 2` tokens. `use_cache=False`
        recomputes the same windows from scratch (for checking and benchmarking).
        """
        ids = prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else list(prompt_ids)
        if not ids:
            raise ValueError("the prompt must hold at least one token")
        window_size = self.config.context_length
        keep = max(1, window_size // 2)
        device = self.token_embedding.weight.device
        was_training = self.training
        self.eval()
        try:
            window = ids[-window_size:]
            cache = self.new_cache() if use_cache else None
            fresh = window  # tokens the cache has not seen yet
            for _ in range(max_new_tokens):
                with without_onednn(self.token_embedding.weight):
                    if cache is None:
                        logits = self(torch.tensor([window], device=device))
                    else:
                        logits = self(torch.tensor([fresh], device=device), cache)
                token = sample_next_token(logits[0, -1], temperature, top_k, top_p, generator)
                yield token
                if len(window) == window_size:
                    window = window[-(keep - 1) :] + [token] if keep > 1 else [token]
                    fresh = window
                    if cache is not None:
                        cache = self.new_cache()
                else:
                    window = window + [token]
                    fresh = [token]
        finally:
            self.train(was_training)

    def generate(self, *args, **kwargs) -> list[int]:
        """`stream`'s ids as one list (the prompt is not repeated); the same arguments."""
        return list(self.stream(*args, **kwargs))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Draw one id from a 1-D logits vector; temperature 0 (or one too small for float32)
    means greedy. Top-k keeps exactly k candidates, also when logits tie at the k-th. The
    one-row case of `sample_next_tokens`, so a seeded stream and a seeded batch row agree."""
    (token,) = sample_next_tokens(
        logits[None], [temperature], [top_k or 0], [1.0 if top_p is None else top_p], [generator]
    )
    return token


_TINY = torch.finfo(torch.float32).tiny


def sample_next_tokens(
    logits: torch.Tensor,
    temperatures: Sequence[float],
    top_ks: Sequence[int],
    top_ps: Sequence[float],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One id per row of (B, vocab) logits, row i with its own temperature (0, or one too small
    for float32: greedy), top-k (0: off), top-p (1: off) and generator, in one pass over the
    batch: per-row calls cost a server more Python than the batched forward itself.

    A draw is the argmax of probs / Exp(1) noise (what `torch.multinomial` does for one sample,
    so the ids are the ones it gives). A row with a generator draws its noise from it alone, so
    its ids do not depend on the other rows; the rows without one share one draw from torch's
    global generator. Settings come as Python numbers so the limits nobody asked for cost no
    tensor operations.
    """
    if any(t < 0 for t in temperatures):
        raise ValueError(f"temperature must be >= 0, got {min(temperatures)}")
    greedy = [t < _TINY for t in temperatures]
    logits = logits.float()
    if all(greedy):
        return logits.argmax(-1).tolist()
    # shifted so the largest is 0: a tiny temperature then sends the others to -inf instead of
    # overflowing to inf (inf - inf is NaN in softmax); the top token keeps probability 1
    device = logits.device  # the settings' tensors go where the logits are (a GPU in training)
    scales = [1.0 if g else float(t) for g, t in zip(greedy, temperatures, strict=True)]
    # one number when the rows agree (a stream's one row): no tensor to build per token
    scale = scales[0] if len(set(scales)) == 1 else torch.tensor(scales, device=device)[:, None]
    scaled = (logits - logits.amax(-1, keepdim=True)) / scale
    vocab = logits.size(-1)
    ks = [k if 0 < k < vocab else vocab for k in top_ks]
    ps = [p if 0.0 < p < 1.0 else math.inf for p in top_ps]
    order = None
    if min(ks) < vocab or min(ps) < 1.0:
        # one sort serves both limits; masking by rank keeps exactly k candidates, also when
        # logits tie at the k-th (a `< kth` mask keeps every tie)
        scaled, order = scaled.sort(-1, descending=True)
        if min(ks) < vocab:
            outside = torch.arange(vocab, device=device) >= torch.tensor(ks, device=device)[:, None]
            scaled = scaled.masked_fill(outside, -math.inf)
    probs = torch.softmax(scaled, -1)
    if order is not None and min(ps) < 1.0:
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        outside = probs.cumsum(-1) - probs >= torch.tensor(ps, device=device)[:, None]
        probs = probs.masked_fill(outside, 0.0)
    noise = torch.empty_like(logits)
    if None in generators:
        noise.exponential_()
    for row, generator in enumerate(generators):
        if generator is not None and not greedy[row]:
            noise[row].exponential_(generator=generator)
    if order is None:
        tokens = (probs / noise).argmax(-1).tolist()
    else:
        pick = (probs / noise.gather(-1, order)).argmax(-1, keepdim=True)
        tokens = order.gather(-1, pick)[:, 0].tolist()
    if any(greedy):
        best = logits.argmax(-1).tolist()
        tokens = [b if g else t for g, b, t in zip(greedy, best, tokens, strict=True)]
    return tokens
