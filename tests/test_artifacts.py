"""Best-model artifacts: load without pickle (best/, run folder, .ckpt), generate, refuse bad
files clearly."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file

from tinyllm.artifacts import (
    ArtifactError,
    load_model,
    read_tokenizer,
    save_artifacts,
)
from tinyllm.generation import SamplingSettings, generate_text
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import CharacterTokenizer


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def no_pickle(monkeypatch):
    """Make every unpickling entry point fail, so a test proves it never needs one."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading artifacts")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_best_loads_without_pickle_and_generates(trained_run, no_pickle):
    best = trained_run / "best"
    loaded = load_model(best)
    config = json.loads((best / "model_config.json").read_text(encoding="utf-8"))
    assert loaded.model.config == ModelConfig.from_dict(config)
    assert not loaded.model.training
    assert loaded.tokenizer.vocab == read_tokenizer(best / "tokenizer.json").vocab
    assert loaded.metadata == json.loads((best / "metadata.json").read_text(encoding="utf-8"))
    assert loaded.path == best

    # the weights are exactly the tensors stored in the safetensors file
    stored = load_file(best / "model.safetensors")
    state = loaded.model.state_dict()
    assert stored.keys() == state.keys()
    assert all(torch.equal(stored[k], state[k]) for k in stored)

    settings = SamplingSettings(max_tokens=120, temperature=0.8, seed=3)
    text = generate_text(loaded.model, loaded.tokenizer, "ROMEO:\n", settings)
    assert len(text) == 120
    assert set(text) <= set(loaded.tokenizer.vocab)
    assert generate_text(loaded.model, loaded.tokenizer, "ROMEO:\n", settings) == text
    greedy = generate_text(loaded.model, loaded.tokenizer, "KING", settings, temperature=0.0)
    assert len(greedy) == 120


def test_safetensors_file_is_tensors_only(trained_run):
    path = trained_run / "best" / "model.safetensors"
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_size])
    tensors = {k for k in header if k != "__metadata__"}
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == tensors
    assert "token_embedding.weight" in tensors and "lm_head.weight" in tensors


def test_run_folder_and_checkpoints_load(trained_run):
    best = load_model(trained_run / "best")
    from_run = load_model(trained_run)
    assert from_run.path == trained_run / "best"
    assert same_weights(from_run.model, best.model)

    metadata = best.metadata
    (best_ckpt,) = (trained_run / "checkpoints").glob("best-*.ckpt")
    from_best_ckpt = load_model(best_ckpt)
    assert from_best_ckpt.metadata["step"] == metadata["step"]
    assert same_weights(from_best_ckpt.model, best.model)  # saved at the same validation

    last = load_model(trained_run / "checkpoints" / "last.ckpt")
    max_steps = OmegaConf.load(trained_run / "config.yaml").trainer.max_steps
    assert last.metadata["step"] == max_steps
    assert last.tokenizer.vocab == best.tokenizer.vocab
    assert last.model.config == best.model.config
    assert not last.lowercase and not best.lowercase
    text = generate_text(last.model, last.tokenizer, "\n", SamplingSettings(max_tokens=25, seed=0))
    assert len(text) == 25 and set(text) <= set(last.tokenizer.vocab)


def test_a_checkpoint_of_a_lowercased_corpus_says_so(tmp_path, corpus_file):
    """A .ckpt alone is prompted as its corpus was written (lowercased), as best/ is; one from
    before the checkpoint kept that takes it from its run's config.yaml."""
    from conftest import TINY_OVERRIDES, compose_config

    from tinyllm.training import train

    run = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, f"data.path={corpus_file}", "data.lowercase=true",
                 "trainer.max_steps=2"]  # fmt: skip
    train(compose_config(overrides, run))
    last = run / "checkpoints" / "last.ckpt"
    assert load_model(last).lowercase
    older = torch.load(last, weights_only=True)
    del older["CharDataModule"]["lowercase"]
    torch.save(older, run / "checkpoints" / "older.ckpt")
    assert load_model(run / "checkpoints" / "older.ckpt").lowercase
    (run / "config.yaml").unlink()
    assert not load_model(run / "checkpoints" / "older.ckpt").lowercase
    # eval.py of the checkpoint on its own reads a text with capitals as its corpus was read
    from tinyllm.cli import eval_main

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(last, alone / "model.ckpt")
    assert eval_main([str(alone / "model.ckpt"), f"data.path={corpus_file}", "--json"]) == 0


