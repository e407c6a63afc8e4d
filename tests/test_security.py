"""Files from strangers cannot run code or steer the loaders: crafted pickles are refused by every
path that reads a .ckpt (load_model, chat.py, train.py ckpt_path= and resume=, Lightning's own
reader), JSON files are type-checked, and links out of a model folder are not followed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, run_chat, write_unsafe_checkpoint

from tinyllm.artifacts import ArtifactError, load_model, save_artifacts
from tinyllm.checkpointing import AtomicCheckpointIO, CheckpointError, verify_checkpoint
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import CharacterTokenizer
from tinyllm.training import train


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """(checkpoint, marker): a run's last.ckpt that looks like Lightning's but carries code."""
    ckpt = tmp_path / "evil_run" / "checkpoints" / "last.ckpt"
    return write_unsafe_checkpoint(ckpt, tmp_path / "pwned"), tmp_path / "pwned"


def test_the_payload_is_real(evil):
    """Control: a plain torch.load would run it, so the tests below prove something."""
    ckpt, marker = evil
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_load_model_refuses(evil):
    ckpt, marker = evil
    with pytest.raises(ArtifactError, match="cannot be loaded safely"):
        load_model(ckpt)
    assert not marker.exists()


def test_lightning_checkpoint_reader_refuses(evil):
    ckpt, marker = evil
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|pickled objects"):
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=False)  # asked for, not granted
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        verify_checkpoint(ckpt)
    assert not marker.exists()


def test_train_ckpt_path_refuses(evil, tmp_path, corpus_file):
    ckpt, marker = evil
    run = tmp_path / "run"
    cfg = compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}", f"ckpt_path={ckpt}"], run)
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely .*written by tinyllm"):
        train(cfg)
    assert not marker.exists()
    assert not run.exists()  # refused before anything was written


# `train.py resume=RUN` on it: tests/test_bad_inputs.py ("resume from an unsafe checkpoint")


def test_chat_refuses(evil):
    ckpt, marker = evil
    result = run_chat(str(ckpt), "--prompt", "a", "--max-tokens", "5", timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot be loaded safely" in result.stderr
    assert not marker.exists()


def test_checkpoint_that_is_not_lightnings_is_refused(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a Lightning training checkpoint"):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "missing.ckpt")


# --- JSON files are type-checked ------------------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    tokenizer = CharacterTokenizer().fit("abcdefg \n")
    model = Transformer(ModelConfig(vocab_size=9, context_length=8, n_layer=1, n_head=2, n_embd=8))
    console = {"max_tokens": 50, "temperature": 0.8, "top_k": 0}
    return save_artifacts(
        tmp_path / "best", model, tokenizer, {"val_loss": 1.0, "console": console}
    )


BAD_JSON = [
    ("model_config.json", {"n_embd": "8"}, "n_embd must be a"),
    ("model_config.json", {"n_layer": 1.5}, "n_layer must be a"),
    ("model_config.json", {"bias": "yes"}, "bias must be a bool"),
    ("model_config.json", {"tie_weights": 1}, "tie_weights must be a bool"),
    ("model_config.json", {"dropout": "0.1"}, "dropout must be a number"),
    ("model_config.json", {"positional": 3}, "positional must be a str"),
    ("model_config.json", {"n_head": 3}, "model.n_head=3 must divide model.n_embd=8"),
    ("model_config.json", {"data_path": "/etc/passwd"}, "unknown model config keys"),
    ("metadata.json", {"val_loss": "low"}, "val_loss must be a number"),
    ("metadata.json", {"step": True}, "step must be a"),
    ("metadata.json", {"console": "fast"}, "console must be a dict"),
    ("metadata.json", {"console": {"max_tokens": "many"}}, "console.max_tokens must be a"),
    ("metadata.json", {"console": {"max_tokens": -5}}, r"console.max_tokens must be in \[1,"),
    ("metadata.json", {"console": {"temperature": 1e9}}, r"console.temperature must be in \[0,"),
    ("metadata.json", {"console": {"top_k": -1}}, r"console.top_k must be in \[0,"),
    ("tokenizer.json", {"vocab": "abcdefg \n"}, "tokenizer.json is invalid: tokenizer state"),
    ("tokenizer.json", {"vocab": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, "single characters"),
    ("tokenizer.json", {"vocab": ["ab"] * 9}, "single characters"),
    ("tokenizer.json", {"version": "1"}, "version '1' is not supported"),
    ("tokenizer.json", {"format": None}, "not a tinyllm tokenizer state"),
]


@pytest.mark.parametrize(("name", "change", "message"), BAD_JSON)
def test_json_with_wrong_types_is_refused(saved, name, change, message):
    path = saved / name
    data = json.loads(path.read_text(encoding="utf-8")) | change
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ArtifactError, match=message) as error:
        load_model(saved)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["[1, 2]", '"text"', "{", "", "\xff\xfe"])
def test_json_that_is_not_an_object_is_refused(saved, text):
    (saved / "metadata.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ArtifactError, match="metadata.json"):
        load_model(saved)


# --- links are not followed out of a model folder ------------------------------------------


def test_links_out_of_the_model_folder_are_not_followed(saved, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text((saved / "tokenizer.json").read_text())
    (saved / "tokenizer.json").unlink()
    os.symlink(outside, saved / "tokenizer.json")
    with pytest.raises(ArtifactError, match="links outside its model folder"):
        load_model(saved)
    # a link inside the folder is fine
    (saved / "tokenizer.json").unlink()
    (saved / "tok.json").write_text(outside.read_text())
    os.symlink(saved / "tok.json", saved / "tokenizer.json")
    assert load_model(saved).tokenizer.vocab_size == 9


def test_resume_true_looks_only_under_outputs(tmp_path, monkeypatch, evil):
    """A linked-in last.ckpt (e.g. to a downloaded file) is not picked by resume=true."""
    ckpt, _ = evil
    run = tmp_path / "outputs" / "runs" / "r" / "checkpoints"
    run.mkdir(parents=True)
    os.symlink(ckpt, run / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    from tinyllm.cli import find_resumable_run

    with pytest.raises(CheckpointError, match="no run to resume"):
        find_resumable_run("outputs")


@pytest.mark.parametrize("change", [{"console": None}, {"val_loss": None, "step": None}])
def test_null_metadata_values_are_absent_values(saved, change):
    """Found by tests/test_properties.py: `"console": null` used to raise AttributeError."""
    path = saved / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | change), encoding="utf-8")
    metadata = load_model(saved).metadata
    assert metadata.get("console") is None or isinstance(metadata["console"], dict)


def test_resume_true_does_not_follow_a_linked_run_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere" / "checkpoints"
    elsewhere.mkdir(parents=True)
    (elsewhere / "last.ckpt").write_bytes(b"x")
    (tmp_path / "outputs" / "runs").mkdir(parents=True)
    os.symlink(elsewhere.parent, tmp_path / "outputs" / "runs" / "linked")
    monkeypatch.chdir(tmp_path)
    from tinyllm.cli import find_resumable_run

    with pytest.raises(CheckpointError, match="no run to resume"):
        find_resumable_run("outputs")


# --- sizes from files are checked against the weights before anything is allocated -----------

_LOAD_UNDER_LIMIT = """
import json, resource, sys
from tinyllm.artifacts import ArtifactError, load_model
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
limit = size + 2 * 2**30  # 2 GB more than the interpreter holds: no big allocation can succeed
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = []  # per path: [exit code a loading program would give, what it says]
for path in sys.argv[1:]:
    try:
        load_model(path)
        results.append([0, "loaded"])
    except ArtifactError as e:
        results.append([2, f"refused: {e}"])
    except MemoryError:
        results.append([1, "MemoryError: an allocation was attempted"])
    except Exception as e:  # a traceback a user would see
        results.append([1, f"{type(e).__name__}: {str(e)[:200]}"])
