"""Export to Hugging Face transformers: every positional encoding x tied/untied head x bias on/off,
and the block options (RMSNorm + SwiGLU as Llama, + q/k norm as Qwen3, relu2 as Nemotron), is
loaded by stock transformers classes and computes what our model computes; other combinations are
refused by name; the check's diagnostics point at the right layer; bad input gets one line and
exit code 2, nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_corpus
from safetensors.torch import load_file, save_file

from tinyllm.artifacts import load_model, save_artifacts
from tinyllm.export import (
    CheckReport,
    ExportError,
    check_export,
    checker,
    export,
    main,
    refuse_unmapped,
)
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import ByteTokenizer, CharacterTokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402

# newlines (LF and CR), tabs, runs of spaces, punctuation, quotes, non-ASCII and a non-BMP
# character: all must survive the tokenizer round trip
TEXT = make_corpus(40, seed=1) + "\r\n\t  \"quoted\" 'x' -- [a]{b} é ü – “ok” 🙂 <unk> \\ end.\n"
TOKENIZER = CharacterTokenizer().fit(TEXT)
EXPORTED_FILES = {
    "model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
    "tokenizer_config.json", "README.md",
}  # fmt: skip


def tiny_model(
    positional: str, tie: bool, bias: bool, context: int = 64, n_layer: int = 2, **options
) -> Transformer:
    """Random weights, spread wider than the init (std 0.3) so that the logits of different
    characters are far apart: a greedy continuation then tests the model, not float ties.
    `options`: further ModelConfig fields (norm, mlp, qk_norm)."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=TOKENIZER.vocab_size, context_length=context, n_layer=n_layer, n_head=2,
        n_embd=32, positional=positional, tie_weights=tie, bias=bias, dropout=0.1, **options,
    )  # fmt: skip
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def save_best(folder: Path, model: Transformer, metadata: dict | None = None) -> Path:
    return save_artifacts(folder / "best", model, TOKENIZER, metadata or {"val_loss": 1.5})


def check_with_text(loaded, folder):
    return check_export(loaded, folder, TEXT, "test text")


def assert_exported_exactly(tmp_path: Path, model: Transformer, expected: str) -> None:
    """Export `model` with the check, then load the published folder as a user would: the stock
    class `expected`, the same logits, the same ids and text from the tokenizer."""
    config = model.config
    best = save_best(tmp_path, model)
    out = tmp_path / "hf"
    loaded, report = export(best, out, check=check_with_text)
    assert report.passed, report.summary()
    assert report.max_logit_diff <= 1e-4
    assert report.greedy_identical == report.greedy_total == 200
    assert all(diff <= 1e-4 for _, diff in report.layer_diffs)
    # embeddings, then each layer's output (the last after the final norm)
    assert len(report.layer_diffs) == config.n_layer + 1
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES

    # independently of the check: the published folder, loaded as a user would
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert type(hf).__name__ == expected
    assert f"`{expected}`" in (out / "README.md").read_text()
    head, embedding = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
    tie = config.tie_weights
    assert (head.data_ptr() == embedding.data_ptr()) == tie == hf.config.tie_word_embeddings
    context = config.context_length
    ids = tok(TEXT[:context], return_tensors="pt").input_ids
    assert ids[0].tolist() == TOKENIZER.encode(TEXT[:context])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, loaded.model(ids), atol=1e-4, rtol=0)
    assert tok.decode(ids[0]) == TEXT[:context]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("positional", ["rotary", "learned", "sinusoidal"])
def test_export_computes_what_our_model_computes(tmp_path, positional, tie, bias):
    # context 32 < prompt + 200: the greedy check slides the window as tinyllm does; 256: generate
    context = 256 if bias else 32
    expected = "GPTNeoXForCausalLM" if positional == "rotary" else "GPT2LMHeadModel"
    assert_exported_exactly(tmp_path, tiny_model(positional, tie, bias, context), expected)


