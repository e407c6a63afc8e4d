"""Export a tinyllm model as a Hugging Face `transformers` folder, and check it.

    python -m tinyllm.export RUN_OR_BEST_DIR OUT_DIR [--check] [--force] [--text FILE]
    tinyllm-export ...                                                    (the same)

The folder loads with stock classes (`AutoModelForCausalLM`, `AutoTokenizer`), no remote code.
The model's options choose the class (architectures.ARCHITECTURES):

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
and compares it with our model on the same ids (check.check_export). Everything is written into a
temporary folder next to OUT_DIR and renamed into place, so OUT_DIR is either absent, the old
folder, or the complete new one.

One module a job:
    architectures.py     which stock class, its config.json and our tensors under its names
    tokenizer_files.py   tokenizer.json and tokenizer_config.json
    card.py              generation_config.json and the model card (README.md)
    folder.py            writing it all into a temporary folder and renaming it into place
    check.py             the check against transformers (`--check`)
    program.py           the command line
"""

from tinyllm.export.architectures import ExportError, architecture, refuse_unmapped
from tinyllm.export.check import CheckReport, check_export, checker
from tinyllm.export.folder import export
from tinyllm.export.program import main

__all__ = [
    "CheckReport",
    "ExportError",
    "architecture",
    "check_export",
    "checker",
    "export",
    "main",
    "refuse_unmapped",
]