def test_a_checkpoint_whose_tokenizer_is_not_the_model_s_is_refused(tmp_path, trained_run):
    """Ids the tokenizer cannot decode would fail in the middle of a reply."""
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    tokenizer = checkpoint["CharDataModule"]["tokenizer"]
    tokenizer["vocab"] = tokenizer["vocab"][:-1]
    torch.save(checkpoint, tmp_path / "short.ckpt")
    with pytest.raises(ArtifactError, match="characters but the model expects"):
        load_model(tmp_path / "short.ckpt")


def test_latest_run_under_outputs(tmp_path, trained_run, monkeypatch):
    shutil.copytree(trained_run / "best", tmp_path / "outputs" / "runs" / "r1" / "best")
    monkeypatch.chdir(tmp_path)
    loaded = load_model()
    assert loaded.path == Path("outputs/runs/r1/best")
    assert same_weights(loaded.model, load_model(trained_run).model)

    # a newer run whose best/ is being written (its weights first, metadata.json last): not yet
    partial = tmp_path / "outputs" / "runs" / "r2" / "best"
    partial.mkdir(parents=True)
    shutil.copy(trained_run / "best" / "model.safetensors", partial)
    assert load_model().path == Path("outputs/runs/r1/best")

    monkeypatch.chdir(tmp_path / "outputs")  # no outputs/ below here
    with pytest.raises(ArtifactError, match="run `python train.py` first"):
        load_model()


@pytest.mark.parametrize("config", [{}, {"tie_weights": True, "positional": "sinusoidal"}])
def test_save_and_load_round_trip(tmp_path, config):
    tokenizer = CharacterTokenizer().fit("abcdefg \n")
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=9, context_length=8, n_layer=1, n_head=2, n_embd=8, **config)
    )
    save_artifacts(tmp_path / "best", model, tokenizer, {"val_loss": 1.5, "step": 7})
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [
        "metadata.json", "model.safetensors", "model_config.json", "tokenizer.json",
    ]  # fmt: skip
    loaded = load_model(tmp_path / "best")
    assert same_weights(loaded.model, model)
    assert loaded.metadata["val_loss"] == 1.5 and loaded.metadata["step"] == 7
    assert loaded.metadata["format"] == "tinyllm.artifacts" and loaded.metadata["version"] == 1
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(loaded.model(ids), model.eval()(ids), rtol=0, atol=0)
    if config.get("tie_weights"):
        assert loaded.model.lm_head.weight is loaded.model.token_embedding.weight


@pytest.fixture
def saved(tmp_path) -> Path:
    tokenizer = CharacterTokenizer().fit("abcdefg \n")
    model = Transformer(ModelConfig(vocab_size=9, context_length=8, n_layer=1, n_head=2, n_embd=8))
    return save_artifacts(tmp_path / "best", model, tokenizer, {})


def test_missing_paths_are_explained(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no model at"):
        load_model(tmp_path / "empty")


def test_mismatched_tokenizer_is_refused(saved):
    CharacterTokenizer().fit("xyz").save_state(saved / "tokenizer.json")
    with pytest.raises(ArtifactError, match="3 characters but the model expects 9"):
        load_model(saved)


def test_damaged_weights_are_refused(saved):
    (saved / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ArtifactError, match="does not match model_config.json or is damaged"):
        load_model(saved)


def test_non_finite_weights_are_refused(saved):
    """A damaged file whose header is intact: NaN weights would give blank text and NaN losses."""
    loaded = load_model(saved)
    with torch.no_grad():
        loaded.model.blocks[0].attn.proj.weight[0, 0] = float("nan")
    save_artifacts(saved, loaded.model, loaded.tokenizer, {})
    with pytest.raises(ArtifactError, match=r"weight blocks\.0\.attn\.proj\.weight holds NaN"):
        load_model(saved)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_a_file_that_is_no_checkpoint_is_said_so(tmp_path, content):
    (tmp_path / "x.ckpt").write_bytes(content)
    with pytest.raises(ArtifactError, match="not a file torch.save wrote, or cut short"):
        load_model(tmp_path / "x.ckpt")


def test_missing_file_is_named(saved):
    (saved / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json is missing"):
        load_model(saved)


class _Payload:
    """Unpickling this would create a file: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_in_a_checkpoint_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    with pytest.raises(ArtifactError, match="cannot be loaded safely") as refused:
        load_model(path)
    assert not marker.exists()
    # torch's own text goes on to advise loading it with weights_only=False: not quoted
    assert "pickled objects" in str(refused.value) and "False" not in str(refused.value)
