"""generation_config.json and the model card (README.md) from the run's metadata and config."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinyllm.artifacts import CONSOLE_RANGES, LoadedModel
from tinyllm.export.architectures import architecture
from tinyllm.generation import split_unknown
from tinyllm.runs import find_run_config

# the run's console defaults when its metadata has none (training/default.yaml)
CONSOLE_DEFAULTS = {"max_tokens": 500, "temperature": 0.8, "top_k": 0}


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
    return _section(data)


def _section(value: object) -> dict:
    """`value` if it is a mapping, else {}: any part of a run config may be damaged (a section
    written as text, a list), and a damaged run config only costs the card details."""
    return value if isinstance(value, dict) else {}


def _recorded(value: object, types: type | tuple[type, ...]) -> str:
    """`value` as the card prints it, if it has one of `types` (true/false are no numbers)."""
    if isinstance(value, types) and not isinstance(value, bool):
        return str(value)
    return "not recorded"


def _console_value(value: object, key: str) -> bool:
    types, low, high = CONSOLE_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        return False
    return math.isfinite(value) and low <= value <= high


def console_defaults(metadata: dict, run_config: dict) -> dict:
    """Temperature, top-k and length the run's chat console uses: metadata, then config.yaml,
    then the defaults (a value of the wrong type or out of range counts as absent)."""
    training = _section(run_config.get("training"))
    stored = _section(metadata.get("console"))
    settings = {}
    for key, default in CONSOLE_DEFAULTS.items():
        found = (stored.get(key), training.get(f"console_{key}"))
        settings[key] = next((v for v in found if _console_value(v, key)), default)
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


def example_prompt(tokenizer, lowercase: bool) -> tuple[str, str]:
    """The card's prompt and the text the model reads of it: "ROMEO:" where the vocabulary
    holds it, else one of its letters. A model of a lowercased corpus reads it lowercased (the
    exported tokenizer lowercases prompts, tokenizer_files), so "ROMEO:" is "romeo:" to it."""
    text, unknown = split_unknown(tokenizer, "ROMEO:", lowercase=lowercase)
    if not unknown:  # always so for bytes (they have no `vocab`)
        return "ROMEO:", text
    for candidate in (*(c for c in tokenizer.vocab if c.isalpha()), *tokenizer.vocab):
        text, unknown = split_unknown(tokenizer, candidate, lowercase=lowercase)
        if text and not unknown:
            return candidate, text
    return tokenizer.vocab[0], tokenizer.vocab[0]


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
    tokenizer, context = loaded.tokenizer, config.context_length
    unit = tokenizer.unit  # character, or byte (data.tokenizer=bytes)
    if tokenizer.kind == "bytes":
        tokens = "Every UTF-8 byte is one token; the model continues text byte by byte."
        vocabulary = "Vocabulary: the 256 byte values of UTF-8, so any text can be encoded."
        unknown = ""
    else:
        tokens = "Every character is one token; the model continues text character by character."
        listed = json.dumps("".join(tokenizer.vocab), ensure_ascii=False)
        vocabulary = f"Vocabulary (in id order): `{listed}`"
        unknown = " Characters outside the vocabulary cannot be encoded."
    if loaded.lowercase:
        vocabulary += (
            "\n\nThe corpus was lowercased (`data.lowercase=true`), and the tokenizer lowercases "
            "prompts too (its `Lowercase` normalizer), as tinyllm's chat and server do."
        )
    # the snippet must run as printed: a prompt the vocabulary holds, within the context
    prompt, encoded = example_prompt(tokenizer, loaded.lowercase)
    lowered = f"  # read as {json.dumps(encoded, ensure_ascii=False)}" if encoded != prompt else ""
    new_tokens = max(
        1, min(max_new_tokens(console, context), context - len(tokenizer.encode(encoded)))
    )
    training = _section(run_config.get("training"))
    trainer = _section(run_config.get("trainer"))
    trained = [f"- optimizer steps: {meta['step']}"] if meta.get("step") is not None else []
    if training:
        trained += [
            f"- optimizer: {_recorded(training.get('optimizer', 'adam'), str)}, peak learning "
            f"rate {_recorded(training.get('learning_rate'), (int, float))}",
            f"- windows per step: {_recorded(training.get('batch_size'), int)}, of {context} "
            f"{unit}s each",
            f"- precision: {_recorded(trainer.get('precision'), (str, int))}",
        ]
    trained = trained or [
        "- not recorded with the model (no readable run config.yaml with training settings "
        "next to it)"
    ]
    positions = {
        "rotary": "rotary position embeddings",
        "learned": "learned position embeddings",
        "sinusoidal": "fixed sinusoidal positions, stored as GPT-2 position embeddings",
    }[config.positional]
    block = f"pre-norm {CARD_NORMS[config.norm]}, {CARD_MLPS[config.mlp]} MLP" + (
        ", RMSNorm on each head's queries and keys" if config.qk_norm else ""
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- tinyllm
- {unit}-level
---

# tinyllm character-level language model

A small {unit}-level transformer trained with tinyllm and exported to the stock
`transformers` class `{architecture(config)}` (no remote code).
{tokens}

| | |
|---|---|
| architecture | `{architecture(config)}`: {positions} |
| block | {block} |
| layers / heads / width | {config.n_layer} / {config.n_head} / {config.n_embd} |
| context | {context} {unit}s |
| parameters | {params:,} |
| vocabulary | {config.vocab_size} {tokenizer.vocab_unit} |
| output head | {"tied to the token embedding" if config.tie_weights else "its own matrix"} |

## Data

{meta.get("data_source") or "unknown (not recorded with the model)"}

{vocabulary}

## Results

Validation loss {_number(val_loss)} nats per {unit} ({_number(bpc)} bits per {unit}),
measured by the training run on its held-out split.

## Training

{chr(10).join(trained)}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")
tok = AutoTokenizer.from_pretrained("PATH_TO_THIS_FOLDER")
ids = tok({json.dumps(prompt, ensure_ascii=False)}, return_tensors="pt").input_ids{lowered}
print(tok.decode(model.generate(ids, max_new_tokens={new_tokens})[0]))
```

`generation_config.json` holds the run's chat defaults: temperature {console["temperature"]},
top-k {console["top_k"]} (0 = off) and {max_new_tokens(console, config.context_length)} new
tokens (the run's console wrote {console["max_tokens"]}; at most half the context here). The
model saw at most {context} {unit}s at a time: keep prompt plus continuation
within that (tinyllm's own generation slides a window; `generate` does not).{unknown}
"""
