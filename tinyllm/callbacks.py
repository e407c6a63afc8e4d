"""Callbacks Lightning does not ship: periodic text samples and best-model artifact export."""

from __future__ import annotations

import logging
import math
import time
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


def best_score(trainer: L.Trainer, monitor: str = "val/loss") -> float | None:
    """The run's best `monitor`, as Lightning's ModelCheckpoint keeps it (restored on resume);
    without one, as the best-artifacts callback saw it."""
    for callback in trainer.checkpoint_callbacks:
        score = getattr(callback, "best_model_score", None)
        if getattr(callback, "monitor", None) == monitor and score is not None:
            return float(score)
    best = next((c for c in trainer.callbacks if isinstance(c, BestArtifactsCallback)), None)
    return best.best_score if best is not None else None


class ValidateAtEnd(L.Callback):
    """Every run ends with a validation, so `best/` is chosen by a measured loss.

    Lightning validates at a batch where `trainer.should_stop` is set (as early stopping and its
    Timer do), so the step that reaches `max_steps` (or ends the last epoch) sets it. A run whose
    last step is a validation step validates once, not twice.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = trainer.fit_loop
        last_step = 0 < trainer.max_steps <= trainer.global_step
        last_epoch = (
            trainer.max_epochs is not None
            and 0 < trainer.max_epochs <= trainer.current_epoch + 1
            and loop.epoch_loop.batch_progress.is_last_batch
        )
        if last_step or last_epoch:
            trainer.should_stop = True


class TimeBudget(L.Callback):
    """Fit the run into `seconds` of training: plan the steps, decay the LR into the budget, stop.

    After a few steps to warm up, the step time is measured; if `max_steps` (validations
    included) does not fit in what is left of the budget, the run plans the steps that do and
    the learning rate decays to its floor at the last of them (`LRPlan.move_end`). From then on
    the schedule follows the clock whenever the clock is further on than the steps, so the floor
    is reached when the budget ends even if the machine slows down, and training stops there.

    Reproducible: on a machine that keeps its speed the plan is a step count and the schedule a
    function of the step, so the same seed gives the same run (and always when `max_steps` fits:
    the plan is then `max_steps`). The planned count itself depends on the machine's speed.
    The budget is per invocation: a resumed run gets the budget anew for the steps it has left.
    """

    WARMUP_STEPS = 3  # not timed: the first steps pay for allocation and kernel selection
    MEASURE_STEPS = 20
    MARGIN = 0.05  # of the remaining budget, for what the estimate misses (samples, jitter)

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._start = 0.0
        self._start_step = 0
        self._timed_from: tuple[int, float] | None = None
        self._planned_at: tuple[int, float] | None = None

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._timed_from = self._planned_at = None
        plan = getattr(pl_module, "lr_plan", None)
        if plan is None:
            return
        plan.clock_step = 0.0  # the clock of this invocation starts now
        wanted = trainer.max_steps if trainer.max_steps > 0 else None
        if pl_module.hparams.get("lr_decay_steps"):
            plan.planned_for = wanted  # a fixed horizon: the schedule never moves
        elif trainer.global_step > 0 and wanted is not None and plan.planned_for != wanted:
            plan.move_end(trainer.global_step, wanted)  # resumed and asked for other steps
            plan.planned_for = wanted
            log.info(
                "resumed at step %d with trainer.max_steps=%d: the learning rate continues from "
                "%.3g and reaches its floor at step %d",
                trainer.global_step,
                wanted,
                pl_module.hparams.learning_rate * plan.multiplier(trainer.global_step),
                wanted,
            )
        if plan.end_step > trainer.global_step and wanted is not None:
            trainer.fit_loop.epoch_loop.max_steps = min(wanted, plan.end_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.seconds:
            return
        elapsed = self._elapsed()
        step = trainer.global_step
        if self._timed_from is None and step - self._start_step >= self.WARMUP_STEPS:
            self._timed_from = (step, elapsed)
        elif self._planned_at is None and self._timed_from is not None:
            measured_steps = step - self._timed_from[0]
            measured_time = elapsed - self._timed_from[1]
            if measured_steps >= self.MEASURE_STEPS or (
                measured_steps >= 2 and measured_time >= 0.03 * self.seconds
            ):
                self._plan(trainer, pl_module, step, elapsed, measured_time / measured_steps)
        plan = getattr(pl_module, "lr_plan", None)
        follows_clock = plan is not None and not pl_module.hparams.get("lr_decay_steps")
        if self._planned_at is not None and follows_clock:
            planned_step, planned_time = self._planned_at
            share = (elapsed - planned_time) / max(1e-9, self.seconds - planned_time)
            plan.clock_step = planned_step + share * (plan.end_step - planned_step)
        out_of_time = trainer.strategy.broadcast(elapsed >= self.seconds)
        if out_of_time and not trainer.should_stop:
            log.info("time budget of %s used up at step %d: stopping", _duration(self.seconds),
                     step)  # fmt: skip
            trainer.should_stop = True

    def _plan(self, trainer, pl_module, step: int, elapsed: float, step_seconds: float) -> None:
        self._planned_at = (step, elapsed)
        plan = getattr(pl_module, "lr_plan", None)
        end = trainer.max_steps if trainer.max_steps > 0 else None
        if plan is not None:
            end = min(end or plan.end_step, plan.end_step)
        if end is None:
            return
        left = self.seconds - elapsed
        # a validation costs about a third of a training step per batch (forward only)
        val_every = trainer.val_check_batch if isinstance(trainer.val_check_batch, int) else 0
        val_cost = 0.35 * _val_batches(trainer)
        usable = left * (1 - self.MARGIN) / step_seconds - val_cost  # the final validation
        fits = int(usable / (1 + (val_cost / val_every if val_every else 0)))
        fits = trainer.strategy.broadcast(max(1, fits))
        if step + fits >= end:
            log.info(
                "time budget %s: all %s steps fit (%.1f steps/s, about %s of training)",
                _duration(self.seconds),
                f"{end:,}",
                1 / step_seconds,
                _duration(elapsed + (end - step) * step_seconds),
            )
            return
        new_end = step + fits
        if fits > 100:
            new_end -= new_end % 10  # a round number: the same plan on a machine of the same speed
        log.info(
            "time budget %s: planning %s steps (of %s) to fit it at %.1f steps/s; "
            "the learning rate reaches its floor at the last of them",
            _duration(self.seconds),
            f"{new_end:,}",
            f"{end:,}",
            1 / step_seconds,
        )
        if plan is not None and not pl_module.hparams.get("lr_decay_steps"):
            plan.move_end(step, new_end)
        trainer.fit_loop.epoch_loop.max_steps = new_end


def _val_batches(trainer: L.Trainer) -> int:
    try:
        return len(trainer.datamodule.val_dataloader())
    except Exception:  # noqa: BLE001 - no datamodule or no length: assume a small validation
        return 10


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds / 60:.1f} min"
