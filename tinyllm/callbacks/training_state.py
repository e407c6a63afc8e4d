"""The random number generators travel with every checkpoint, so a resumed run draws what the
uninterrupted run would have drawn."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def _rng_state() -> dict:
    """Every RNG state as plain types, so checkpoints still load with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingStateCallback(L.Callback):
    """Save the RNG states with every checkpoint; put them back when training resumes."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("rng")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning counts the logger's step (`_batches_that_stepped`) up only after a
        # validation, and on restart adds the missing 1 only for checkpoints saved in
        # on_train_batch_end. A checkpoint saved at a validation during fit (ModelCheckpoint's
        # best and last) would resume every TensorBoard curve one step behind: store the count
        # the step will have had.
        if trainer.state.fn == "fit" and trainer.validating:
            loop = checkpoint.get("loops", {}).get("fit_loop", {})
            state = loop.get("epoch_loop.state_dict")
            if isinstance(state, dict) and "_batches_that_stepped" in state:
                state["_batches_that_stepped"] = trainer.global_step

    def on_train_start(self, trainer, pl_module) -> None:
        # restored here, not at load time: building the loaders in between draws numbers too
        if self._pending is not None:
            _set_rng_state(self._pending)
            self._pending = None