print(json.dumps(results))
"""


def load_under_limit(*paths: Path) -> list[tuple[int, str]]:
    """Load each model in one fresh process whose memory is capped: (code, what it said)."""
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_UNDER_LIMIT, *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return [tuple(r) for r in json.loads(result.stdout)]


def _lying_model(tmp_path: Path, positional: str, **lie) -> Path:
    tokenizer = CharacterTokenizer().fit("abcdefgh \n")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layer=2,
                         n_head=2, n_embd=16, positional=positional)  # fmt: skip
    best = save_artifacts(tmp_path / "best", Transformer(config), tokenizer, {})
    data = json.loads((best / "model_config.json").read_text())
    (best / "model_config.json").write_text(json.dumps(data | lie))
    return best


LIES = [
    ("learned", {"n_embd": 60000}, "token_embedding.weight is [10, 16] in the weights"),
    ("learned", {"n_embd": 20000}, "needs [10, 20000]"),
    ("rotary", {"context_length": 10**9}, "context_length=1000000000 asks for"),
    ("sinusoidal", {"n_layer": 10**12}, "the weights hold 2 layers but the config says"),
    # past what torch can describe (its size computation overflows): still one line
    ("learned", {"context_length": 2**62}, "sizes no tensor can have"),
]


@pytest.fixture(scope="module")
def lies_loaded(tmp_path_factory) -> list[tuple[int, str]]:
    """Every lying model of LIES loaded under the memory cap, in one process."""
    folder = tmp_path_factory.mktemp("lies")
    paths = [_lying_model(folder / str(i), positional, **lie)
             for i, (positional, lie, _) in enumerate(LIES)]  # fmt: skip
    return load_under_limit(*paths)


@pytest.mark.parametrize(("index", "message"), [(i, m) for i, (_, _, m) in enumerate(LIES)])
def test_oversized_config_is_refused_before_allocating(lies_loaded, index, message):
    code, said = lies_loaded[index]
    assert code == 2, said
    assert message in said


def test_oversized_checkpoint_config_is_refused(tmp_path, trained_run):
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model_config"]["n_embd"] = 60000
    crafted = tmp_path / "run" / "checkpoints" / "last.ckpt"
    crafted.parent.mkdir(parents=True)
    torch.save(checkpoint, crafted)
    ((code, said),) = load_under_limit(crafted)
    assert code == 2, said
    assert "in the weights but the config (n_embd=60000" in said


def test_chat_refuses_an_oversized_config_with_one_line(tmp_path):
    best = _lying_model(tmp_path, "learned", n_embd=60000)
    result = run_chat(str(best))
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "does not match model_config.json" in lines[0], lines
