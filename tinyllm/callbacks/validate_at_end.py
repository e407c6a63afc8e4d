"""Every run ends with a validation."""

from __future__ import annotations

import lightning as L


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