# the block options each architecture beyond GPT-2 / GPT-NeoX expresses (all rotary)
BLOCK_ARCHITECTURES = {
    "LlamaForCausalLM": {"norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False},
    "Qwen3ForCausalLM": {"norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True},
    "NemotronForCausalLM": {"norm": "layernorm", "mlp": "relu2", "qk_norm": False},
}


# context 256: the greedy check uses `generate` (transformers' cache); 32: the sliding window
@pytest.mark.parametrize(
    ("expected", "tie", "bias", "context"),
    [
        ("LlamaForCausalLM", False, True, 256),
        ("LlamaForCausalLM", True, False, 32),
        ("Qwen3ForCausalLM", False, False, 256),  # Qwen3's MLP has no biases: bias=true is refused
        ("Qwen3ForCausalLM", True, False, 32),
        ("NemotronForCausalLM", False, True, 256),
        ("NemotronForCausalLM", True, False, 32),
    ],
)
def test_block_options_export_to_their_architecture(tmp_path, expected, tie, bias, context):
    """RMSNorm + SwiGLU (+ q/k norm) and LayerNorm + relu2, random weights: every norm weight
    far from 1 (Nemotron stores weight - 1), every bias far from 0."""
    model = tiny_model("rotary", tie, bias, context, **BLOCK_ARCHITECTURES[expected])
    assert_exported_exactly(tmp_path, model, expected)


@pytest.mark.parametrize("expected", list(BLOCK_ARCHITECTURES))
def test_a_trained_model_with_block_options_exports_exactly(tmp_path, expected):
    """Weights shaped by training (a few hundred AdamW steps on the test text), not drawn at
    random: the check passes on them too, and the exported model continues the text."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=TOKENIZER.vocab_size, context_length=32, n_layer=2, n_head=2, n_embd=32,
        positional="rotary", bias=False, **BLOCK_ARCHITECTURES[expected],
    )  # fmt: skip
    model = Transformer(config)
    ids = torch.tensor(TOKENIZER.encode(TEXT))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - 33, (16,))
        batch = torch.stack([ids[s : s + 33] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 2.5  # it learned something
    assert_exported_exactly(tmp_path, model.eval(), expected)


def test_byte_tokenizer_model_exports_with_the_same_ids(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=256, context_length=64, n_layer=1, n_head=2, n_embd=32,
                         positional="rotary")  # fmt: skip
    best = save_artifacts(tmp_path / "best", Transformer(config), ByteTokenizer(), {})
    out = tmp_path / "hf"
    loaded, report = export(best, out, check=check_with_text)
    assert report.passed, report.summary()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "naïve 中文 🙂\r\n\ttabs  and spaces"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # the byte values are the ids
    assert tok.decode(ids) == text


def test_the_card_of_a_byte_model_speaks_of_bytes(tmp_path):
    config = ModelConfig(vocab_size=256, context_length=16, n_layer=1, n_head=2, n_embd=32,
                         positional="rotary")  # fmt: skip
    best = save_artifacts(tmp_path / "best", Transformer(config), ByteTokenizer(),
                          {"val_loss": 2.0})  # fmt: skip
    export(best, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    for fact in ("Every UTF-8 byte is one token", "| context | 16 bytes |",
                 "| vocabulary | 256 byte values |", "nats per byte", "bits per byte",
                 "any text can be encoded"):  # fmt: skip
        assert fact in card, fact
    assert "character" not in card.replace("character-level", "")


def test_the_cards_snippet_runs_for_any_vocabulary_and_context(tmp_path):
    """The card's Use code, run as printed, on a model whose vocabulary has none of ROMEO: and
    whose context (12) is shorter than the prompt plus the console's length."""
    tokenizer = CharacterTokenizer().fit("xyz abc\n")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=12, n_layer=1,
                         n_head=2, n_embd=16, positional="learned")  # fmt: skip
    metadata = {"console": {"temperature": 0.0, "top_k": 0, "max_tokens": 500}}
    best = save_artifacts(tmp_path / "best", Transformer(config), tokenizer, metadata)
    out = tmp_path / "hf"
    export(best, out)
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "ROMEO" not in snippet
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace("PATH_TO_THIS_FOLDER", str(out)), {})  # the README's use, as is
    assert 1 < len(printed.getvalue().strip()) <= 12


def test_the_check_names_the_first_layer_that_diverges(tmp_path):
    best = save_best(tmp_path, tiny_model("learned", tie=False, bias=True, n_layer=3))
    out = tmp_path / "hf"
    export(best, out)
    weights = load_file(out / "model.safetensors")
    weights["transformer.h.1.mlp.c_proj.weight"] *= -2.0  # layer 2 (1-based) is off
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    report = check_export(load_model(best), out, TEXT)
    assert not report.passed
    assert report.max_logit_diff > 1e-4
    assert report.first_divergent_layer[0] == "the output of layer 2"
    assert report.layer_diffs[1][1] <= 1e-4  # layer 1 still agrees
    assert "hidden states first diverge at the output of layer 2" in report.summary()
    assert report.greedy_identical < 200
    assert "first difference at character" in report.summary()


