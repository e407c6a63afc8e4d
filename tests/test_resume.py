"""Resuming: `resume=true` / `resume=RUN` / `ckpt_path=`, after a SIGKILL, continues the run in
its own folder with its step, optimiser, schedule, callbacks, data position and RNG."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import (
    ROOT,
    TINY_OVERRIDES,
    compose_config,
    load_ckpt,
    read_events,
    run_chat,
    run_train,
    without,
)

from tinyllm.callbacks import TrainingInterrupted
from tinyllm.checkpointing import CheckpointError
from tinyllm.cli import find_resumable_run, resolve_resume, resolve_resume_argv
from tinyllm.training import train

# --- in process: an interrupted-and-resumed run is the uninterrupted run, bit for bit --------

# 6 batches per epoch, so step 10 is in the middle of the second epoch; dropout makes the
# result depend on the RNG; a fixed decay horizon keeps the schedule the same in both runs.
EXACT = [
    *without(TINY_OVERRIDES, "trainer.max_steps", "training.val_interval"),
    "training.val_interval=5",
    "data.train_windows_per_epoch=48",
    "model.dropout=0.1",
    "training.lr_decay_steps=20",
    "logger=none",
]


def _train(run_dir: Path, corpus_file: Path, *extra: str) -> float | None:
    cfg = compose_config([*EXACT, f"data.path={corpus_file}", *extra], run_dir)
    return train(cfg)


def _tensors(state) -> list:
    """Every tensor and number of an optimizer state dict, in order (any optimizer's layout)."""
    if isinstance(state, dict):
        return [x for key in sorted(state, key=str) for x in _tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [x for item in state for x in _tensors(item)]
    return [state]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, corpus_file, optimizer):
    whole, split = tmp_path / "whole", tmp_path / "split"
    chosen = f"training.optimizer={optimizer}"
    score_whole = _train(whole, corpus_file, "trainer.max_steps=20", chosen)

    _train(split, corpus_file, "trainer.max_steps=10", chosen)
    first_best = json.loads((split / "best" / "metadata.json").read_text())["val_loss"]
    last = split / "checkpoints" / "last.ckpt"
    assert load_ckpt(last)["global_step"] == 10
    score_split = _train(split, corpus_file, "trainer.max_steps=20", f"ckpt_path={last}", chosen)

    a, b = load_ckpt(whole / "checkpoints" / "last.ckpt"), load_ckpt(last)
    assert a["global_step"] == b["global_step"] == 20
    for key in a["state_dict"]:  # weights: same data, same order, same dropout masks
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # moments (Adam) or momentum buffers (Muon), steps, rates: all equal
    states_a, states_b = _tensors(a["optimizer_states"]), _tensors(b["optimizer_states"])
    assert len(states_a) == len(states_b) > 10
    for sa, sb in zip(states_a, states_b, strict=True):
        assert torch.equal(sa, sb) if isinstance(sa, torch.Tensor) else sa == sb
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # callback state (early stopping, checkpointing, best artifacts) carried on
    assert a["callbacks"].keys() == b["callbacks"].keys()
    for name, state in a["callbacks"].items():
        if "EarlyStopping" in name:
            assert state["wait_count"] == b["callbacks"][name]["wait_count"]
            assert torch.equal(state["best_score"], b["callbacks"][name]["best_score"])
        if "BestArtifactsCallback" in name:
            assert state == b["callbacks"][name]
    assert score_whole == score_split <= first_best
    meta = json.loads((split / "best" / "metadata.json").read_text())
    assert meta["val_loss"] == score_split


def test_a_new_run_from_another_run_s_checkpoint_keeps_its_own_best(tmp_path, corpus_file):
    """ckpt_path= into a new folder brings the other run's best score but not its best weights:
    best/ is this run's best by its own validations, even when none beats that score."""
    parent, child = tmp_path / "parent", tmp_path / "child"
    _train(parent, corpus_file, "trainer.max_steps=10")
    checkpoint = load_ckpt(parent / "checkpoints" / "last.ckpt")
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "BestArtifacts" in k]
    state["best_score"] = 0.01  # a parent no validation of the child beats
    torch.save(checkpoint, parent / "checkpoints" / "great.ckpt")
    score = _train(child, corpus_file, "trainer.max_steps=15",
                   f"ckpt_path={parent}/checkpoints/great.ckpt")  # fmt: skip
    meta = json.loads((child / "best" / "metadata.json").read_text())
    assert meta["step"] == 15 and meta["val_loss"] == score > 1


