"""Faults a training run must survive: Ctrl-C / SIGTERM, and a loss that stops being a number.

`FaultGuard` is a Lightning callback that train.py always adds:

* SIGINT (Ctrl-C) or SIGTERM during training: the step in progress finishes, the run validates
  (as every run does at its end), `<run>/checkpoints/last.ckpt` is saved (atomically), the best
  artifacts are written if no validation has written them yet, one line tells how to resume,
  and `TrainingInterrupted` ends the run (train.py exits 130 or 143, without a traceback).
  A second Ctrl-C (during that step or that validation) stops at once with `StoppedAtOnce`
  (train.py exits 130, one line naming the last checkpoint already on disk).
* A NaN or infinite training loss (checked before it is back-propagated, so the weights never
  take the bad step) raises `NonFiniteLossError`: nothing more is saved, so the best artifacts
  and checkpoints from before stay as they were. (A non-finite validation loss stops the run
  through EarlyStopping's `check_finite`.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from pathlib import Path

import lightning as L
import torch

from tinyllm.artifacts import WEIGHTS_FILE
from tinyllm.callbacks.best_artifacts import BestArtifactsCallback, best_score
from tinyllm.checkpointing import resume_command
from tinyllm.interrupts import EXIT_CODES, training_starts
from tinyllm.runs import CHECKPOINT_DIR, LAST_CHECKPOINT

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving; `exit_code` is the conventional 128 + signal."""

    def __init__(
        self, signum: int, step: int, checkpoint: Path | None, command: str, best: float | None
    ):
        self.signum = signum
        self.best_score = best  # the run's best val/loss so far (a sweep's summary shows it)
        self.exit_code = EXIT_CODES.get(signum, 1)
        name = signal.Signals(signum).name
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"training interrupted by {name} at step {step}; {saved}")
        self.command = command


class StoppedAtOnce(BaseException):
    """A second Ctrl-C: training stopped without saving more; train.py exits 130. A BaseException,
    as KeyboardInterrupt, so no `except Exception` on its way swallows it; not a
    KeyboardInterrupt, which Lightning (2.6) turns into `sys.exit(1)`."""

    exit_code = 130


class NonFiniteLossError(Exception):
    """The loss became NaN or infinite; the message says what to change."""


class FaultGuard(L.Callback):
    def __init__(self, run_dir: str | Path, checkpoint_dir: str | Path | None = None):
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.requested: int | None = None
        self.stopped_by: int | None = None  # the signal that stopped training
        self._saved_since_stop = False
        self._previous: dict[int, object] = {}

    # --- signals ------------------------------------------------------------------------------

    def _handle(self, signum, frame) -> None:
        stopping = self.requested is not None or self.stopped_by is not None
        if stopping and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise StoppedAtOnce("stopped at once (Ctrl-C twice)")
        self.requested = signum
        log.warning(
            "%s received: saving a checkpoint after this step and a validation "
            "(Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning registered its own SIGTERM handler in Trainer._run: ours replaces it.
        # Lightning's (2.6) stops after the current batch by raising SIGTERMException, without
        # validating or saving; ours also ends the run with a validation, a checkpoint and the
        # command that resumes. Lightning restores the original handlers when it tears down.
        self.requested = self.stopped_by = None
        dropped = training_starts()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                return
        if dropped is not None:  # a signal before training that Python dropped (interrupts.py)
            self._handle(dropped, None)

    def _restore_signals(self) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
        self._previous.clear()

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_signals()
        if self.stopped_by is None:
            return
        if not self._saved_since_stop:  # no validation ran (or no checkpoint callback saved)
            trainer.save_checkpoint(self._last_path(trainer))
        for callback in trainer.callbacks:
            # the best model so far is on disk already if a validation ran; if none did, the
            # current weights are the best there is
            if (
                isinstance(callback, BestArtifactsCallback)
                and not callback.exported
                and not (callback.dirpath / WEIGHTS_FILE).exists()
            ):
                callback.export(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.stopped_by is not None:
            self._saved_since_stop = True

    def raise_if_interrupted(self, trainer) -> None:
        """After `fit`: a signal stopped the run (validated and saved): end it with that signal."""
        if self.stopped_by is not None:
            command = resume_command(self.run_dir)
            last = self._last_path(trainer)
            raise TrainingInterrupted(
                self.stopped_by, trainer.global_step, last, command, best_score(trainer)
            )

    def _last_path(self, trainer) -> Path:
        return (
            self._last_checkpoint_path(trainer) or self.run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_signals()
        if not isinstance(exception, (StoppedAtOnce, KeyboardInterrupt)):
            return  # also InterruptedBeforeTraining (interrupts.py): not a KeyboardInterrupt
        last = self._last_checkpoint_path(trainer)
        kept = "no checkpoint was saved"
        if last is not None and last.is_file():
            kept = f"the last checkpoint on disk is {last}; resume with:   "
            kept += resume_command(self.run_dir)
        if isinstance(exception, StoppedAtOnce):  # the one line train.py prints
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # as Lightning: a third Ctrl-C must not
            exception.args = (f"stopped at once (Ctrl-C twice): {kept}",)  # break the teardown
        elif trainer.is_global_zero:  # Ctrl-C before our handlers (Lightning exits 1)
            log.error("stopped at once: %s", kept)

    def _last_checkpoint_path(self, trainer) -> Path | None:
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir / LAST_CHECKPOINT
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                return Path(callback.dirpath) / LAST_CHECKPOINT
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        requested = self.requested is not None
        if trainer.world_size > 1:  # a signal to one rank stops all of them, at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        # Lightning validates at a step where should_stop is set; ModelCheckpoint then saves
        self.stopped_by, self.requested = self.requested or signal.SIGTERM, None
        self._saved_since_stop = False
        trainer.should_stop = True

    # --- non-finite loss ----------------------------------------------------------------------

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        value = loss.item()  # one op a step (a scalar: the batch's mean)
        if not math.isfinite(value):
            self._stop(trainer, pl_module, f"training loss became {value} at step "
                       f"{trainer.global_step}")  # fmt: skip

    def _stop(self, trainer, pl_module, what: str) -> None:
        rate = pl_module.hparams.get("learning_rate", "?")
        best = next((c for c in trainer.callbacks if isinstance(c, BestArtifactsCallback)), None)
        kept = ""
        if best is not None and best.best_score is not None:
            score = f"val/loss {best.best_score:.4f}"
            kept = f"; the best model so far ({score}) is kept in {best.dirpath}"
        raise NonFiniteLossError(
            f"{what}: lower training.learning_rate (now {rate}) or raise training.warmup_steps"
            f"{kept}"
        )
