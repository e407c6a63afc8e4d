"""Callbacks Lightning does not ship: periodic text samples and best-model artifact export."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from tinyllm.artifacts import save_artifacts
from tinyllm.generation import SamplingSettings, generate_text

log = logging.getLogger(__name__)


def _tokenizer(trainer: L.Trainer):
    tokenizer = getattr(trainer.datamodule, "tokenizer", None)
    if tokenizer is None:
        raise RuntimeError("this callback needs a datamodule with a fitted `tokenizer`")
    return tokenizer


class SampleTextCallback(L.Callback):
    """Every `every_n_steps` optimizer steps, continue `prompt` and log the text.

    The text goes to the Python log and to TensorBoard's Text tab (tag `samples`), so the
    progress of the model can be read, not only plotted.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int = 0,
        seed: int = 0,
    ):
        if every_n_steps < 1:
            raise ValueError(f"sample frequency must be >= 1 steps, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.prompt = prompt
        self.settings = SamplingSettings(
            max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed
        )
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        if trainer.is_global_zero:
            self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        tokenizer = _tokenizer(trainer)
        unknown = set(tokenizer.unknown_characters(self.prompt))
        prompt = "".join(c for c in self.prompt if c not in unknown) or tokenizer.vocab[0]
        text = generate_text(pl_module.model, tokenizer, prompt, self.settings)
        step = trainer.global_step
        settings = self.settings
        log.info(
            "sample at step %d (temperature %s, top-k %s):\n%s%s",
            step,
            settings.temperature,
            settings.top_k or "off",
            prompt,
            text,
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Markdown: indent to keep the line breaks of the sample as they are
                body = "\n".join("    " + line for line in (prompt + text).splitlines())
                header = (
                    f"step {step} · temperature {settings.temperature} · "
                    f"top-k {settings.top_k or 'off'} · {settings.max_tokens} characters"
                )
                logger.experiment.add_text("samples", f"{header}\n\n{body}", global_step=step)
        return text


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
        if not self.exported and not (self.dirpath / "model.safetensors").exists():
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
            "console": self.console,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        model = getattr(pl_module.model, "_orig_mod", pl_module.model)  # unwrap torch.compile
        with torch.no_grad():
            save_artifacts(self.dirpath, model, _tokenizer(trainer), metadata)
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
