"""The LightningModule: wires the plain transformer to loss, optimiser, schedule and metrics."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F

from tinyllm.model import ModelConfig, Transformer

OPTIMIZERS = ("adam", "adamw")
# auto: torch's default; foreach: multi-tensor kernels; fused: one fused kernel; loop: per tensor
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "loop")


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, cosine decay to `min_lr_ratio` at `decay_steps`, flat."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 - min_lr_ratio) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, hp) -> torch.optim.Optimizer:
    """Adam or AdamW as the module's hyper-parameters say (shared with the benchmarks' plain loop,
    so that both sides of the overhead comparison step the same optimizer)."""
    # weight decay shrinks matrices (embeddings, linear weights), never biases or norms
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer_cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
    impl = hp.get("optimizer_impl", "auto")
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {})
    kwargs = {"foreach": False} if impl == "loop" else kwargs
    return optimizer_cls(groups, lr=hp.learning_rate, betas=tuple(hp.betas), **kwargs)


class LanguageModel(L.LightningModule):
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
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if optimizer_impl not in OPTIMIZER_IMPLS:
            raise ValueError(
                f"training.optimizer_impl must be one of {OPTIMIZER_IMPLS}, got {optimizer_impl!r}"
            )
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
            }
        )
        self.config = ModelConfig.from_dict(dict(model_config))
        self.model = Transformer(self.config)
        # `model.compile=true`: the training and validation forward pass runs through
        # torch.compile. The compiled function is kept out of the module tree, so checkpoints and
        # artifacts hold the plain Transformer's keys and generation (KV cache) stays eager.
        self._compiled_forward = torch.compile(self.model.forward) if compile else None
        self._batch_started: float | None = None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        logits = (self._compiled_forward or self.model)(inputs)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

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
        self.log("train/loss", loss, prog_bar=True)  # every step: callbacks may monitor it
        if self._writes_logs():
            self.log("train/bpc", loss.detach() / math.log(2))
            # the rate this step uses, as plain `lr` (LearningRateMonitor names it lr/pg1, ...)
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch[0].size(0))
        self.log("val/bpc", loss / math.log(2), sync_dist=True, batch_size=batch[0].size(0))

    # --- throughput and gradient health ------------------------------------------------------

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._batch_started is None or not self._writes_logs(stepped=True):
            return
        seconds = time.perf_counter() - self._batch_started
        tokens = batch[0].numel() * self.trainer.world_size
        self.log("train/tokens_per_sec", tokens / max(seconds, 1e-9), prog_bar=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self._writes_logs():  # a norm per parameter per step slows small models
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            self.log("train/grad_norm", norm)

    # --- optimiser and schedule -------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(self.model, hp)
        decay_steps = hp.lr_decay_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(decay_steps):  # max_steps=-1 with unbounded epochs
            decay_steps = hp.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, hp.warmup_steps, int(decay_steps), hp.min_lr_ratio),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }
