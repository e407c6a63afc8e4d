"""train.py end to end: the run folder, its logs and TensorBoard events, resuming and seed
reproducibility."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, compose_config, read_events, without
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tinyllm.artifacts import load_model, read_tokenizer
from tinyllm.module import LRPlan
from tinyllm.training import train

BEST_CKPT = re.compile(r"best-step(\d{6})-val(\d+\.\d{4})\.ckpt")


def run_config(run_dir: Path):
    return OmegaConf.load(run_dir / "config.yaml")


def best_checkpoint(run_dir: Path) -> Path:
    (path,) = [p for p in (run_dir / "checkpoints").iterdir() if BEST_CKPT.fullmatch(p.name)]
    return path


def test_run_folder_holds_every_output(trained_run, corpus_file):
    for name in ("config.yaml", "train.log", "tokenizer.json", "checkpoints/last.ckpt",
                 "best/model.safetensors", "best/model_config.json", "best/tokenizer.json",
                 "best/metadata.json"):  # fmt: skip
        assert (trained_run / name).is_file(), name
    assert best_checkpoint(trained_run).is_file()
    assert len(list((trained_run / "tensorboard").glob("events.out.tfevents.*"))) == 1

    cfg = run_config(trained_run)  # saved resolved: the values this run really used
    assert cfg.paths.output_dir == str(trained_run)
    assert cfg.data.path == str(corpus_file)
    assert cfg.training.max_context == cfg.model.context_length == 32
    assert cfg.trainer.max_steps == 30
    assert "${" not in (trained_run / "config.yaml").read_text()

    text = corpus_file.read_text(encoding="utf-8")
    tokenizer = read_tokenizer(trained_run / "tokenizer.json")
    assert tokenizer.vocab == sorted(set(text))
    saved = (trained_run / "tokenizer.json").read_text(encoding="utf-8")
    assert saved == (trained_run / "best" / "tokenizer.json").read_text(encoding="utf-8")


def test_train_log_has_the_run(trained_run, corpus_file):
    log = (trained_run / "train.log").read_text(encoding="utf-8")
    lines = log.splitlines()
    assert len(lines) >= 10
    assert re.search(rf"\[tinyllm\.data\]\[INFO\] - corpus {re.escape(str(corpus_file))}: ", log)
    cfg = run_config(trained_run)
    m = cfg.model
    shape = f"{m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, context {m.context_length}"
    assert f"[tinyllm.training][INFO] - model: {shape}, " in log
    steps = cfg.trainer.max_steps
    assert f"`Trainer.fit` stopped: `max_steps={steps}` reached." in log  # Lightning's records
    for step in range(cfg.training.sample_frequency, steps + 1, cfg.training.sample_frequency):
        assert f"sample at step {step} " in log
    assert f"chat with it:   python chat.py {trained_run / 'best'}" in log
    assert f"watch curves:   tensorboard --logdir {trained_run}" in log
    assert "best val/loss " in log
    assert "Traceback" not in log and "[ERROR]" not in log


def test_metadata_agrees_with_checkpoint_and_events(trained_run):
    metadata = json.loads((trained_run / "best" / "metadata.json").read_text(encoding="utf-8"))
    val_loss = metadata["val_loss"]
    assert isinstance(val_loss, float) and math.isfinite(val_loss)
    assert metadata["val_bpc"] == pytest.approx(val_loss / math.log(2))
    assert isinstance(metadata["step"], int) and metadata["step"] > 0

    step, loss = BEST_CKPT.fullmatch(best_checkpoint(trained_run).name).groups()
    assert int(step) == metadata["step"]  # both written at the same (best) validation
    assert loss == f"{val_loss:.4f}"

    events = read_events(trained_run / "tensorboard")
    val_losses = [e.value for e in events.Scalars("val/loss")]
    assert val_loss == pytest.approx(min(val_losses), rel=1e-6)

    training = run_config(trained_run).training
    assert metadata["console"] == {
        "max_tokens": training.console_max_tokens,
        "temperature": training.console_temperature,
        "top_k": training.console_top_k,
    }
    assert metadata["data_source"] == run_config(trained_run).data.path


def test_tensorboard_events(trained_run):
    events = read_events(trained_run / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/bpc", "lr", "train/tokens_per_sec"} <= scalars
    cfg = run_config(trained_run)

    val = {e.step: e.value for e in events.Scalars("val/loss")}
    bpc = {e.step: e.value for e in events.Scalars("val/bpc")}
    assert len(val) == cfg.trainer.max_steps // cfg.training.val_interval
    assert bpc.keys() == val.keys()
    for step in val:
        assert bpc[step] == pytest.approx(val[step] / math.log(2), rel=1e-5)

    train_loss = [e.value for e in events.Scalars("train/loss")]
    assert len(train_loss) >= 2 and all(math.isfinite(v) for v in train_loss)
    assert train_loss[-1] < train_loss[0]
    assert all(e.value > 0 for e in events.Scalars("train/tokens_per_sec"))

    t = cfg.training  # the logged rate follows warmup + cosine over trainer.max_steps
    for event in events.Scalars("lr"):
        plan = LRPlan(t.warmup_steps, cfg.trainer.max_steps, t.min_lr_ratio)
        expected = t.learning_rate * plan.multiplier(event.step)
        assert event.value == pytest.approx(expected, rel=1e-5)


def test_tensorboard_text_samples(trained_run):
    events = read_events(trained_run / "tensorboard")
    assert "samples/text_summary" in events.Tags()["tensors"]
    samples = events.Tensors("samples/text_summary")
    cfg = run_config(trained_run)
    every = cfg.training.sample_frequency
    assert [s.step for s in samples] == list(range(every, cfg.trainer.max_steps + 1, every))
    vocab = set(read_tokenizer(trained_run / "tokenizer.json").vocab)
    log = (trained_run / "train.log").read_text(encoding="utf-8")
    for sample in samples:
        text = sample.tensor_proto.string_val[0].decode("utf-8")
        header, body = text.split("\n\n", 1)
        assert header.startswith(f"step {sample.step} · temperature {cfg.training.temperature}")
        lines = [line.removeprefix("    ") for line in body.split("\n")]
        generated = "\n".join(lines)
        assert set(generated) <= vocab
        assert len(generated) >= cfg.training.sample_tokens // 2
        for line in lines:  # the same sample went to the Python log
            assert line in log


# `train.py -m` (one folder per job, each with its config, artifacts, log and events):
# tests/test_sweeps.py::test_grid_sweep_writes_a_summary_best_first; a missing corpus through
# train.py: tests/test_bad_inputs.py ("missing corpus")


# --- in process: the same `train` that train.py calls, on the composed config --------------


def tiny_config(run_dir: Path, corpus_file: Path, *extra: str):
    overrides = without(TINY_OVERRIDES, "trainer.max_steps")
    if "callbacks=none" in extra:
        overrides = without(overrides, "callbacks.progress_bar")
    return compose_config(
        [*overrides, "trainer.max_steps=20", f"data.path={corpus_file}", *extra], run_dir
    )


def test_same_seed_same_model(tmp_path, corpus_file):
    scores, weights = [], []
    for name, seed in (("a", 1337), ("b", 1337), ("c", 7)):
        cfg = tiny_config(tmp_path / name, corpus_file, "logger=none", f"seed={seed}")
        scores.append(train(cfg))
        weights.append(load_file(tmp_path / name / "best" / "model.safetensors"))
    assert scores[0] == scores[1]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    assert scores[2] != scores[0]
    assert any(not (weights[0][k] == weights[2][k]).all() for k in weights[0])
    metadata = json.loads((tmp_path / "a" / "best" / "metadata.json").read_text())
    assert metadata["val_loss"] == scores[0]


def test_runs_without_callbacks(tmp_path, corpus_file):
    cfg = tiny_config(tmp_path / "run", corpus_file, "callbacks=none", "logger=none")
    assert train(cfg) is None
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert not (tmp_path / "run" / "best").exists()


def test_resume_from_last_checkpoint(tmp_path, corpus_file, trained_run):
    run_dir = tmp_path / "resumed"
    overrides = without(TINY_OVERRIDES, "trainer.max_steps")
    cfg = compose_config(
        [*overrides, "trainer.max_steps=40", f"data.path={corpus_file}", "logger=none",
         f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"],
        run_dir,
    )  # fmt: skip
    train(cfg)
    resumed = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert resumed.metadata["step"] == 40  # continued from step 30, not from scratch
    assert resumed.tokenizer.vocab == load_model(trained_run).tokenizer.vocab