def test_the_check_tells_exact_gelu_from_the_tanh_approximation(tmp_path):
    """The tolerance is tight enough to catch a near miss in the mapping (gelu_new vs gelu)."""
    best = save_best(tmp_path, tiny_model("rotary", tie=False, bias=True))
    out = tmp_path / "hf"
    export(best, out)
    config = json.loads((out / "config.json").read_text())
    config["hidden_act"] = "gelu_new"
    (out / "config.json").write_text(json.dumps(config))
    report = check_export(load_model(best), out, TEXT)
    assert not report.passed
    assert report.first_divergent_layer[0] == "the output of layer 1"


def _half_rotary(out: Path) -> None:
    config = json.loads((out / "config.json").read_text())
    config["rope_parameters"]["partial_rotary_factor"] = config["partial_rotary_factor"] = 0.5
    (out / "config.json").write_text(json.dumps(config))


def _norm_weight_plus_one(out: Path) -> None:
    weights = load_file(out / "model.safetensors")
    weights["model.layers.0.input_layernorm.weight"] += 1.0  # as if written without the -1
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("tamper", [_half_rotary, _norm_weight_plus_one])
def test_the_check_catches_nemotrons_defaults(tmp_path, tamper):
    """Nemotron rotates half of each head by default and adds 1 to its LayerNorm weights: the
    export undoes both, and the check notices if either is left as Nemotron has it."""
    options = BLOCK_ARCHITECTURES["NemotronForCausalLM"]
    best = save_best(tmp_path, tiny_model("rotary", tie=False, bias=True, **options))
    out = tmp_path / "hf"
    export(best, out)
    assert check_export(load_model(best), out, TEXT).passed
    tamper(out)
    report = check_export(load_model(best), out, TEXT)
    assert not report.passed
    assert report.first_divergent_layer[0] == "the output of layer 1"


def test_tokenizer_round_trip_and_unknown_characters(tmp_path):
    best = save_best(tmp_path, tiny_model("learned", tie=True, bias=False))
    out = tmp_path / "hf"
    export(best, out)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    vocab = "".join(TOKENIZER.vocab)
    for text in (TEXT, vocab, vocab[::-1], "\n\n  \n", " a  b ", "<unk>"):
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == TOKENIZER.encode(text)
        assert tok.decode(ids) == text
    assert len(tok) == TOKENIZER.vocab_size
    assert "§" not in TEXT
    with pytest.raises(Exception, match="(?i)unk"):  # as in tinyllm: no silent replacement
        tok("§ is not in the vocabulary")
    # a model of a lowercased corpus: prompts are lowercased, as tinyllm's chat and server do
    lower = save_artifacts(tmp_path / "lower", tiny_model("learned", tie=True, bias=False),
                           TOKENIZER, {"lowercase": True})  # fmt: skip
    export(lower, tmp_path / "hf-lower")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf-lower", local_files_only=True)
    assert tok("KING Lear:", add_special_tokens=False).input_ids == TOKENIZER.encode("king lear:")
    card = (tmp_path / "hf-lower" / "README.md").read_text(encoding="utf-8")
    assert "the tokenizer lowercases prompts too" in card


def test_a_model_of_a_lowercased_corpus_exports_and_checks(tmp_path, capsys):
    """A vocabulary without capitals (data.lowercase=true): the card's "ROMEO:" is read as
    "romeo:" by the exported tokenizer's Lowercase normalizer, and the card's snippet runs."""
    lower = CharacterTokenizer().fit(TEXT.lower())
    assert "R" not in lower.vocab and "r" in lower.vocab
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=lower.vocab_size, context_length=32, n_layer=1, n_head=2,
                         n_embd=16, positional="learned")  # fmt: skip
    best = save_artifacts(tmp_path / "run" / "best", Transformer(config), lower,
                          {"lowercase": True})  # fmt: skip
    assert load_model(best).lowercase
    out = tmp_path / "hf"
    assert main([str(best), str(out), "--check"]) == 0, capsys.readouterr().err
    assert "round trip identical" in capsys.readouterr().out
    tokenizer_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer_json["normalizer"] == {"type": "Lowercase"}
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok("ROMEO:", add_special_tokens=False).input_ids == lower.encode("romeo:")
    card = (out / "README.md").read_text(encoding="utf-8")
    snippet = card.split("```python\n")[1].split("```")[0]
    assert 'tok("ROMEO:", return_tensors="pt").input_ids  # read as "romeo:"' in snippet
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace("PATH_TO_THIS_FOLDER", str(out)), {})  # the README's use, as is
    assert printed.getvalue().startswith("romeo:")
    # --text with capitals (the corpus before lowercasing): read lowercased, as the run read it
    text = tmp_path / "text.txt"
    text.write_text(TEXT[:400], encoding="utf-8")
    argv = [str(best), str(tmp_path / "hf2"), "--check", "--text", str(text)]
    assert main(argv) == 0, capsys.readouterr().err


