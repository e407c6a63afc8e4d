"""The best model so far as self-contained artifacts (safetensors + JSON) in the run's best/."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch

from tinyllm.artifacts import WEIGHTS_FILE, save_artifacts
from tinyllm.callbacks.sample_text import datamodule_tokenizer
from tinyllm.runs import is_own_checkpoint

log = logging.getLogger(__name__)


class BestArtifactsCallback(L.Callback):
    """Keep `dirpath` holding the best model so far as safetensors + JSON.

    Written whenever `monitor` improves after a validation, and at the end of training if no
    validation ever ran, so a finished run always has something to chat with.
    """

    def __init__(
        self,
        dirpath: str,
        monitor: str = "val/loss",
        console_max_tokens: int = 500,
        console_temperature: float = 0.8,
        console_top_k: int = 0,
    ):
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.console = {
            "max_tokens": console_max_tokens,
            "temperature": console_temperature,
            "top_k": console_top_k,
        }
        self.best_score: float | None = None
        self.exported = False

    def on_train_start(self, trainer, pl_module) -> None:
        # a new run from another run's checkpoint (ckpt_path=): that run's best score came with
        # the checkpoint, but not its best weights; this run's best/ is scored by its own
        # validations (as ModelCheckpoint, whose folder also changed, starts afresh)
        if trainer.ckpt_path and not is_own_checkpoint(trainer.ckpt_path, self.dirpath.parent):
            self.best_score = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        score = float(score)
        if not math.isfinite(score):
            return
        if self.best_score is None or score < self.best_score:
            self.best_score = score
            self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.exported and not (self.dirpath / WEIGHTS_FILE).exists():
            self.export(trainer, pl_module)

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.exported = True
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        metadata = {
            "val_loss": self.best_score,
            "val_bpc": self.best_score / math.log(2) if self.best_score is not None else None,
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "train_loss": float(metrics["train/loss"]) if "train/loss" in metrics else None,
            "data_source": getattr(trainer.datamodule, "source", None),
            # prompts are cleaned as the corpus was (tinyllm.generation.split_unknown)
            "lowercase": bool(getattr(trainer.datamodule, "lowercase", False)),
            "console": self.console,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # the weights validation scored (a moving average with training.ema_decay)
        model = getattr(pl_module, "evaluated_model", pl_module.model)
        model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
        with torch.no_grad():
            save_artifacts(self.dirpath, model, datamodule_tokenizer(trainer), metadata)
        log.info(
            "best model (val/loss %s, step %d) saved to %s",
            self.best_score,
            trainer.global_step,
            self.dirpath,
        )

    def state_dict(self) -> dict:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict.get("best_score")


def best_score(trainer: L.Trainer, monitor: str = "val/loss") -> float | None:
    """The run's best `monitor`, as Lightning's ModelCheckpoint keeps it (restored on resume);
    without one, as the best-artifacts callback saw it."""
    for callback in trainer.checkpoint_callbacks:
        score = getattr(callback, "best_model_score", None)
        if getattr(callback, "monitor", None) == monitor and score is not None:
            return float(score)
    best = next((c for c in trainer.callbacks if isinstance(c, BestArtifactsCallback)), None)
    return best.best_score if best is not None else None
