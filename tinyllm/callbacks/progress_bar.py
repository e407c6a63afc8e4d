"""Lightning's Rich progress bar with short metric names (loss, val_loss, tok/s), so they fit in a
terminal."""

from __future__ import annotations

import contextlib

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Rich progress bar showing `loss`, `val_loss` and `tok/s` (short enough not to wrap)."""

    SHORT_NAMES = {"train/loss": "loss", "val/loss": "val_loss", "train/tokens_per_sec": "tok/s"}

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
