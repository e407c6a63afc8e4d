"""Faults a run survives: SIGINT/SIGTERM (save, say how to resume, exit non-zero), kills during
saves (atomic files), a non-finite loss, an unwritable or full output folder."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, compose_config, load_ckpt, without

from tinyllm import training
from tinyllm.artifacts import load_model, save_artifacts
from tinyllm.callbacks import NonFiniteLossError
from tinyllm.checkpointing import AtomicCheckpointIO
from tinyllm.config import ConfigError
from tinyllm.model import ModelConfig, Transformer
from tinyllm.module import LanguageModel
from tinyllm.tokenizer import CharacterTokenizer

# --- SIGINT / SIGTERM ----------------------------------------------------------------------

# Ctrl-C while the corpus is prepared (before training, where fault_guard's handlers are not
# yet installed): train.py as a user runs it, its preparation interrupted
INTERRUPTED_PREPARATION = """
import runpy, sys
from tinyllm import data
def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
data.CharDataModule.prepare = interrupted
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ctrl_c_while_the_corpus_is_prepared_is_one_line(tmp_path, corpus_file, monkeypatch,
                                                          capsys):  # fmt: skip
    command = [str(ROOT / "train.py"), *TINY_OVERRIDES, f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_PREPARATION, *command, f"data.path={corpus_file}",
         f"paths.data_dir={tmp_path}/data"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 130, output[-2000:]
    assert "Traceback" not in output and "interrupted (Ctrl-C) before training started" in output
    assert not (tmp_path / "run" / "checkpoints").exists()

    from tinyllm import data
    from tinyllm.cli import prepare_main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.CharDataModule, "prepare", interrupted)
    assert prepare_main([f"data.path={corpus_file}", f"paths.data_dir={tmp_path}/data"]) == 130
    assert capsys.readouterr().err == "interrupted: no token cache was written\n"


# A signal while the corpus is prepared: sent from inside the preparation, so it lands there;
# `dropped`: inside a destructor, where Python drops the exception the handler raises
SIGNAL_IN_PREPARATION = """
import os, runpy, signal, sys, time
from tinyllm import data
signum, dropped = int(sys.argv.pop(1)), sys.argv.pop(1) == "dropped"
real_prepare = data.CharDataModule.prepare
class SignalledOnDeletion:
    def __del__(self):
        os.kill(os.getpid(), signum)
        time.sleep(2)  # the handler runs in here
def prepare(*args, **kwargs):
    if dropped:
        SignalledOnDeletion()
    else:
        os.kill(os.getpid(), signum)
        time.sleep(30)
    return real_prepare(*args, **kwargs)
data.CharDataModule.prepare = prepare
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_training_is_one_line(tmp_path, corpus_file, signum, code):
    """Before FaultGuard's handlers (preparing the corpus): one line, 128 + the signal, nothing
    saved; SIGTERM's default would end the process without a word."""
    command = [str(ROOT / "train.py"), *TINY_OVERRIDES, f"hydra.run.dir={tmp_path}/run",
               f"data.path={corpus_file}", f"paths.data_dir={tmp_path}/data"]  # fmt: skip
    script = [sys.executable, "-c", SIGNAL_IN_PREPARATION, str(int(signum)), "raised"]
    result = subprocess.run([*script, *command], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-2000:]
    said = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"interrupted ({said}) before training started: nothing was saved" in output
    assert "Traceback" not in output
    assert not (tmp_path / "run").exists()  # the folder Hydra made for it is taken back


def test_train_py_watches_for_signals_before_torch_loads():
    """train_main's first line takes Ctrl-C and SIGTERM (tinyllm/interrupts.py); the module it
    lives in loads without torch, so the seconds of torch's import are covered too."""
    code = "import sys, tinyllm.cli; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


def test_a_signal_python_drops_before_training_stops_the_run_at_its_first_step(
    tmp_path, corpus_file
):
    """A Ctrl-C whose exception Python drops (it was raised in a destructor) is not lost:
    training takes it up at its start, and stops after its first step, saved, as it does for a
    Ctrl-C during training; Python's "Exception ignored" report is not shown."""
    run = tmp_path / "run"
    command = [str(ROOT / "train.py"), *TINY_OVERRIDES, f"hydra.run.dir={run}",
               f"data.path={corpus_file}", f"paths.data_dir={tmp_path}/data"]  # fmt: skip
    script = [sys.executable, "-c", SIGNAL_IN_PREPARATION, str(int(signal.SIGINT)), "dropped"]
    result = subprocess.run([*script, *command], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 130, output[-3000:]
    assert "Exception ignored" not in output and "Traceback" not in output
    assert "SIGINT received: saving a checkpoint after this step" in output
    assert load_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 1
    assert "training interrupted by SIGINT at step 1" in output


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_checkpoint_and_artifacts_then_exits(tmp_path, corpus_file, signum, code):
    run = tmp_path / "run"
    # no validation would run (so no checkpoint, no best/) before the signal: both come from it
    overrides = [*without(TINY_OVERRIDES, "trainer.max_steps", "training.val_interval"),
                 "trainer.max_steps=100000", "training.val_interval=100000",
                 f"data.path={corpus_file}", f"hydra.run.dir={run}"]  # fmt: skip
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "sample at step 20 " in line:  # training is under way
                proc.send_signal(signum)
                break
        output = "".join(lines) + proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, output[-3000:]
    assert "Traceback" not in output
    name = signal.Signals(signum).name
    assert f"{name} received: saving a checkpoint after this step" in output
    resume = [line for line in output.splitlines() if "resume with:" in line]
    assert len(resume) == 1 and resume[0].endswith("resume with:   python train.py resume=run")
    last = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] >= 20
    assert f"training interrupted by {name} at step {last['global_step']}" in output
    loaded = load_model(run / "best")  # the best there is: the weights at the interrupt
    assert loaded.metadata["step"] == last["global_step"]
    assert loaded.metadata["val_loss"] is not None  # chosen by a validation at the stop
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written leftovers