class SignalAt(L.Callback):
    """Sends this process SIGTERM as step `step` starts (a `kill` mid-run, in process)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_run_stopped_by_sigterm_resumes_exactly(tmp_path, corpus_file):
    """The stop validates off the interval (step 7): that validation must not move the random
    generators the checkpoint saves, or the resumed dropout masks differ from the whole run's."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    _train(whole, corpus_file, "trainer.max_steps=20")
    kill = ["+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.step=7"]
    with pytest.raises(TrainingInterrupted):
        _train(split, corpus_file, "trainer.max_steps=20", *kill)
    last = split / "checkpoints" / "last.ckpt"
    assert load_ckpt(last)["global_step"] == 8  # the step in progress finished
    _train(split, corpus_file, "trainer.max_steps=20", f"ckpt_path={last}")
    a, b = load_ckpt(whole / "checkpoints" / "last.ckpt"), load_ckpt(last)
    assert a["global_step"] == b["global_step"] == 20
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


# --- the resume= command line ------------------------------------------------------------------


def _fake_run(root: Path, name: str, overrides: list[str], age: float) -> Path:
    run = root / "outputs" / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (time.time() - age, time.time() - age))
    return run


def _run_tail(run: Path) -> list[str]:
    """What resume= ends the command line with: the run's folder, its checkpoint, the run."""
    return [f"hydra.run.dir={run}", f"ckpt_path={run}/checkpoints/last.ckpt", f"resume={run}"]


def test_resume_argv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no run to resume under outputs/"):
        resolve_resume_argv(["train.py", "resume=true"])
    old = _fake_run(tmp_path, "old", ["model=tiny"], age=100)
    saved = ["model=tiny", "trainer.max_steps=10", "data.path=a b.txt",
             f"hydra.run.dir={tmp_path}/x", "ckpt_path=x.ckpt"]  # fmt: skip
    new = _fake_run(tmp_path, "new", saved, age=0)
    assert find_resumable_run("outputs") == Path("outputs/runs/new")
    argv = resolve_resume_argv(["train.py", "trainer.max_steps=50", "resume=true"])
    rel = Path("outputs/runs/new")
    # saved overrides, then yours (which win), then the run's own folder and checkpoint
    assert argv == [
        "train.py", "model=tiny", "data.path=a b.txt", "trainer.max_steps=50", *_run_tail(rel)
    ]  # fmt: skip
    assert resolve_resume(str(old), "outputs") == (old, old / "checkpoints" / "last.ckpt")
    ckpt = old / "checkpoints" / "last.ckpt"
    assert resolve_resume(str(ckpt), "outputs") == (old, ckpt)
    assert resolve_resume_argv(["train.py", "resume=false", "a=1"]) == ["train.py", "a=1"]
    assert resolve_resume_argv(["train.py", "a=1"]) == ["train.py", "a=1"]
    with pytest.raises(CheckpointError, match="no such run folder"):
        resolve_resume(str(tmp_path / "nope"), "outputs")
    with pytest.raises(CheckpointError, match="has no checkpoints/last.ckpt"):
        resolve_resume(str(tmp_path), "outputs")
    with pytest.raises(CheckpointError, match="one run"):
        resolve_resume_argv(["train.py", "-m", "resume=true"])
    assert new.is_dir()


def test_resume_argv_keeps_deletions_once_and_the_runs_precision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _fake_run(tmp_path, "r", ["model=tiny", "~callbacks.sample_text"], age=0)
    # the precision the run trained with: `auto` would measure the machine again
    (run / "config.yaml").write_text("trainer:\n  precision: bf16-mixed\n")
    argv = resolve_resume_argv(["train.py", "~callbacks.sample_text", "resume=true"])
    rel = Path("outputs/runs/r")
    assert argv == [
        "train.py", "model=tiny", "trainer.precision=bf16-mixed", "~callbacks.sample_text",
        *_run_tail(rel),
    ]  # fmt: skip
    argv = resolve_resume_argv(["train.py", "trainer.precision=32-true", "resume=true"])
    assert [a for a in argv if "precision" in a] == ["trainer.precision=32-true"]


