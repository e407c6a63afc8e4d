"""Checkpoints that survive kills and cannot run code.

* `AtomicCheckpointIO`: Lightning's checkpoint writer, but every `.ckpt` is written to a hidden
  temporary sibling, fsynced and renamed over the target, so a kill at any moment leaves the
  old file or the new one, never a torn one; reads always use `torch.load(weights_only=True)`.
(`resume=` on the command line is turned into a run folder and its last.ckpt in tinyllm/cli.py.)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tinyllm.artifacts import ArtifactError, read_checkpoint
from tinyllm.io import command_name, write_atomic_with
from tinyllm.runs import CheckpointError

log = logging.getLogger(__name__)

# --- writing and reading .ckpt files --------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically (temp file + fsync + rename); read them without pickle code."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        write_atomic_with(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        # never unpickle arbitrary objects, whatever the caller asked for
        return read_checkpoint(path, map_location or "cpu")


def verify_checkpoint(path: str | Path) -> dict:
    """Check that `path` is a checkpoint Lightning can resume from without running pickled code.

    Reading it with `weights_only=True` refuses any pickle that would construct arbitrary
    objects (a crafted file cannot run code); the checks after that catch files that are not
    Lightning training checkpoints before Lightning fails on them half-way through its restore.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder: pass a file in it, e.g. ckpt_path=<run>/checkpoints/"
            "last.ckpt, or continue its run with resume=<run folder>"
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass ckpt_path=<run>/checkpoints/last.ckpt "
            "or resume=<run folder>"
        )
    try:
        checkpoint = read_checkpoint(path)
    except ArtifactError as e:
        raise CheckpointError(str(e)) from None
    missing = [k for k in ("state_dict", "global_step", "loops") if k not in checkpoint]
    if not isinstance(checkpoint, dict) or missing:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning training checkpoint (missing {missing}); "
            "resume from a run's checkpoints/last.ckpt"
        )
    return checkpoint


# the model settings a run may change when it continues: they do not change what the weights mean
TRAINING_ONLY = ("dropout", "attn_dropout", "dropout_mask", "zero_init")


def check_continues(
    checkpoint: dict, path: str | Path, model: dict, tokenizer: dict, optimizer: str
) -> None:
    """The run about to continue from `checkpoint` builds its model (`model`, a ModelConfig's
    dict) on its vocabulary (`tokenizer`, a state dict) with its optimizer: one line if any
    differs, before Lightning fails half-way through its restore with a traceback."""
    trained = (checkpoint.get("CharDataModule") or {}).get("tokenizer")
    if isinstance(trained, dict) and trained != tokenizer:
        sizes = [f"{len(t['vocab'])} characters" if "vocab" in t else "bytes" for t in
                 (tokenizer, trained)]  # fmt: skip
        raise CheckpointError(
            f"the corpus's vocabulary ({sizes[0]}) is not the one checkpoint {path} was trained "
            f"on ({sizes[1]}): continue with the data settings the run started with, or start "
            "a new run (without resume= or ckpt_path=)"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    trained_with = hparams.get("optimizer")
    if isinstance(trained_with, str) and trained_with != optimizer:  # its state would not fit
        raise CheckpointError(
            f"training.optimizer={optimizer}, but checkpoint {path} was trained with "
            f"{trained_with}: a run keeps its optimizer when it continues; drop the override, "
            "or start a new run (without resume= or ckpt_path=)"
        )
    saved = hparams.get("model_config") or {}
    for key, value in model.items():
        if key not in TRAINING_ONLY and key in saved and saved[key] != value:
            raise CheckpointError(
                f"model.{key}={value}, but checkpoint {path} was trained with {saved[key]}: a "
                "run keeps its model when it continues; drop the override, or start a new run "
                "(without resume= or ckpt_path=)"
            )


def resume_command(run_dir: str | Path) -> str:
    """The one command that continues `run_dir` (printed when a run is interrupted)."""
    run_dir = Path(run_dir).resolve()
    try:
        shown = run_dir.relative_to(Path.cwd())
    except ValueError:
        shown = run_dir
    name = Path(sys.argv[0]).name if sys.argv else ""
    script = name if name.endswith(".py") else "train.py"
    return f"{command_name('tinyllm-train', f'python {script}')} resume={shown}"