# A second Ctrl-C while the first one's step or validation is still running: train.py as a user
# runs it, that step (or that validation) made long enough for the second Ctrl-C to land in it
SLOW_AFTER_CTRL_C = """
import runpy, sys, time
from tinyllm.callbacks import FaultGuard
from tinyllm.module import LanguageModel
where = sys.argv.pop(1)
def slowly(original, when):
    def wrapped(self, *args, **kwargs):
        callbacks = [self] if isinstance(self, FaultGuard) else self.trainer.callbacks
        guard = next(c for c in callbacks if isinstance(c, FaultGuard))
        if when(guard):
            print("still busy after the first Ctrl-C", flush=True)
            time.sleep(120)
        return original(self, *args, **kwargs)
    return wrapped
if where == "step":
    FaultGuard.on_train_batch_end = slowly(FaultGuard.on_train_batch_end,
                                           lambda g: g.requested is not None)
else:
    LanguageModel.validation_step = slowly(LanguageModel.validation_step,
                                           lambda g: g.stopped_by is not None)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("where", ["step", "validation"])
def test_a_second_ctrl_c_stops_at_once_with_one_line_and_exit_130(tmp_path, corpus_file, where):
    """The first Ctrl-C finishes the step, validates and saves; a second one, during that step
    or that validation, stops at once: exit 130 as the first (not Lightning's 1), one line
    naming the checkpoint already on disk, no traceback."""
    run = tmp_path / "run"
    overrides = [*without(TINY_OVERRIDES, "trainer.max_steps"), "trainer.max_steps=100000",
                 f"data.path={corpus_file}", f"hydra.run.dir={run}"]  # fmt: skip
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_AFTER_CTRL_C, where, str(ROOT / "train.py"), *overrides],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "sample at step 20 " in line:  # training is under way, a checkpoint saved
                proc.send_signal(signal.SIGINT)
            if "still busy after the first Ctrl-C" in line:
                proc.send_signal(signal.SIGINT)
                break
        output = "".join(lines) + proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    last = run / "checkpoints" / "last.ckpt"
    stopped = [line for line in output.splitlines() if "stopped at once" in line]
    assert len(stopped) == 1, output[-3000:]
    assert f"the last checkpoint on disk is {last}" in stopped[0]
    assert stopped[0].endswith("resume with:   python train.py resume=run")
    assert "training interrupted by SIGINT" not in output  # nothing more was saved
    assert load_ckpt(last)["global_step"] <= 20  # from a validation before the first Ctrl-C


@pytest.mark.parametrize("where", ["the checks", "the training code's imports", "after training"])
def test_ctrl_c_while_train_py_starts_or_ends_is_one_line(where, tmp_path, corpus_file,
                                                          monkeypatch, capfd):  # fmt: skip
    """Lightning's imports alone take seconds: a Ctrl-C in them, or in the checks before
    Hydra starts, ends train.py with one line and 130, as one while preparing the corpus; one
    after training (its report) says what it interrupted, not "nothing was saved"."""
    import builtins

    from tinyllm import cli, training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "the checks":
        monkeypatch.setattr(cli, "check_output_argv", interrupted)
    elif where == "after training":
        monkeypatch.setattr(training, "report", interrupted)
    else:
        real_import = builtins.__import__

        def importing(name, *args, **kwargs):
            if name == "tinyllm.training":
                interrupted()
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", importing)
    run = tmp_path / "run"
    argv = ["train.py", *TINY_OVERRIDES, f"data.path={corpus_file}", f"hydra.run.dir={run}"]
    monkeypatch.setattr(sys, "argv", argv)
    # train_main takes the signals and Python's unraisable hook (tinyllm/interrupts.py): this
    # test process gets its own back
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.train_main()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    output = "".join(capfd.readouterr())
    assert stopped.value.code == 130, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    if where == "after training":
        assert output.count("interrupted (Ctrl-C) after training ended: what the run saved") == 1
        assert "nothing was saved" not in output
        assert (run / "checkpoints" / "last.ckpt").is_file()
    else:
        said = "interrupted (Ctrl-C) before training started: nothing was saved"
        assert output.count(said) == 1
        assert not (run / "checkpoints").exists()


# --- kills during saves --------------------------------------------------------------------


def _save_forever(out: Path, save) -> None:
    """In a forked child: save a ~20 MB checkpoint and the artifacts over and over."""
    tokenizer = CharacterTokenizer().fit("abcdefghij \n")
    config = ModelConfig(vocab_size=12, context_length=16, n_layer=3, n_head=2, n_embd=384)
    model = Transformer(config)
    for i in range(10**6):
        with torch.no_grad():
            model.token_embedding.weight.fill_(i)
        save({"state_dict": model.state_dict(), "global_step": i}, out / "last.ckpt")
        if i % 4 == 0:
            save_artifacts(out / "best", model, tokenizer, {"step": i})


def kill_during_saves(out: Path, save, rounds: int = 12) -> None:
    """Fork a saver, SIGKILL it at a random moment, check every file under its real name."""
    rng = random.Random(0)
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:  # child: no pytest, no cleanup, just save until killed
            try:
                _save_forever(out, save)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.1, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if (out / "last.ckpt").exists():
            checkpoint = load_ckpt(out / "last.ckpt")
            step = checkpoint["global_step"]
            assert checkpoint["state_dict"]["token_embedding.weight"][0, 0] == step
        if (out / "best" / "metadata.json").exists():
            loaded = load_model(out / "best")  # whole and from one model
            assert loaded.model.config.n_embd == 384


def test_kill_during_saves_leaves_only_whole_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    kill_during_saves(out, AtomicCheckpointIO().save_checkpoint)
    assert (out / "last.ckpt").exists() and (out / "best" / "metadata.json").exists()
    # leftovers of killed writes are hidden temporary files, never a .ckpt or an artifact name
    names = {"last.ckpt", "best", "model.safetensors", "model_config.json", "tokenizer.json",
             "metadata.json"}  # fmt: skip
    for path in out.rglob("*"):
        assert path.name.startswith(".") or path.name in names, path


def test_kill_during_plain_saves_is_caught(tmp_path):
    """The check above can see a torn file: plain torch.save straight to the name tears."""
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Exception):  # noqa: B017 - torn files fail in several ways (EOF, zip)
        kill_during_saves(out, torch.save)


# --- non-finite loss -----------------------------------------------------------------------


# `training.learning_rate=1e6` through train.py: tests/test_bad_inputs.py ("absurd learning rate")


def test_nan_keeps_the_best_artifacts_from_before(tmp_path, corpus_file, monkeypatch):
    real_step = LanguageModel.training_step

    def explode_at_step_15(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 15 else loss

    monkeypatch.setattr(LanguageModel, "training_step", explode_at_step_15)
    run = tmp_path / "run"
    cfg = compose_config([*without(TINY_OVERRIDES, "training.val_interval"), "logger=none",
                          "training.val_interval=5", f"data.path={corpus_file}"], run)  # fmt: skip
    with pytest.raises(NonFiniteLossError) as error:
        training.train(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("training loss became nan at step 15: lower training.learning_rate")
    best = load_model(run / "best")
    assert best.metadata["step"] == 15  # the validation at step 15 ran before step 16's loss
    assert f"(val/loss {best.metadata['val_loss']:.4f}) is kept in {run / 'best'}" in message
    assert all(torch.isfinite(p).all() for p in best.model.parameters())
    assert load_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 15


# --- unwritable or full output folder ------------------------------------------------------


def test_unwritable_output_folder_fails_before_training(tmp_path, corpus_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}"], blocker / "run")
    with pytest.raises(ConfigError, match=r"is not writable .*set hydra.run.dir"):
        training.train(cfg)


def test_full_disk_fails_before_training(tmp_path, corpus_file, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=5 * 2**20))
    run = tmp_path / "run"
    cfg = compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}"], run)
    with pytest.raises(ConfigError, match=r"only 5 MiB free at .*free some disk space"):
        training.train(cfg)
    assert list(run.iterdir()) == []  # nothing written


# the same through train.py: tests/test_bad_inputs.py ("unwritable run folder")


# --- written files honour the umask ---------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_honour_the_umask(tmp_path, umask, mode):
    tokenizer = CharacterTokenizer().fit("abc \n")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=8, n_layer=1, n_head=1,
                         n_embd=8)  # fmt: skip
    previous = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
        save_artifacts(tmp_path / "best", Transformer(config), tokenizer, {})
    finally:
        os.umask(previous)
    files = [tmp_path / "last.ckpt", *(tmp_path / "best").iterdir()]
    assert len(files) == 5
    for path in files:
        assert path.stat().st_mode & 0o777 == mode, path
