"""Fit a run into a wall-clock budget: plan the steps, decay the learning rate into it, stop."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)


class TimeBudget(L.Callback):
    """Fit the run into `seconds` of training: plan the steps, decay the LR into the budget, stop.

    After a few steps to warm up, the step time is measured; if `max_steps` (validations
    included) does not fit in what is left of the budget, the run plans the steps that do and
    the learning rate decays to its floor at the last of them (`LRPlan.move_end`). From then on
    the schedule follows the clock whenever the clock is further on than the steps, so the floor
    is reached when the budget ends even if the machine slows down, and training stops there.

    Halfway through the plan (in steps or in time), the speed is measured again over every step
    since (validations included): the first steps of a run are its slowest, so a machine that turned
    out faster than planned extends the plan once (never past `max_steps`), the decay continuing
    smoothly to the new end; a slower one is already covered by the clock.

    Reproducible: on a machine that keeps its speed the plan is a step count and the schedule a
    function of the step, so the same seed gives the same run (and always when `max_steps` fits:
    the plan is then `max_steps`). The planned count itself depends on the machine's speed.
    The budget is per invocation: a resumed run gets the budget anew for the steps it has left.
    """

    WARMUP_STEPS = 3  # not timed: the first steps pay for allocation and kernel selection
    MEASURE_STEPS = 20
    MARGIN = 0.05  # of the remaining budget, for what the estimate misses (samples, jitter)
    EXTEND_BY = 0.05  # the halfway check extends the plan only by more than this share

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._start = 0.0
        self._start_step = 0
        self._timed_from: tuple[int, float] | None = None
        self._planned_at: tuple[int, float] | None = None
        self._rechecked = False
        self._most_steps: int | None = None  # what the plan cut down: the most an extension gives

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._timed_from = self._planned_at = self._most_steps = None
        self._rechecked = False
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
        if self._planned_at is not None and follows_clock and not self._rechecked:
            planned_step, planned_time = self._planned_at
            # halfway in time or in planned steps, whichever comes first; rank zero decides, so
            # every rank re-plans at the same step (DDP)
            halfway = elapsed - planned_time >= (self.seconds - planned_time) / 2
            halfway |= step - planned_step >= (plan.end_step - planned_step) / 2
            if trainer.strategy.broadcast(halfway):
                self._rechecked = True
                self._extend(trainer, plan, step, elapsed, planned_step, planned_time)
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
        val_every = trainer.val_check_batch if isinstance(trainer.val_check_batch, int) else 0
        fits = self._steps_that_fit(trainer, elapsed, step_seconds, val_every)
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
        self._most_steps = end
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

    def _extend(self, trainer, plan, step: int, elapsed: float, since_step: int, since: float):
        """Re-plan once, halfway: more steps if the run has been faster than its plan assumed."""
        wanted = self._most_steps
        if step <= since_step or wanted is None or plan.end_step >= wanted:
            return
        step_seconds = (elapsed - since) / (step - since_step)  # validations included
        fits = self._steps_that_fit(trainer, elapsed, step_seconds, val_every=0)
        new_end = trainer.strategy.broadcast(min(wanted, step + max(0, fits)))
        if new_end - plan.end_step <= self.EXTEND_BY * (plan.end_step - since_step):
            return
        if new_end < wanted and new_end - step > 100:
            new_end -= new_end % 10
        log.info(
            "time budget %s: faster than planned (%.1f steps/s since the plan): extending to %s "
            "steps (of %s)",
            _duration(self.seconds),
            1 / step_seconds,
            f"{new_end:,}",
            f"{wanted:,}",
        )
        plan.move_end(step, new_end)
        self._planned_at = (step, elapsed)
        trainer.fit_loop.epoch_loop.max_steps = new_end

    def _steps_that_fit(self, trainer, elapsed: float, step_seconds: float, val_every: int) -> int:
        """Steps that fit in the rest of the budget, less its margin and the final validation,
        with a validation every `val_every` steps (0: `step_seconds` already includes them)."""
        # a validation costs about a third of a training step per batch (forward only)
        val_cost = 0.35 * _val_batches(trainer)
        usable = (self.seconds - elapsed) * (1 - self.MARGIN) / step_seconds - val_cost
        return int(usable / (1 + (val_cost / val_every if val_every else 0)))


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