def test_generation_defaults_and_model_card(tmp_path):
    metadata = {
        "val_loss": 1.25, "step": 1234, "data_source": "my-corpus.txt",
        "console": {"temperature": 0.5, "top_k": 7, "max_tokens": 77},
    }  # fmt: skip
    save_best(tmp_path / "run", tiny_model("rotary", tie=True, bias=True), metadata)
    (tmp_path / "run" / "config.yaml").write_text(
        "training:\n  optimizer: adamw\n  learning_rate: 0.003\n  batch_size: 16\n"
        "trainer:\n  precision: bf16-mixed\n"
    )
    out = tmp_path / "hf"
    export(tmp_path / "run", out)  # a run folder: its best/
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (out, out / "model.safetensors"):  # readable by others where the umask says so
        assert path.stat().st_mode & 0o077 == (0o777 if path.is_dir() else 0o666) & ~umask & 0o077
    generation = GenerationConfig.from_pretrained(out, local_files_only=True)
    # 77 new tokens would not fit the context of 64: at most half of it (prompt + new must fit)
    assert (generation.temperature, generation.top_k, generation.max_new_tokens) == (0.5, 7, 32)
    assert generation.do_sample is True
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    assert model.generate(ids).shape[1] == 6 + 32  # the README's use, with these defaults
    card = (out / "README.md").read_text()
    for fact in ("my-corpus.txt", "1.2500 nats", "1.8034 bits", "GPTNeoXForCausalLM",
                 "optimizer steps: 1234", "adamw", "bf16-mixed", "from_pretrained"):  # fmt: skip
        assert fact in card, fact


@pytest.mark.parametrize(
    "run_config",
    [
        "training: fast\n",  # a section that is not a mapping
        "- a list\n- not a mapping\n",
        "{{ not: yaml\n",
        "",
        "training: [1, 2]\ntrainer: 16\n",
        # every value of the wrong type, or out of range
        "training:\n  optimizer: [adam]\n  learning_rate: fast\n  batch_size: 7.5\n"
        "  console_temperature: .nan\n  console_top_k: -3\n  console_max_tokens: true\n"
        "trainer:\n  precision: {bits: 16}\n",
    ],
    ids=["section-text", "list", "not-yaml", "empty", "sections-wrong", "values-wrong"],
)
def test_a_damaged_run_config_only_costs_the_card_details(tmp_path, capsys, run_config):
    save_best(tmp_path / "run", tiny_model("learned", tie=False, bias=True))
    (tmp_path / "run" / "config.yaml").write_text(run_config, encoding="utf-8")
    out = tmp_path / "hf"
    assert main([str(tmp_path / "run"), str(out)]) == 0, capsys.readouterr().err
    generation = GenerationConfig.from_pretrained(out, local_files_only=True)
    # the console defaults (training/default.yaml), new tokens at most half the context of 64
    assert (generation.temperature, generation.top_k, generation.max_new_tokens) == (0.8, 0, 32)
    card = (out / "README.md").read_text(encoding="utf-8")
    for damage in ("fast", "[1, 2]", "adam']", "7.5", "'bits'"):
        assert damage not in card, damage
    if "optimizer" in run_config:
        assert "optimizer: not recorded, peak learning rate not recorded" in card
        assert "windows per step: not recorded" in card and "precision: not recorded" in card
    else:
        assert "not recorded with the model (no readable run config.yaml" in card
    if run_config == "training: fast\n":  # the check reads the run config too
        assert main([str(tmp_path / "run"), str(tmp_path / "checked"), "--check"]) == 0
        assert "text: every vocabulary character" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"qk_norm": True}, "model.qk_norm=True is exported only with norm='rmsnorm', "
         "mlp='swiglu' (Qwen3ForCausalLM); this model has norm='layernorm', mlp='gelu'"),
        ({"norm": "rmsnorm", "mlp": "relu2"}, "model.norm='rmsnorm' is exported only with "
         "mlp='swiglu' (LlamaForCausalLM, Qwen3ForCausalLM); this model has mlp='relu2'"),
        ({"norm": "rmsnorm", "mlp": "swiglu", "positional": "learned"}, "model.norm='rmsnorm' is "
         "exported only with positional='rotary'"),
        ({"mlp": "swiglu"}, "model.mlp='swiglu' is exported only with norm='rmsnorm'"),
        ({"mlp": "relu2", "positional": "sinusoidal"}, "model.mlp='relu2' is exported only with "
         "positional='rotary' (NemotronForCausalLM)"),
        ({"mlp": "relu2", "qk_norm": True}, "model.mlp='relu2' is exported only with "
         "qk_norm=False"),
        ({"norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": True}, "model.bias=True "
         "cannot be exported with model.qk_norm=True: its architecture, Qwen3ForCausalLM, has no "
         "MLP biases"),
    ],
)  # fmt: skip
def test_combinations_without_a_stock_architecture_are_refused_by_name(options, message):
    config = ModelConfig(vocab_size=5, **{"positional": "rotary", "bias": False} | options)
    with pytest.raises(ExportError, match="^" + re.escape(message)) as refused:
        refuse_unmapped(config)
    assert "\n" not in str(refused.value)  # one line


