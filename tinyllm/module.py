"""The LightningModule: wires the plain transformer to loss, optimiser, schedule and metrics."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tinyllm.config import LR_SCHEDULES, OPTIMIZER_IMPLS, OPTIMIZERS
from tinyllm.model import ModelConfig, Transformer
from tinyllm.optimizers import build_optimizer, set_muon_momentum

log = logging.getLogger(__name__)

MUON_MOMENTUM_START = 0.85  # where `muon_momentum_warmup` starts


@dataclass
class LRPlan:
    """Where the learning rate goes: linear warmup, then a decay to the floor at `end_step`:
    cosine, or (`cooldown` set: warmup-stable-decay) flat at the peak and then linear over the
    last `cooldown` share of the decay span.

    Plain numbers, saved in checkpoints. The end can move while training (a time budget that
    fits fewer steps than asked for; a resumed run asked to train longer): `move_end` then
    restarts the decay from the rate in force at that step, so the curve never jumps.
    `clock_step` is the step that the elapsed share of a time budget stands for: the decay
    follows whichever of it and the real step is further on, so the floor is reached when the
    budget runs out even if the machine slows down (tinyllm/callbacks/time_budget.py).
    """

    warmup_steps: int
    end_step: int
    min_lr_ratio: float
    # the decay starts at `anchor_step` with `anchor_value` (None: at the end of warmup, at 1)
    anchor_step: int | None = None
    anchor_value: float = 1.0
    clock_step: float = 0.0
    # the trainer's max_steps when the plan was made; a resumed run asking for other steps re-plans
    planned_for: int | None = None
    cooldown: float | None = None  # None: cosine decay

    def multiplier(self, step: int) -> float:
        if self.anchor_step is None:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            start, value = self.warmup_steps, 1.0
        else:
            start, value = self.anchor_step, self.anchor_value
        position = max(step, self.clock_step)
        if position >= self.end_step:
            return self.min_lr_ratio
        progress = max(0.0, position - start) / max(1, self.end_step - start)
        if self.cooldown is None:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # 1 while stable, then down in a straight line to 0 at the end
            shape = min(1.0, (1.0 - progress) / self.cooldown)
        return self.min_lr_ratio + (value - self.min_lr_ratio) * shape

    def move_end(self, step: int, end_step: int) -> None:
        """Reach the floor at `end_step` instead, continuing smoothly from the rate at `step`."""
        if self.anchor_step is not None or step >= self.warmup_steps:
            self.anchor_value, self.anchor_step = self.multiplier(step), step
            if self.cooldown is not None and self.anchor_value < 1.0:
                self.cooldown = 1.0  # moved while cooling down: straight on down to the floor
        elif end_step < 2 * self.warmup_steps:  # a run shorter than its warmup: warm up in half
            self.warmup_steps = max(step + 1, end_step // 2)
        self.end_step = end_step
        self.clock_step = 0.0


def _is_compile_failure(error: Exception) -> bool:
    """An error of torch's compiler stack (dynamo, inductor and its C++ build), not the model's."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))


