"""Lightning's Rich progress bar with short metric names (loss, val_loss, tok/s), so they fit in a
terminal, redrawn at most ten times a second."""

from __future__ import annotations

import contextlib
import time

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Rich progress bar showing `loss`, `val_loss` and `tok/s` (short enough not to wrap).

    Lightning redraws the bar after every batch (metrics read, bar updated); on nanoGPT's small
    CPU recipe that was 0.2 ms of a 27.6 ms step (benchmarks/RESULTS.md), so training batches
    redraw only when `min_interval` seconds have passed, and at the last batch of an epoch or run.
    """

    SHORT_NAMES = {"train/loss": "loss", "val/loss": "val_loss", "train/tokens_per_sec": "tok/s"}

    def __init__(self, *args, min_interval: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_interval = min_interval
        self._drawn_at = float("-inf")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        # the last batch of an epoch or of the run: the bar ends showing where training ended
        last = batch_idx + 1 >= self.total_train_batches or trainer.should_stop
        last |= 0 < trainer.max_steps <= trainer.global_step
        if now - self._drawn_at < self.min_interval and not last:
            return
        self._drawn_at = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = {}
        for name, value in metrics.items():
            short = self.SHORT_NAMES.get(name, name)
            if short == "tok/s":
                with contextlib.suppress(TypeError, ValueError):
                    value = f"{float(value):,.0f}"
            shown[short] = value
        return shown
