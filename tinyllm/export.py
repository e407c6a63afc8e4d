"""Export a tinyllm model as a Hugging Face `transformers` folder, and check it.

    python -m tinyllm.export RUN_OR_BEST_DIR OUT_DIR [--check] [--force] [--text FILE]
    tinyllm-export ...                                                    (the same)

The folder loads with stock classes (`AutoModelForCausalLM`, `AutoTokenizer`), no remote code.
The model's options choose the class (ARCHITECTURES):

    positional  norm       mlp     qk_norm  architecture        how our weights map
    learned     layernorm  gelu    false    GPT2LMHeadModel     nn.Linear weights transposed into
                                                                GPT-2's Conv1D layout
    sinusoidal  layernorm  gelu    false    GPT2LMHeadModel     the fixed table written as the
                                                                position embedding
    rotary      layernorm  gelu    false    GPTNeoXForCausalLM  sequential residual; the fused QKV
                                                                rows regrouped per head (NeoX)
    rotary      rmsnorm    swiglu  false    LlamaForCausalLM    fused QKV cut into q/k/v_proj, the
                                                                fused [gate | up] into gate/up_proj
    rotary      rmsnorm    swiglu  true     Qwen3ForCausalLM    as Llama, plus q_norm/k_norm; no
                                                                sliding window; bias: false only
    rotary      layernorm  relu2   false    NemotronForCausalLM LayerNorm1P (weight + 1): the
                                                                weights are written minus 1

Every rotary class rotates the whole head with base 10000 and pairs (x[i], x[i + D/2]) in
`rotate_half`, as our apply_rotary does, so the rows within a head keep their order. Attention is
scaled by 1/sqrt(head size) everywhere; the norms keep our eps (LayerNorm 1e-5, RMSNorm 1e-6);
GELU is the exact one. `bias: false` becomes zero biases where the stock layer always has one; a
tied head is written once and tied by `tie_word_embeddings`. Any other combination is refused
with one line naming the option. The tokenizer becomes a `tokenizers` WordLevel model over single
characters (every character one token, same ids, decoding joins without spaces).

Writing needs only safetensors and JSON; `--check` imports transformers, loads the written folder
and compares it with our model on the same ids (see `check_export`). Everything is written into a
temporary folder next to OUT_DIR and renamed into place, so OUT_DIR is either absent, the old
folder, or the complete new one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from tinyllm.artifacts import ArtifactError, LoadedModel, load_model
from tinyllm.model import ModelConfig, Transformer
from tinyllm.runs import find_run_config
from tinyllm.tokenizer import ByteTokenizer, CharacterTokenizer

TOLERANCE = 1e-4  # max |logit difference| allowed in fp32
GREEDY_CHARACTERS = 200
ROTARY_BASE = 10000.0  # model.rotary_tables
# the run's console defaults when its metadata has none (training/default.yaml)
CONSOLE_DEFAULTS = {"max_tokens": 500, "temperature": 0.8, "top_k": 0}

# ModelConfig fields the mapping below expresses exactly. Any other field (a future option) is
# refused by name until a mapping for it is added here.
MAPPED_FIELDS = {
    "vocab_size", "context_length", "n_layer", "n_head", "n_embd", "bias", "positional",
    "tie_weights", "norm", "mlp", "qk_norm",
}  # fmt: skip
# training-only: dropout is off at inference and zero_init changes only the initial weights, so
# neither changes what the exported model computes
TRAINING_ONLY_FIELDS = {"dropout", "attn_dropout", "dropout_mask", "zero_init"}
# options exported only at their default value (none at present; a new option can start here)
DEFAULT_ONLY_FIELDS: dict[str, object] = {}
# the fields that choose the architecture: each Architecture lists the values it expresses (a
# refusal names the first one, in this order, whose architectures the others rule out)
ARCHITECTURE_FIELDS = ("norm", "mlp", "qk_norm", "positional")


class ExportError(ValueError):
    """The export cannot be written; the message names the problem and what to do."""


# --- architecture mapping -------------------------------------------------------------------

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Architecture:
    """One stock transformers class and the tinyllm options it computes exactly."""

    name: str
    # per ARCHITECTURE_FIELDS: the values of that option this class expresses
    accepts: dict[str, tuple]
    # config.json settings beyond the common ones: (our config, the norms' eps) -> dict
    config: Callable[[ModelConfig, float], dict]
    # model.safetensors: every tensor under the stock name
    tensors: Callable[[Transformer], Tensors]
    # a one-line refusal for a matching model this class still cannot express, else None
    refuse: Callable[[ModelConfig], str | None] = lambda config: None

    def matches(self, config: ModelConfig) -> bool:
        return all(getattr(config, name) in self.accepts[name] for name in ARCHITECTURE_FIELDS)


# configs: the settings that reproduce our model's computation in each class


def _rope(**extra: float) -> dict:
    """Full-head rotary, base 10000: transformers 5's rope_parameters and 4.x's rope_theta."""
    return {
        "rope_parameters": {"rope_type": "default", "rope_theta": ROTARY_BASE, **extra},
        "rope_theta": ROTARY_BASE,
    }


def _gpt2_config(config: ModelConfig, eps: float) -> dict:
    return {
        "model_type": "gpt2",
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden,
        "n_positions": config.context_length,
        "activation_function": "gelu",  # exact GELU, not GPT-2's tanh approximation (gelu_new)
        "layer_norm_epsilon": eps,
        "scale_attn_weights": True,  # 1/sqrt(head size), as scaled_dot_product_attention
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
    }


def _neox_config(config: ModelConfig, eps: float) -> dict:
    return _rope(partial_rotary_factor=1.0) | {
        "model_type": "gpt_neox",
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "intermediate_size": config.mlp_hidden,
        "hidden_act": "gelu",  # exact (erf) GELU, as F.gelu
        "max_position_embeddings": config.context_length,
        "layer_norm_eps": eps,
        "use_parallel_residual": False,  # x + attn(ln1(x)), then + mlp(ln2(.)): sequential
        "attention_bias": config.bias,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        # the rotary settings under the names transformers 4.x reads
        "rotary_pct": 1.0,
        "rotary_emb_base": ROTARY_BASE,
    }


def _decoder_config(config: ModelConfig) -> dict:
    """What Llama, Qwen3 and Nemotron share: separate q/k/v projections, as many key/value heads
    as query heads (no grouped-query attention), head_dim stated (Qwen3's default is 128)."""
    return _rope() | {
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context_length,
        "attention_bias": config.bias,
        "attention_dropout": 0.0,
    }


def _llama_config(config: ModelConfig, eps: float) -> dict:
    return _decoder_config(config) | {
        "model_type": "llama",
        "hidden_act": "silu",  # SwiGLU: silu(gate) * up
        "rms_norm_eps": eps,
        "mlp_bias": config.bias,
        "pretraining_tp": 1,
    }


def _qwen3_config(config: ModelConfig, eps: float) -> dict:
    return _decoder_config(config) | {
        "model_type": "qwen3",
        "hidden_act": "silu",
        "rms_norm_eps": eps,
        # Qwen3 can slide a window over the layers from max_window_layers on: every layer full
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.n_layer,
        "layer_types": ["full_attention"] * config.n_layer,
    }


def _nemotron_config(config: ModelConfig, eps: float) -> dict:
    # Nemotron rotates half of each head unless told otherwise (partial_rotary_factor 0.5)
    return (
        _decoder_config(config)
        | _rope(partial_rotary_factor=1.0)
        | {
            "model_type": "nemotron",
            "hidden_act": "relu2",  # relu(x)^2
            "norm_eps": eps,
            "mlp_bias": config.bias,
            "partial_rotary_factor": 1.0,  # transformers 4.x's name
        }
    )


# tensors: our weights under each class's names


def _bias(linear: nn.Linear) -> torch.Tensor:
    """The layer's bias, or zeros where ours has none (the stock layers always add one)."""
    if linear.bias is not None:
        return linear.bias
    return torch.zeros(linear.out_features, dtype=linear.weight.dtype)


def _norm_bias(norm: nn.LayerNorm) -> torch.Tensor:
    if norm.bias is not None:
        return norm.bias
    return torch.zeros_like(norm.weight)


def _neox_qkv(tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Ours are [q of all heads | k ... | v ...]; NeoX reads [q k v] of head 0, then head 1, ..."""
    rest = tensor.shape[1:]
    grouped = tensor.reshape(3, config.n_head, config.head_dim, *rest).transpose(0, 1)
    return grouped.reshape(3 * config.n_embd, *rest)


def _neox_tensors(model: Transformer) -> Tensors:
    config = model.config
    out = {"gpt_neox.embed_in.weight": model.token_embedding.weight}
    for i, block in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        attn, mlp = block.attn, block.mlp
        out |= {
            p + "input_layernorm.weight": block.ln1.weight,
            p + "input_layernorm.bias": _norm_bias(block.ln1),
            p + "post_attention_layernorm.weight": block.ln2.weight,
            p + "post_attention_layernorm.bias": _norm_bias(block.ln2),
            p + "attention.query_key_value.weight": _neox_qkv(attn.qkv.weight, config),
            p + "attention.dense.weight": attn.proj.weight,
            p + "mlp.dense_h_to_4h.weight": mlp.fc.weight,
            p + "mlp.dense_h_to_4h.bias": _bias(mlp.fc),
            p + "mlp.dense_4h_to_h.weight": mlp.proj.weight,
            p + "mlp.dense_4h_to_h.bias": _bias(mlp.proj),
        }
        if config.bias:  # attention_bias=false: NeoX's attention has no bias parameters at all
            out[p + "attention.query_key_value.bias"] = _neox_qkv(attn.qkv.bias, config)
            out[p + "attention.dense.bias"] = attn.proj.bias
    out["gpt_neox.final_layer_norm.weight"] = model.ln_f.weight
    out["gpt_neox.final_layer_norm.bias"] = _norm_bias(model.ln_f)
    if not config.tie_weights:
        # the name NeoX checkpoints use; transformers 5 renames it to lm_head when loading
        out["embed_out.weight"] = model.lm_head.weight
    return out


def _gpt2_tensors(model: Transformer) -> Tensors:
    config = model.config
    if config.positional == "learned":
        positions = model.position_embedding.weight
    else:  # sinusoidal: the fixed table becomes GPT-2's (learnable) position embedding
        positions = model.position_table
    out = {
        "transformer.wte.weight": model.token_embedding.weight,
        "transformer.wpe.weight": positions,
    }
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        attn, mlp = block.attn, block.mlp
        # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear's (out, in)
        out |= {
            p + "ln_1.weight": block.ln1.weight,
            p + "ln_1.bias": _norm_bias(block.ln1),
            p + "ln_2.weight": block.ln2.weight,
            p + "ln_2.bias": _norm_bias(block.ln2),
            p + "attn.c_attn.weight": attn.qkv.weight.t(),
            p + "attn.c_attn.bias": _bias(attn.qkv),
            p + "attn.c_proj.weight": attn.proj.weight.t(),
            p + "attn.c_proj.bias": _bias(attn.proj),
            p + "mlp.c_fc.weight": mlp.fc.weight.t(),
            p + "mlp.c_fc.bias": _bias(mlp.fc),
            p + "mlp.c_proj.weight": mlp.proj.weight.t(),
            p + "mlp.c_proj.bias": _bias(mlp.proj),
        }
    out["transformer.ln_f.weight"] = model.ln_f.weight
    out["transformer.ln_f.bias"] = _norm_bias(model.ln_f)
    if not config.tie_weights:
        out["lm_head.weight"] = model.lm_head.weight
    return out


def _linears(prefix: str, linear: nn.Linear, names: Sequence[str]) -> Tensors:
    """Our (possibly fused) Linear cut by output rows into len(names) equal stock Linears: the
    fused qkv into q/k/v_proj, swiglu's fused [gate | up] into gate/up_proj. A Linear without a
    bias writes none (the decoders' attention_bias / mlp_bias follow model.bias)."""
    out = {}
    for kind in ("weight", "bias"):
        tensor = getattr(linear, kind)
        if tensor is not None:
            parts = tensor.chunk(len(names))
            out |= {f"{prefix}{n}.{kind}": t for n, t in zip(names, parts, strict=True)}
    return out


def _rms_norm(name: str, norm: nn.Module) -> Tensors:
    return {f"{name}.weight": norm.weight}


def _layer_norm_1p(name: str, norm: nn.LayerNorm) -> Tensors:
    """Nemotron's LayerNorm1P multiplies by weight + 1: store ours minus 1; always a bias."""
    return {f"{name}.weight": norm.weight - 1.0, f"{name}.bias": _norm_bias(norm)}


def _decoder_tensors(
    model: Transformer, norm: Callable[[str, nn.Module], Tensors], mlp_in: Sequence[str]
) -> Tensors:
    """Llama-layout names (Llama, Qwen3, Nemotron): `norm` writes each norm, `mlp_in` names the
    projections our `fc` is cut into. Heads are contiguous rows in both layouts: no regrouping."""
    out = {"model.embed_tokens.weight": model.token_embedding.weight}
    for i, block in enumerate(model.blocks):
        p, attn = f"model.layers.{i}.", block.attn
        out |= norm(p + "input_layernorm", block.ln1)
        out |= norm(p + "post_attention_layernorm", block.ln2)
        out |= _linears(p + "self_attn.", attn.qkv, ("q_proj", "k_proj", "v_proj"))
        out |= _linears(p + "self_attn.", attn.proj, ("o_proj",))
        if attn.q_norm is not None:  # always RMSNorm over head_dim (Qwen3's q_norm, k_norm)
            out |= _rms_norm(p + "self_attn.q_norm", attn.q_norm)
            out |= _rms_norm(p + "self_attn.k_norm", attn.k_norm)
        out |= _linears(p + "mlp.", block.mlp.fc, mlp_in)
        out |= _linears(p + "mlp.", block.mlp.proj, ("down_proj",))
    out |= norm("model.norm", model.ln_f)
    if not model.config.tie_weights:
        out["lm_head.weight"] = model.lm_head.weight
    return out


def _qwen3_refuse(config: ModelConfig) -> str | None:
    if config.bias:
        return (
            "model.bias=True cannot be exported with model.qk_norm=True: its architecture, "
            "Qwen3ForCausalLM, has no MLP biases (train with model.bias=false)"
        )
    return None


ARCHITECTURES = (
    Architecture(
        "GPT2LMHeadModel",
        {"positional": ("learned", "sinusoidal"), "norm": ("layernorm",), "mlp": ("gelu",),
         "qk_norm": (False,)},
        _gpt2_config,
        _gpt2_tensors,
    ),
    Architecture(
        "GPTNeoXForCausalLM",
        {"positional": ("rotary",), "norm": ("layernorm",), "mlp": ("gelu",), "qk_norm": (False,)},
        _neox_config,
        _neox_tensors,
    ),
    Architecture(
        "LlamaForCausalLM",
        {"positional": ("rotary",), "norm": ("rmsnorm",), "mlp": ("swiglu",), "qk_norm": (False,)},
        _llama_config,
        partial(_decoder_tensors, norm=_rms_norm, mlp_in=("gate_proj", "up_proj")),
    ),
    Architecture(
        "Qwen3ForCausalLM",
        {"positional": ("rotary",), "norm": ("rmsnorm",), "mlp": ("swiglu",), "qk_norm": (True,)},
        _qwen3_config,
        partial(_decoder_tensors, norm=_rms_norm, mlp_in=("gate_proj", "up_proj")),
        _qwen3_refuse,
    ),
    Architecture(
        "NemotronForCausalLM",
        {"positional": ("rotary",), "norm": ("layernorm",), "mlp": ("relu2",), "qk_norm": (False,)},
        _nemotron_config,
        partial(_decoder_tensors, norm=_layer_norm_1p, mlp_in=("up_proj",)),
    ),
)  # fmt: skip


def _values(values: Sequence) -> str:
    return repr(values[0]) if len(values) == 1 else f"one of {tuple(values)!r}"


def _no_architecture(config: ModelConfig) -> str:
    """One line naming an option that no architecture expresses together with the others: the
    first non-default option whose architectures need other values of the other options."""
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    chosen = [name for name in ARCHITECTURE_FIELDS if getattr(config, name) != defaults[name]]
    for name in chosen:
        value = getattr(config, name)
        candidates = [a for a in ARCHITECTURES if value in a.accepts[name]]
        if not candidates:
            return (
                f"model.{name}={value!r} has no exact counterpart in the transformers "
                "architectures this exporter writes: it cannot be exported"
            )
        needs = {}
        for other in ARCHITECTURE_FIELDS:
            allowed = list(dict.fromkeys(v for a in candidates for v in a.accepts[other]))
            if getattr(config, other) not in allowed:
                needs[other] = allowed
        if needs:
            names = ", ".join(a.name for a in candidates)
            required = ", ".join(f"{o}={_values(v)}" for o, v in needs.items())
            has = ", ".join(f"{o}={getattr(config, o)!r}" for o in needs)
            return (
                f"model.{name}={value!r} is exported only with {required} ({names}); this model "
                f"has {has}: it cannot be exported"
            )
    options = ", ".join(f"model.{n}={getattr(config, n)!r}" for n in chosen)
    return f"{options} together have no exact counterpart in transformers: it cannot be exported"


def select_architecture(config: ModelConfig) -> Architecture:
    """The stock class that computes what a model of `config` computes; ExportError (one line,
    naming the option) for a model none of them expresses exactly."""
    for f in fields(config):
        if DEFAULT_ONLY_FIELDS.get(f.name, object()) == getattr(config, f.name):
            continue
        if f.name not in MAPPED_FIELDS | TRAINING_ONLY_FIELDS:
            raise ExportError(
                f"model.{f.name}={getattr(config, f.name)!r} has no exact counterpart in the "
                "transformers architectures this exporter writes: it cannot be exported"
            )
    for arch in ARCHITECTURES:
        if arch.matches(config):
            problem = arch.refuse(config)
            if problem is not None:
                raise ExportError(problem)
            return arch
    raise ExportError(_no_architecture(config))


def refuse_unmapped(config: ModelConfig) -> None:
    """Refuse a model with an option no stock transformers architecture here expresses exactly."""
    select_architecture(config)


def architecture(config: ModelConfig) -> str:
    return select_architecture(config).name


def hf_config(config: ModelConfig, dtype: torch.dtype, norm_eps: float) -> dict:
    """config.json: the stock architecture's settings that reproduce our model's computation."""
    arch = select_architecture(config)
    common = {
        "architectures": [arch.name],
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    return common | arch.config(config, norm_eps)


def hf_tensors(model: Transformer) -> Tensors:
    """model.safetensors contents: every tensor under the stock architecture's name."""
    tensors = select_architecture(model.config).tensors(model)
    # own, contiguous storage per tensor: safetensors refuses shared or strided memory
    return {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}


# --- tokenizer -------------------------------------------------------------------------------


def _character_tokenizer_json(tokenizer: CharacterTokenizer) -> dict:
    """A `tokenizers` WordLevel model over single characters: one token per character, our ids."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,  # no Unicode normalisation: the text reaches the model as written
        # every character (newlines included: [\s\S], not '.') is its own piece
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": "[\\s\\S]"},
            "behavior": "Isolated",
            "invert": False,
        },
        "post_processor": None,
        "decoder": {"type": "Fuse"},  # join the pieces without spaces
        "model": {
            "type": "WordLevel",
            "vocab": {character: i for i, character in enumerate(tokenizer.vocab)},
            # not in the vocabulary: a character the model never saw is an error, as in tinyllm
            "unk_token": "<unk>",
        },
    }


def byte_symbols() -> list[str]:
    """The printable character `tokenizers`' ByteLevel stands each byte value for (GPT-2's
    scheme): visible Latin-1 bytes are themselves, the others (controls, space, soft hyphen)
    take the code points from 256 on, in byte order."""
    visible = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = (b for b in range(256) if b not in visible)
    symbols = {b: chr(b) for b in visible} | {b: chr(256 + n) for n, b in enumerate(others)}
    return [symbols[b] for b in range(256)]


def _byte_tokenizer_json(tokenizer: ByteTokenizer) -> dict:
    """UTF-8 bytes as tokens, id = byte value: ByteLevel maps text to one symbol per byte, each
    symbol is a token, and the ByteLevel decoder turns the symbols back into bytes and text."""
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "ByteLevel", **byte_level},
                {
                    "type": "Split",
                    "pattern": {"Regex": "[\\s\\S]"},
                    "behavior": "Isolated",
                    "invert": False,
                },
            ],
        },  # fmt: skip
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "WordLevel",
            "vocab": {symbol: i for i, symbol in enumerate(byte_symbols())},
            "unk_token": "<unk>",
        },
    }


# One writer per tokenizer kind.
TOKENIZER_WRITERS: dict[type, Callable[[object], dict]] = {
    CharacterTokenizer: _character_tokenizer_json,
    ByteTokenizer: _byte_tokenizer_json,
}


def tokenizer_characters(tokenizer) -> str:
    """Characters the round-trip check covers: the whole vocabulary of a character tokenizer;
    for bytes, ASCII and multi-byte characters of several scripts."""
    if isinstance(tokenizer, ByteTokenizer):
        return "".join(chr(c) for c in range(32, 127)) + "\n\t\r é ü — “ ” 中文 😀"
    return "".join(tokenizer.vocab)


def tokenizer_files(tokenizer: object, context_length: int) -> dict[str, dict]:
    """tokenizer.json (for PreTrainedTokenizerFast) and tokenizer_config.json."""
    writer = TOKENIZER_WRITERS.get(type(tokenizer))
    if writer is None:
        raise ExportError(
            f"the tokenizer {type(tokenizer).__name__} cannot be exported yet "
            f"(supported: {', '.join(t.__name__ for t in TOKENIZER_WRITERS)})"
        )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        # the default cleanup would turn "a ." into "a." when decoding: keep the text exact
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    return {"tokenizer.json": writer(tokenizer), "tokenizer_config.json": config}


# --- generation defaults and model card -------------------------------------------------------


def read_run_config(model_path: Path) -> dict:
    """The run's resolved config.yaml (next to best/ or checkpoints/), or {} if there is none."""
    path = find_run_config(model_path)
    if path is None:
        return {}
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged run config only costs the card details
        return {}
    return data if isinstance(data, dict) else {}


def console_defaults(metadata: dict, run_config: dict) -> dict:
    """Temperature, top-k and length the run's chat console uses: metadata, then config.yaml."""
    training = run_config.get("training") or {}
    stored = metadata.get("console") or {}
    settings = {}
    for key, default in CONSOLE_DEFAULTS.items():
        value = stored.get(key, training.get(f"console_{key}", default))
        settings[key] = value if isinstance(value, (int, float)) else default
    return settings


def max_new_tokens(console: dict, context_length: int) -> int:
    """The console's length, at most half the context: `generate` does not slide its window as
    tinyllm does, and GPT-2 fails (IndexError) past its last position, so prompt plus
    continuation must fit the context."""
    return max(1, min(console["max_tokens"], context_length // 2))


def generation_config(console: dict, context_length: int) -> dict:
    return {
        "do_sample": console["temperature"] > 0,
        "temperature": console["temperature"] if console["temperature"] > 0 else None,
        "top_k": console["top_k"],  # 0 is off, as in tinyllm (transformers' default is 50)
        "max_new_tokens": max_new_tokens(console, context_length),
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def _number(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "unknown"


# how the model card names the block's parts
CARD_NORMS = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}
CARD_MLPS = {"gelu": "GELU", "relu2": "squared-ReLU", "swiglu": "SwiGLU"}


def model_card(loaded: LoadedModel, run_config: dict, console: dict) -> str:
    """README.md: what the model is, its data, its validation loss, how it was trained and used."""
    config, meta = loaded.model.config, loaded.metadata
    params = sum(p.numel() for p in loaded.model.parameters())
    val_loss = meta.get("val_loss")
    bpc = meta.get("val_bpc")
    if bpc is None and isinstance(val_loss, (int, float)):
        bpc = val_loss / math.log(2)
    training = run_config.get("training") or {}
    trainer = run_config.get("trainer") or {}
    trained = [f"- optimizer steps: {meta['step']}"] if meta.get("step") is not None else []
    if training:
        trained += [
            f"- optimizer: {training.get('optimizer', 'adam')}, peak learning rate "
            f"{training.get('learning_rate')}, {training.get('batch_size')} windows of "
            f"{config.context_length} characters per step",
            f"- precision: {trainer.get('precision', 'not recorded')}",
        ]
    trained = trained or ["- not recorded with the model (no run config.yaml next to it)"]
    positions = {
        "rotary": "rotary position embeddings",
        "learned": "learned position embeddings",
        "sinusoidal": "fixed sinusoidal positions, stored as GPT-2 position embeddings",
    }[config.positional]
    block = f"pre-norm {CARD_NORMS[config.norm]}, {CARD_MLPS[config.mlp]} MLP" + (
        ", RMSNorm on each head's queries and keys" if config.qk_norm else ""
    )
    vocab = "".join(getattr(loaded.tokenizer, "vocab", []))
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- tinyllm
- character-level
---

# tinyllm character-level language model

A small character-level transformer trained with tinyllm and exported to the stock
`transformers` class `{architecture(config)}` (no remote code).
Every character is one token; the model continues text character by character.

| | |
|---|---|
| architecture | `{architecture(config)}`: {positions} |
| block | {block} |
| layers / heads / width | {config.n_layer} / {config.n_head} / {config.n_embd} |
| context | {config.context_length} characters |
| parameters | {params:,} |
| vocabulary | {config.vocab_size} characters |
| output head | {"tied to the token embedding" if config.tie_weights else "its own matrix"} |

## Data

{meta.get("data_source") or "unknown (not recorded with the model)"}

Vocabulary (in id order): `{json.dumps(vocab, ensure_ascii=False)}`

## Results

Validation loss {_number(val_loss)} nats per character ({_number(bpc)} bits per character),
measured by the training run on its held-out split.

## Training

{chr(10).join(trained)}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")
tok = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")
ids = tok("ROMEO:", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=200)[0]))
```

`generation_config.json` holds the run's chat defaults: temperature {console["temperature"]},
top-k {console["top_k"]} (0 = off) and {max_new_tokens(console, config.context_length)} new
tokens (the run's console wrote {console["max_tokens"]}; at most half the context here). The
model saw at most {config.context_length} characters at a time: keep prompt plus continuation
within that (tinyllm's own generation slides a window; `generate` does not). Characters outside the
vocabulary cannot be encoded.
"""


# --- writing ---------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_folder(loaded: LoadedModel, folder: Path, run_config: dict | None = None) -> None:
    """Write every file of the export into `folder` (an empty, temporary folder)."""
    run_config = run_config or {}
    model = loaded.model
    tensors = hf_tensors(model)
    dtype = model.token_embedding.weight.dtype
    console = console_defaults(loaded.metadata, run_config)
    # bytes written by Python, not save_file: that creates the file 0600, ignoring the umask
    (folder / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    eps = {norm.eps for norm in model.modules() if isinstance(norm, (nn.LayerNorm, nn.RMSNorm))}
    if len(eps) != 1:  # one eps in the stock configs
        raise ExportError(f"the model's norms do not share one eps ({sorted(eps)})")
    _write_json(folder / "config.json", hf_config(model.config, dtype, eps.pop()))
    context = model.config.context_length
    _write_json(folder / "generation_config.json", generation_config(console, context))
    for name, data in tokenizer_files(loaded.tokenizer, context).items():
        _write_json(folder / name, data)
    (folder / "README.md").write_text(model_card(loaded, run_config, console), encoding="utf-8")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def prepare_destination(out_dir: Path, source: Path | None, force: bool) -> None:
    """Refuse an OUT_DIR that holds something (unless --force) or would destroy the source."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder: choose another OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ExportError(
                f"{out_dir} exists and is not empty: choose another OUT_DIR or pass --force "
                "to replace it"
            )
        if source is not None and _inside(source.resolve(), out_dir.resolve()):
            raise ExportError(
                f"{out_dir} holds the model being exported ({source}): --force would delete it; "
                "choose another OUT_DIR"
            )


def publish(tmp: Path, out_dir: Path) -> None:
    """Put the finished temporary folder at `out_dir`, replacing what is there (if anything)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    os.replace(out_dir, old / out_dir.name)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old / out_dir.name, out_dir)  # put the old folder back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def export(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    check: Callable[[LoadedModel, Path], CheckReport] | None = None,
) -> tuple[LoadedModel, CheckReport | None]:
    """Write the transformers folder for a run folder, best/ folder or .ckpt to `out_dir`.

    `check`, if given, runs on the finished temporary folder before it is published: a failed
    check leaves `out_dir` as it was. Raises ExportError (or ArtifactError) for bad input.
    """
    model_path, out_dir = Path(model_path).expanduser(), Path(out_dir).expanduser()
    loaded = load_model(model_path)
    refuse_unmapped(loaded.model.config)
    prepare_destination(out_dir, loaded.path, force)
    run_config = read_run_config(model_path)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # a sibling, so the final rename stays on one filesystem; mkdir honours the umask
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise ExportError(
            f"cannot write to {out_dir.parent} ({e.strerror or e}): choose a writable OUT_DIR"
        ) from None
    try:
        try:
            write_folder(loaded, tmp, run_config)
        except OSError as e:
            raise ExportError(
                f"cannot write the export next to {out_dir} ({e.strerror or e}): "
                "free some space or choose another OUT_DIR"
            ) from None
        report = check(loaded, tmp) if check is not None else None
        if report is None or report.passed:
            try:
                publish(tmp, out_dir)
            except OSError as e:
                raise ExportError(
                    f"cannot move the export to {out_dir} ({e.strerror or e}): "
                    "choose a writable OUT_DIR"
                ) from None
        return loaded, report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the check against transformers ---------------------------------------------------------


@dataclass
class CheckReport:
    """What `--check` measured; `passed` only if every comparison holds."""

    max_logit_diff: float
    logit_ids: int
    layer_diffs: list[tuple[str, float]] = field(default_factory=list)
    greedy_identical: int = 0
    greedy_total: int = 0
    greedy_note: str = ""
    tokenizer_characters: int = 0
    tokenizer_problem: str = ""
    text_source: str = ""

    @property
    def first_divergent_layer(self) -> tuple[str, float] | None:
        return next(((n, d) for n, d in self.layer_diffs if d > TOLERANCE), None)

    @property
    def logits_ok(self) -> bool:
        return self.max_logit_diff <= TOLERANCE

    @property
    def greedy_ok(self) -> bool:
        return self.greedy_identical == self.greedy_total

    @property
    def passed(self) -> bool:
        return self.logits_ok and self.greedy_ok and not self.tokenizer_problem

    def summary(self) -> str:
        lines = [
            f"logits: max |difference| {self.max_logit_diff:.2e} over {self.logit_ids:,} "
            f"positions ({'within' if self.logits_ok else 'ABOVE'} {TOLERANCE:g})",
        ]
        divergent = self.first_divergent_layer
        if divergent is not None:
            lines.append(
                f"hidden states first diverge at {divergent[0]} (max |difference| "
                f"{divergent[1]:.2e})"
            )
        lines.append(
            f"greedy continuation: {self.greedy_identical}/{self.greedy_total} characters "
            f"identical{self.greedy_note}"
        )
        lines.append(
            f"tokenizer: {self.tokenizer_problem}"
            if self.tokenizer_problem
            else f"tokenizer: round trip identical on {self.tokenizer_characters:,} characters"
        )
        lines.append(f"text: {self.text_source}")
        return "\n".join(lines)


@torch.no_grad()
def forward_with_hidden_states(
    model: Transformer, ids: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and our residual stream as transformers reports it: the input of each layer, then
    the last layer's output after the final norm (n_layer + 1 tensors). Hooks on the model's
    own modules record them during its real forward, so nothing of model.py is re-implemented."""
    states: list[torch.Tensor] = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: states.append(args[0]))]
    for block in model.blocks:
        hooks.append(block.register_forward_hook(lambda m, args, out: states.append(out)))
    hooks.append(model.ln_f.register_forward_hook(lambda m, args, out: states.append(out)))
    try:
        logits = model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, states[:-2] + states[-1:]  # the last block's output only after ln_f


def first_difference(a: Sequence, b: Sequence) -> int | None:
    """Index of the first item where `a` and `b` differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _layer_name(index: int, n_layer: int) -> str:
    if index == 0:
        return "the embeddings (input of layer 1)"
    if index == n_layer:
        return f"the output of layer {index} (after the final norm)"
    return f"the output of layer {index}"


def _greedy_reference(hf, window_ids: list[int], steps: int, context: int) -> list[int]:
    """transformers' greedy continuation: `generate` when it fits the context, else the same
    sliding window tinyllm's `stream` uses (keep the last half, continue), recomputed each step."""
    if len(window_ids) + steps <= context:
        prompt = torch.tensor([window_ids])
        out = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
        )
        return out[0, len(window_ids) :].tolist()
    window, result = window_ids[-context:], []
    for _ in range(steps):
        token = int(hf(torch.tensor([window])).logits[0, -1].argmax())
        result.append(token)
        window = _slide(window, token, context)
    return result


def _slide(window: list[int], token: int, context: int) -> list[int]:
    """The next window of `Transformer.stream`: append, or when full keep the last half."""
    if len(window) < context:
        return window + [token]
    keep = max(1, context // 2)
    return window[-(keep - 1) :] + [token] if keep > 1 else [token]


def _margin(model: Transformer, prompt: list[int], generated: list[int], step: int, a: int, b: int):
    """How far apart our logits for tokens `a` and `b` are at greedy step `step`."""
    window = prompt[-model.config.context_length :]
    for token in generated[:step]:
        window = _slide(window, token, model.config.context_length)
    with torch.no_grad():
        logits = model(torch.tensor([window]))[0, -1]
    return float(logits[a] - logits[b])


def representative_text(tokenizer: CharacterTokenizer, length: int = 2048) -> str:
    """Every character of the vocabulary, then a fixed pseudo-random mix of them."""
    vocab = list(tokenizer_characters(tokenizer))
    rng = random.Random(0)
    return "".join(vocab) + "".join(rng.choice(vocab) for _ in range(length))


def validation_text(model_path: Path, tokenizer: CharacterTokenizer) -> tuple[str, str] | None:
    """The run's validation split, read and cleaned as the run did; None when not at hand."""
    try:
        from tinyllm.evaluation import eval_config, split_ids

        ids, _, datamodule = split_ids(eval_config(model_path=str(model_path)), tokenizer)
    except Exception:  # noqa: BLE001 - no run config or corpus at hand: use another text
        return None
    part = tokenizer.decode(ids.tolist())
    if not part:
        return None
    return part, f"the run's validation split ({datamodule.source})"


def check_export(
    loaded: LoadedModel,
    folder: Path,
    text: str | None = None,
    text_source: str = "given text",
    windows: int = 4,
) -> CheckReport:
    """Load `folder` with transformers and compare it with our model on the same ids.

    Logits (fp32) on up to `windows` context-length windows of `text`, layer by layer hidden
    states, a greedy continuation of GREEDY_CHARACTERS characters, and the tokenizer round trip
    on the whole text plus every vocabulary character.
    """
    from transformers.utils import logging as hf_logging

    # quiet while checking: the round-trip text is longer than model_max_length (a warning),
    # and the loading progress bar is noise in a one-line-per-result report
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return _compare(loaded, folder, text, text_source, windows)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _compare(
    loaded: LoadedModel, folder: Path, text: str | None, text_source: str, windows: int
) -> CheckReport:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = loaded.model.float().eval(), loaded.tokenizer
    config = model.config
    if text is None:
        text, text_source = representative_text(tokenizer), "every vocabulary character + a mix"
    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    hf.eval()
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    # tokenizer: the same ids, and decoding gives the text back
    problem = ""
    for sample in (text, tokenizer_characters(tokenizer)):
        ours = tokenizer.encode(sample)
        theirs = hf_tok(sample, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            at = first_difference(ours, theirs)
            problem = f"ids differ at character {at} of {len(sample):,} ({sample[at : at + 10]!r})"
            break
        decoded = hf_tok.decode(theirs)
        if decoded != sample:
            at = first_difference(sample, decoded)
            problem = f"decoding differs at character {at} ({decoded[at : at + 10]!r})"
            break

    # logits and hidden states on the same ids
    ids = torch.tensor(tokenizer.encode(text[: windows * config.context_length]))
    rows = max(1, len(ids) // config.context_length)
    batch = ids[: rows * config.context_length].view(rows, -1) if len(ids) >= 2 else ids.view(1, -1)
    with torch.no_grad():
        ours_logits, ours_states = forward_with_hidden_states(model, batch)
        out = hf(batch, output_hidden_states=True)
    max_diff = float((out.logits - ours_logits).abs().max())
    layer_diffs = [
        (_layer_name(i, config.n_layer), float((theirs - ours).abs().max()))
        for i, (ours, theirs) in enumerate(zip(ours_states, out.hidden_states, strict=True))
    ]

    # greedy continuation from the start of the text
    prompt = tokenizer.encode(text[: max(1, min(32, config.context_length // 4))])
    ours_greedy = list(model.stream(prompt, GREEDY_CHARACTERS, temperature=0.0))
    with torch.no_grad():
        theirs_greedy = _greedy_reference(hf, prompt, GREEDY_CHARACTERS, config.context_length)
    differ = first_difference(ours_greedy, theirs_greedy)
    same = len(ours_greedy) if differ is None else differ
    note = ""
    if same < GREEDY_CHARACTERS:
        if same < len(theirs_greedy):
            a, b = ours_greedy[same], theirs_greedy[same]
            margin = _margin(model, prompt, ours_greedy, same, a, b)
            note = (
                f" (first difference at character {same + 1}: ours {tokenizer.decode([a])!r}, "
                f"transformers {tokenizer.decode([b])!r}; our logits for the two differ by "
                f"{margin:.2e}{', a near-tie' if margin <= 2 * TOLERANCE else ''})"
            )
        else:
            note = f" (transformers stopped after {len(theirs_greedy)})"
    return CheckReport(
        max_logit_diff=max_diff,
        logit_ids=batch.numel(),
        layer_diffs=layer_diffs,
        greedy_identical=same,
        greedy_total=GREEDY_CHARACTERS,
        greedy_note=note,
        tokenizer_characters=len(text) + len(tokenizer_characters(tokenizer)),
        tokenizer_problem=problem,
        text_source=text_source,
    )


# --- command line ------------------------------------------------------------------------------


Checker = Callable[[LoadedModel, Path], "CheckReport"]


def checker(model_path: str | Path, text_file: Path | None = None) -> Checker:
    """The `--check` of the command: on `text_file`, else the run's validation split, else every
    vocabulary character."""
    model_path = Path(model_path).expanduser()

    def check(loaded: LoadedModel, folder: Path) -> CheckReport:
        if text_file is not None:
            text, source = _read_text(text_file, loaded.tokenizer), f"{text_file}"
        else:
            found = validation_text(model_path, loaded.tokenizer)
            text, source = found if found is not None else (None, "")
        return check_export(loaded, folder, text, source)

    return check


def _read_text(path: Path, tokenizer: CharacterTokenizer) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"--text {path} cannot be read ({e}): pass a UTF-8 text file") from None
    unknown = tokenizer.unknown_characters(text)
    if not text or unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        raise ExportError(
            f"--text {path} is empty or has characters outside the model's vocabulary "
            f"({shown}): pass text the model can encode"
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinyllm-export",
        description="Write a model as a Hugging Face transformers folder (safetensors, config, "
        "tokenizer, generation defaults, model card).",
    )
    parser.add_argument("model", help="run folder, its best/ folder, or a .ckpt file")
    parser.add_argument("out_dir", help="folder to write (must not exist or be empty)")
    parser.add_argument(
        "--check", action="store_true",
        help="load the export with transformers and compare logits, greedy text and tokenizer "
        "with tinyllm before publishing it (needs the export extra)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument(
        "--text", type=Path, metavar="FILE",
        help="text for --check (default: the run's validation split, else every vocabulary "
        "character)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    model_path = Path(args.model).expanduser()
    check = None
    if args.check:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print(
                'error: --check needs transformers: pip install -e ".[export]" '
                "(writing the export does not)",
                file=sys.stderr,
            )
            return 2
        check = checker(model_path, args.text)
    try:
        loaded, report = export(model_path, args.out_dir, force=args.force, check=check)
    except (ExportError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = architecture(loaded.model.config)
    if report is not None:
        print(report.summary())
        if not report.passed:
            print(
                f"check FAILED: the export does not compute what the model does; "
                f"{args.out_dir} was not written",
                file=sys.stderr,
            )
            return 1
    print(f"exported {loaded.path} as {name} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