class LanguageModel(L.LightningModule):
    LOSS_REFRESH_SECONDS = 0.25

    def __init__(
        self,
        model_config: dict,
        optimizer: str = "adam",
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        optimizer_impl: str = "auto",
        compile: bool = False,
        muon_lr_scale: float = 1.0,
        muon_momentum: float = 0.95,
        muon_ns_steps: int = 5,
        lr_schedule: str = "cosine",
        lr_cooldown: float = 0.4,
        muon_momentum_warmup: int = 0,
        ema_decay: float = 0.0,
    ):
        super().__init__()
        choices = (("optimizer", optimizer, OPTIMIZERS), ("lr_schedule", lr_schedule, LR_SCHEDULES),
                   ("optimizer_impl", optimizer_impl, OPTIMIZER_IMPLS))  # fmt: skip
        for key, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"training.{key} must be one of {allowed}, got {value!r}")
        if not isinstance(compile, bool):  # `model.compile=auto` is resolved before this
            raise ValueError(f"compile must be true or false here, got {compile!r}")
        # plain dicts/lists only: checkpoints must load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "model_config": dict(model_config),
                "optimizer": optimizer,
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "warmup_steps": warmup_steps,
                "lr_decay_steps": lr_decay_steps,
                "min_lr_ratio": min_lr_ratio,
                "optimizer_impl": optimizer_impl,
                "compile": compile,
                "muon_lr_scale": muon_lr_scale,
                "muon_momentum": muon_momentum,
                "muon_ns_steps": muon_ns_steps,
                "lr_schedule": lr_schedule,
                "lr_cooldown": lr_cooldown,
                "muon_momentum_warmup": muon_momentum_warmup,
                "ema_decay": ema_decay,
            }
        )
        self.config = ModelConfig.from_dict(dict(model_config))
        self.model = Transformer(self.config)
        # `model.compile=true`: the training and validation forward pass runs through
        # torch.compile. The compiled function is kept out of the module tree, so checkpoints and
        # artifacts hold the plain Transformer's keys and generation (KV cache) stays eager.
        self._compiled_forward = torch.compile(self.model.forward) if compile else None
        # `training.ema_decay`: validation scores, and best/ keeps, an exponential moving average
        # of the weights (torch's AveragedModel), updated after every training batch
        self.ema: AveragedModel | None = None
        if ema_decay:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
            self.ema.requires_grad_(False)
        self._batch_started: float | None = None
        self._batch_seconds: float | None = None  # the last batch's, to its optimizer step
        self._loss_logged_at = float("-inf")
        # the learning-rate plan: made in configure_optimizers, or restored from a checkpoint
        self.lr_plan: LRPlan | None = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    @property
    def evaluated_model(self) -> Transformer:
        """The weights validation scores and best/ keeps: the moving average, if there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], averaged: bool = False):
        inputs, targets = batch
        if averaged and self.ema is not None:
            logits = self.evaluated_model(inputs)
        else:
            logits = self._compiled(inputs) if self._compiled_forward else self.model(inputs)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def _compiled(self, inputs: torch.Tensor) -> torch.Tensor:
        """The compiled forward; if torch cannot compile on this machine (no working compiler,
        an unsupported platform), one warning and the run goes on eagerly."""
        try:
            return self._compiled_forward(inputs)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the eager model still works
            if not _is_compile_failure(e):
                raise
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.warning("torch.compile failed (%s): training without it", first_line[:300])
            self._compiled_forward = None
            return self.model(inputs)

    def _writes_logs(self, stepped: bool = False) -> bool:
        """Whether Lightning writes this training step's logs (every `log_every_n_steps`).

        It writes step n when n + 1 is a multiple of `log_every_n_steps`; `stepped`: asked after
        the optimizer step, when `global_step` already counts this one. The metrics only charts
        read are logged just then: each `self.log` costs ~0.5 ms, a tenth of Lightning's whole
        overhead on nanoGPT's small CPU recipe (benchmarks/overhead.py).
        """
        return (
            self.trainer.global_step + (0 if stepped else 1)
        ) % self.trainer.log_every_n_steps == 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        # the loss goes to the charts on every logging step and to the progress bar (and
        # callbacks) at least every LOSS_REFRESH_SECONDS: logging it on every step of a fast
        # model cost 1 ms of its 27 ms (benchmarks/overhead.py --floor)
        writes_logs, now = self._writes_logs(), time.monotonic()
        if writes_logs or now - self._loss_logged_at >= self.LOSS_REFRESH_SECONDS:
            self._loss_logged_at = now
            self.log("train/loss", loss, prog_bar=True)
        if writes_logs:
            self.log("train/bpc", loss.detach() / math.log(2))
            # the rate this step uses, logged once (both parameter groups share it)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._loss(batch, averaged=True)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch[0].size(0))
        self.log("val/bpc", loss / math.log(2), sync_dist=True, batch_size=batch[0].size(0))

    # --- throughput and gradient health ------------------------------------------------------

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()
        warmup = self.hparams.get("muon_momentum_warmup", 0)
        # set while it rises (and at a resume inside it); afterwards the groups keep the target
        if warmup and self.hparams.optimizer == "muon" and self.trainer.global_step <= warmup:
            set_muon_momentum(self.trainer.optimizers[0], self._muon_momentum())

    def _muon_momentum(self) -> float:
        """Muon's momentum at this step: from MUON_MOMENTUM_START up to `muon_momentum` over
        the first `muon_momentum_warmup` steps (modded-nanogpt's warm-up), then constant; a
        target below the start is used from the first step (a warm-up never lowers it)."""
        hp, step = self.hparams, self.trainer.global_step
        start = min(MUON_MOMENTUM_START, hp.muon_momentum)
        share = min(1.0, step / hp.muon_momentum_warmup)
        return start + share * (hp.muon_momentum - start)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # the step's time ends here: the callbacks' work after it (a text sample, a checkpoint,
        # which run before this module's on_train_batch_end) is not the step's throughput
        if self._batch_started is not None:
            self._batch_seconds = time.perf_counter() - self._batch_started

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self._batch_seconds is None or not self._writes_logs(stepped=True):
            return
        tokens = batch[0].numel() * self.trainer.world_size
        self.log("train/tokens_per_sec", tokens / max(self._batch_seconds, 1e-9), prog_bar=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self._writes_logs():  # a norm per parameter per step slows small models
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:  # before clipping: the norm clipping compares with gradient_clip
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    # --- optimiser and schedule -------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(self.model, hp)
        if self.lr_plan is None:  # not restored from a checkpoint
            fixed = self.hparams.lr_decay_steps  # a fixed horizon needs no trainer to plan
            self.lr_plan = self.plan_learning_rate(fixed or self.trainer.estimated_stepping_batches)
            self.lr_plan.planned_for = self._max_steps()
        # a function, not the plan object: LambdaLR would pickle an object's attributes
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.lr_plan.multiplier(step)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    def plan_learning_rate(self, total_steps: float) -> LRPlan:
        """Warmup, then cosine decay over `training.lr_decay_steps` or else `total_steps`."""
        hp = self.hparams
        decay_steps = hp.lr_decay_steps or total_steps
        if not math.isfinite(decay_steps):  # max_steps=-1 with unbounded epochs
            decay_steps = hp.warmup_steps
        # a run shorter than twice its warmup warms up in its first half, then decays
        warmup = min(hp.warmup_steps, int(decay_steps) // 2)
        # a checkpoint from before the option has no lr_schedule: cosine, as it was trained
        cooldown = hp.lr_cooldown if hp.get("lr_schedule") == "wsd" else None
        return LRPlan(warmup, int(decay_steps), hp.min_lr_ratio, cooldown=cooldown)

    def _max_steps(self) -> int | None:
        trainer = self._trainer
        return trainer.max_steps if trainer is not None and trainer.max_steps > 0 else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.lr_plan is not None:
            checkpoint["lr_plan"] = asdict(self.lr_plan)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "lr_plan" in checkpoint:
            self.lr_plan = LRPlan(**checkpoint["lr_plan"])
        # a run resumed with the moving average switched on or off: it starts from the weights
        # as trained, or is dropped (called before Lightning loads the state_dict)
        state = checkpoint.get("state_dict", {})
        has_average = any(key.startswith("ema.") for key in state)
        if self.ema is not None and not has_average:
            trained = {k: v for k, v in state.items() if k.startswith("model.")}
            state.update({f"ema.module.{k.removeprefix('model.')}": v for k, v in trained.items()})
            state["ema.n_averaged"] = torch.tensor(0)
        elif self.ema is None and has_average:
            for key in [key for key in state if key.startswith("ema.")]:
                del state[key]
