"""Checkpoints that survive kills and cannot run code, and resuming a run where it stopped.

* `AtomicCheckpointIO`: Lightning's checkpoint writer, but every `.ckpt` is written to a hidden
  temporary sibling, fsynced and renamed over the target, so a kill at any moment leaves the
  old file or the new one, never a torn one; reads always use `torch.load(weights_only=True)`.
* `ResumableDataLoader`: the training loader whose position inside an epoch (how many batches
  were handed out) travels in the checkpoint, so a resumed run continues the same epoch's
  random windows where it stopped instead of starting the epoch's draw over.
(`resume=` on the command line is turned into a run folder and its last.ckpt in tinyllm/cli.py.)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from tinyllm.config import ConfigError
from tinyllm.io import write_atomic_with

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(ConfigError):
    """A checkpoint cannot be resumed from; the message says which and what to do."""


# --- writing and reading .ckpt files --------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically (temp file + fsync + rename); read them without pickle code."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        write_atomic_with(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        # never unpickle arbitrary objects, whatever the caller asked for
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def verify_checkpoint(path: str | Path) -> Path:
    """Check that `path` is a checkpoint Lightning can resume from without running pickled code.

    Reading it with `weights_only=True` refuses any pickle that would construct arbitrary
    objects (a crafted file cannot run code); the checks after that catch files that are not
    Lightning training checkpoints before Lightning fails on them half-way through its restore.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass ckpt_path=<run>/checkpoints/last.ckpt "
            "or resume=<run folder>"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a safe checkpoint"
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True refused it: "
            f"{reason}); resume only from checkpoints written by tinyllm"
        ) from None
    missing = [k for k in ("state_dict", "global_step", "loops") if k not in checkpoint]
    if not isinstance(checkpoint, dict) or missing:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning training checkpoint (missing {missing}); "
            "resume from a run's checkpoints/last.ckpt"
        )
    return path


# --- where in the data the run was ---------------------------------------------------------


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (`state_dict`/`load_state_dict`): the epoch its
    sampler is in and how many batches of that epoch were handed to training.

    On resume the sampler is set to that epoch and the batches already trained on are drawn
    again and dropped: the sampler draws the whole epoch from its seed and epoch, so the batches
    left are exactly those the interrupted run would have seen. Dropping at the loader works for
    any sampler, also the DistributedSampler Lightning wraps ours in under DDP, and costs little
    (the loader is >1,000x faster than a training step, benchmarks/RESULTS.md).
    Lightning does not prefetch from a loader with a known length, so the count of batches
    yielded is the count of batches trained on when a checkpoint is taken after a step.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_yielded = 0
        self._resume_batches = 0

    def __iter__(self) -> Iterator:
        # made now, not at the first batch: creating it draws a seed from the global RNG, which
        # must happen before TrainingStateCallback restores the RNG, as in the original run
        batches = super().__iter__()
        for _ in range(self._resume_batches):
            next(batches, None)
        self._batches_yielded, self._resume_batches = self._resume_batches, 0
        return self._counted(batches)

    def _counted(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return {
            "epoch": int(getattr(self.sampler, "epoch", 0)),
            "batches": int(self._batches_yielded),
        }

    def load_state_dict(self, state: dict) -> None:
        batches = int(state.get("batches", 0))
        if batches >= len(self):  # the epoch was finished: the next one starts afresh
            return
        if not hasattr(self.sampler, "set_epoch"):  # a sampler without epochs: start afresh
            return
        epoch = int(state.get("epoch", 0))
        self.sampler.set_epoch(epoch)  # a DistributedSampler passes it on to ours
        self._resume_batches = batches
        log.info("resuming the data at batch %d of epoch %d", batches, epoch)


def resume_command(run_dir: str | Path) -> str:
    """The one command that continues `run_dir` (printed when a run is interrupted)."""
    run_dir = Path(run_dir).resolve()
    try:
        shown = run_dir.relative_to(Path.cwd())
    except ValueError:
        shown = run_dir
    name = Path(sys.argv[0]).name if sys.argv else ""
    if name.startswith("tinyllm-"):  # the installed command (tinyllm/cli.py)
        return f"{name} resume={shown}"
    script = name if name.endswith(".py") else "train.py"
    return f"python {script} resume={shown}"