def test_resume_argv_keeps_the_runs_config_name_and_folder(tmp_path, monkeypatch):
    """Hydra takes its flags before the overrides; a run started with --config-name/-dir is
    composed on them again when resumed, unless they are given anew."""
    monkeypatch.chdir(tmp_path)
    run = _fake_run(tmp_path, "r", ["model=tiny"], age=0)
    (run / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  job:\n    config_name: my_train\n  runtime:\n    config_sources:\n"
        "    - {path: tinyllm.configs, schema: pkg, provider: main}\n"
        "    - {path: /somewhere/my_configs, schema: file, provider: command-line}\n"
    )
    tail = _run_tail(Path("outputs/runs/r"))
    argv = resolve_resume_argv(["train.py", "resume=true", "a=1"])
    assert argv == ["train.py", "--config-name", "my_train", "--config-dir",
                    "/somewhere/my_configs", "model=tiny", "a=1", *tail]  # fmt: skip
    argv = resolve_resume_argv(["train.py", "-cd", "mine", "resume=true", "--config-name=t"])
    assert argv == ["train.py", "-cd", "mine", "--config-name=t", "model=tiny", *tail]
    # a flag's value that reads as a key (`--cfg job -p ckpt_path` prints that value) stays its
    argv = resolve_resume_argv(["train.py", "resume=true", "--cfg", "job", "-p", "ckpt_path"])
    assert argv == ["train.py", "--config-name", "my_train", "--config-dir",
                    "/somewhere/my_configs", "--cfg", "job", "-p", "ckpt_path", "model=tiny",
                    *tail]  # fmt: skip
    assert resolve_resume_argv(["train.py", "-p", "resume=x"]) == ["train.py", "-p", "resume=x"]


# `train.py resume=true` with no run to resume: tests/test_bad_inputs.py ("resume without a run")


# --- a real run killed with SIGKILL part-way, then `python train.py resume=true` --------------


def _scalar_steps(event_file: Path, tag: str) -> list[int]:
    return [e.step for e in read_events(event_file).Scalars(tag)]


@pytest.mark.slow
def test_sigkill_then_resume_true(tmp_path, corpus_file):
    """Also: the run lives under TINYLLM_OUTPUTS; resume=true finds it there through
    paths.log_dir, and chat.py --outputs too (tinyllm/runs.py: one configured place)."""
    steps = 150
    scratch = tmp_path / "scratch"
    overrides = [*without(TINY_OVERRIDES, "trainer.max_steps"), f"trainer.max_steps={steps}",
                 f"data.path={corpus_file}"]  # fmt: skip
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TINYLLM_OUTPUTS": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            lasts = list(scratch.glob("runs/*/checkpoints/last.ckpt"))
            if lasts:
                killed_at = load_ckpt(lasts[0])["global_step"]  # atomic: never torn
                if killed_at >= 20:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run,) = (scratch / "runs").iterdir()
    assert not (tmp_path / "outputs").exists()
    assert 0 < killed_at < steps
    best_before = json.loads((run / "best" / "metadata.json").read_text())["val_loss"]
    (first_events,) = (run / "tensorboard").glob("events.out.tfevents.*")

    # resume=true finds it through paths.log_dir, with no environment variable
    result = run_train("resume=true", f"paths.log_dir={scratch}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list((scratch / "runs").iterdir()) == [run]  # its own folder
    assert not (tmp_path / "outputs").exists()
    last = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == steps
    best_after = json.loads((run / "best" / "metadata.json").read_text())
    assert best_after["val_loss"] <= best_before
    assert best_after["step"] > killed_at
    # TensorBoard: the same folder, a second event file that starts where the checkpoint was
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2 and first_events in files
    (second,) = [f for f in files if f != first_events]
    resumed_steps = _scalar_steps(second, "train/loss")
    assert resumed_steps and min(resumed_steps) >= killed_at and max(resumed_steps) >= steps - 10
    val_steps = _scalar_steps(second, "val/loss")
    assert min(val_steps) > killed_at and max(val_steps) == steps
    log = (run / "train.log").read_text()
    assert log.count("model: 1 layers") == 2  # both sessions appended to the one log
    assert "Traceback" not in log
    chat = run_chat("--outputs", str(scratch), "-p", "the", "-n", "5", cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
    assert f"model: {run / 'best'}" in chat.stderr


def test_a_quoted_run_folder_is_checked_as_hydra_reads_it(tmp_path, monkeypatch):
    """Lightning's DDP launcher starts the other ranks with `hydra.run.dir="..."`, quotes
    included: the folder checked before Hydra starts is the one Hydra will use (here, one that
    already holds a run: refused by its name, without the quotes). The check leaves no folder
    it made for its probe."""
    from tinyllm.cli import check_output_argv
    from tinyllm.runs import RunFolderError

    monkeypatch.chdir(tmp_path)
    check_output_argv(["train.py", f'hydra.run.dir="{tmp_path}/new run/inside"'])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "run one" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run one" / "checkpoints" / "last.ckpt").write_bytes(b"")
    refused = re.escape(f"{tmp_path}/run one already holds a run")
    with pytest.raises(RunFolderError, match=f"^{refused}"):
        check_output_argv(["train.py", f'hydra.run.dir="{tmp_path}/run one"'])