def test_a_refused_combination_stops_the_command_with_one_line(tmp_path, capsys):
    model = tiny_model("rotary", tie=False, bias=False, qk_norm=True)
    best = save_best(tmp_path / "run", model)
    _refused(capsys, [str(best), str(tmp_path / "hf")], "model.qk_norm=True is exported only")
    assert not (tmp_path / "hf").exists()


def test_an_option_without_a_stock_counterpart_is_refused_by_name():
    from dataclasses import dataclass

    @dataclass
    class FutureConfig(ModelConfig):
        parallel_residual: bool = True

    with pytest.raises(
        ExportError, match=r"model\.parallel_residual=True has no exact counterpart"
    ):
        refuse_unmapped(FutureConfig(vocab_size=5))
    bad_value = ModelConfig(vocab_size=5)
    bad_value.norm = "batchnorm"  # a value no architecture accepts
    with pytest.raises(ExportError, match=r"model\.norm='batchnorm' has no exact counterpart"):
        refuse_unmapped(bad_value)
    refuse_unmapped(ModelConfig(vocab_size=5, dropout=0.2, attn_dropout=True))  # inference: off
    refuse_unmapped(ModelConfig(vocab_size=5, zero_init=True))  # only the initial weights


def test_a_trained_run_exports_and_checks_on_its_validation_split(trained_run, tmp_path):
    """A model trained by train.py (the suite's shared tiny run), as a user exports it."""
    out = tmp_path / "hf"
    loaded, report = export(trained_run, out, check=checker(trained_run))
    assert report.passed, report.summary()
    assert report.text_source.startswith("the run's validation split")
    assert report.tokenizer_characters > 1000
    card = (out / "README.md").read_text()
    assert f"{loaded.metadata['val_loss']:.4f} nats per character" in card


# --- bad input: one line, exit 2, nothing half-written -----------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def best(tmp_path) -> Path:
    return save_best(tmp_path / "run", tiny_model("learned", tie=False, bias=True))


def _refused(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
    assert "Traceback" not in err


def test_bad_model_paths(tmp_path, capsys):
    out = tmp_path / "hf"
    _refused(capsys, [str(tmp_path / "missing"), str(out)], "does not exist")
    (tmp_path / "empty").mkdir()
    _refused(capsys, [str(tmp_path / "empty"), str(out)], "no model at")
    assert not out.exists()


def test_a_checkpoint_refused_by_the_safe_loader(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, ckpt)
    _refused(capsys, [str(ckpt), str(tmp_path / "hf")], "cannot be loaded safely")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "hf").exists()


def test_a_non_empty_out_dir_needs_force(tmp_path, best, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(capsys, [str(best), str(out)], "pass --force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main([str(best), str(out), "--force"]) == 0
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(best), str(empty)]) == 0  # an empty folder is fine without --force


