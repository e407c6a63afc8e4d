"""Which stock transformers class computes a tinyllm model exactly, its config.json and its
tensors under the stock names (the table in tinyllm/export/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial

import torch
from torch import nn

from tinyllm.model import ModelConfig, Transformer

ROTARY_BASE = 10000.0  # model.rotary_tables

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


def _layer_norm(name: str, norm: nn.LayerNorm, offset: float = 0.0) -> Tensors:
    """A stock LayerNorm (always a bias: zeros where ours has none), its weight minus `offset`."""
    return {f"{name}.weight": norm.weight - offset, f"{name}.bias": _norm_bias(norm)}


def _biased(name: str, linear: nn.Linear, weight: torch.Tensor | None = None) -> Tensors:
    """A stock Linear that always has a bias (zeros where ours has none)."""
    weight = linear.weight if weight is None else weight
    return {f"{name}.weight": weight, f"{name}.bias": _bias(linear)}


def _neox_tensors(model: Transformer) -> Tensors:
    config = model.config
    out = {"gpt_neox.embed_in.weight": model.token_embedding.weight}
    for i, block in enumerate(model.blocks):
        p, attn = f"gpt_neox.layers.{i}.", block.attn
        out |= _layer_norm(p + "input_layernorm", block.ln1)
        out |= _layer_norm(p + "post_attention_layernorm", block.ln2)
        out[p + "attention.query_key_value.weight"] = _neox_qkv(attn.qkv.weight, config)
        out[p + "attention.dense.weight"] = attn.proj.weight
        if config.bias:  # attention_bias=false: NeoX's attention has no bias parameters at all
            out[p + "attention.query_key_value.bias"] = _neox_qkv(attn.qkv.bias, config)
            out[p + "attention.dense.bias"] = attn.proj.bias
        out |= _biased(p + "mlp.dense_h_to_4h", block.mlp.fc)
        out |= _biased(p + "mlp.dense_4h_to_h", block.mlp.proj)
    out |= _layer_norm("gpt_neox.final_layer_norm", model.ln_f)
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
        p, attn, mlp = f"transformer.h.{i}.", block.attn, block.mlp
        out |= _layer_norm(p + "ln_1", block.ln1)
        out |= _layer_norm(p + "ln_2", block.ln2)
        # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear's (out, in)
        for name, linear in (("attn.c_attn", attn.qkv), ("attn.c_proj", attn.proj),
                             ("mlp.c_fc", mlp.fc), ("mlp.c_proj", mlp.proj)):  # fmt: skip
            out |= _biased(p + name, linear, linear.weight.t())
    out |= _layer_norm("transformer.ln_f", model.ln_f)
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
    """Nemotron's LayerNorm1P multiplies by weight + 1: store ours minus 1."""
    return _layer_norm(name, norm, offset=1.0)


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