def test_the_current_folder_is_refused_and_a_relative_out_dir_works(
    tmp_path, best, capsys, monkeypatch
):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for argv in ([str(best), "."], [str(best), ".", "--force"], [str(best), "..", "--force"]):
        _refused(capsys, argv, "is the current folder or holds it")
    assert list(here.iterdir()) == [] and _leftovers(tmp_path) == []
    assert main([str(best), "hf"]) == 0
    assert {p.name for p in (here / "hf").iterdir()} == EXPORTED_FILES
    assert _leftovers(here) == []


def test_force_never_replaces_the_model_being_exported(tmp_path, best, capsys):
    _refused(capsys, [str(best.parent), str(best), "--force"], "is the folder of the model being")
    _refused(capsys, [str(best), str(best.parent), "--force"], "holds the model being exported")
    assert load_model(best).model is not None


def test_an_out_dir_inside_the_models_folder_is_refused(tmp_path, best, capsys):
    """best/ is the model: an export written into it would mix with the model's own files."""
    files = sorted(best.iterdir())
    (tmp_path / "link").symlink_to(best)
    for argv in (
        [str(best), str(best / "sub")],
        [str(best.parent), str(best / "sub"), "--force"],
        [str(best), str(best / "a" / "b")],
        [str(best), str(tmp_path / "link" / "sub")],  # the same folder through a link
        [str(best), str(best)],
    ):
        _refused(capsys, argv, "is the folder of the model being exported")
    assert sorted(best.iterdir()) == files and _leftovers(best) == []
    assert main([str(best), str(best.parent / "hf")]) == 0  # beside best/ in the run: fine


def test_an_empty_text_and_unknown_characters_are_told_apart(tmp_path, best, capsys):
    text = tmp_path / "text.txt"
    argv = [str(best), str(tmp_path / "hf"), "--check", "--text", str(text)]
    text.write_text("", encoding="utf-8")
    _refused(capsys, argv, f"--text {text} is empty: pass text the model can encode")
    text.write_text("§ unknown ¤", encoding="utf-8")
    _refused(capsys, argv, "has characters outside the model's vocabulary ('¤', '§'): pass")
    assert not (tmp_path / "hf").exists()


def test_unwritable_destination(tmp_path, best, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _refused(capsys, [str(best), str(blocker / "hf")], "cannot write to")
    _refused(capsys, [str(best), str(blocker)], "is not a folder")
    if os.geteuid() != 0:  # root writes anywhere: only the case above applies to it
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        _refused(capsys, [str(best), str(locked / "hf")], "cannot write to")
        assert list(locked.iterdir()) == []


def test_check_on_a_given_text(tmp_path, best, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT[:500], encoding="utf-8")
    assert main([str(best), str(tmp_path / "hf"), "--check", "--text", str(text)]) == 0
    out = capsys.readouterr().out
    assert f"text: {text}" in out and "round trip identical on" in out
    assert "200/200 characters identical" in out and "within 0.0001" in out
    assert "as GPT2LMHeadModel to" in out
    text.write_text("§ unknown", encoding="utf-8")
    _refused(capsys, [str(best), str(tmp_path / "hf2"), "--check", "--text", str(text)], "'§'")
    assert not (tmp_path / "hf2").exists()


def test_a_failed_check_publishes_nothing(tmp_path, best):
    out = tmp_path / "hf"
    _, report = export(best, out, check=lambda loaded, folder: CheckReport(1.0, 10))
    assert not report.passed
    assert not out.exists() and _leftovers(tmp_path) == []


# --- the command, as a user runs it -------------------------------------------------------------


# `python -m tinyllm.export ARGS` where transformers and tokenizers cannot be imported
WITHOUT_EXTRA = (
    "import runpy, sys; sys.modules['transformers'] = sys.modules['tokenizers'] = None; "
    "sys.argv = ['tinyllm.export', *sys.argv[1:]]; "
    "runpy.run_module('tinyllm.export', run_name='__main__')"
)


def _run(*args: str, without_extra: bool = False) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    command = ["-c", WITHOUT_EXTRA] if without_extra else ["-m", "tinyllm.export"]
    return subprocess.run(
        [sys.executable, *command, *args], env=env,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_writing_needs_neither_transformers_nor_tokenizers(tmp_path, best):
    out = tmp_path / "exported"
    result = _run(str(best), str(out), without_extra=True)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == EXPORTED_FILES
    assert AutoModelForCausalLM.from_pretrained(out, local_files_only=True) is not None
    refused = _run(str(best), str(tmp_path / "checked"), "--check", without_extra=True)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and 'pip install -e ".[export]"' in refused.stderr
    assert not (tmp_path / "checked").exists()
