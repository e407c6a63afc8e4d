"""TensorBoard beyond scalars: a Custom Scalars layout (train and val on one chart per metric,
next to the learning rate, tokens/second and gradient norm) and the HPARAMS tab with the run's
settings and its best val/loss (hp/best_val_loss, hp/best_val_bpc), so the runs of a sweep can be
compared there."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from tinyllm.callbacks.best_artifacts import best_score

LN2 = math.log(2)

# Custom Scalars: one chart per metric, with the train and val curves on the same axes
CHARTS = {
    "loss": ["train/loss", "val/loss"],
    "bits per character": ["train/bpc", "val/bpc"],
    "learning rate": ["lr"],
    "tokens per second": ["train/tokens_per_sec"],
    "gradient norm": ["train/grad_norm"],
}
HP_METRICS = ("hp/best_val_loss", "hp/best_val_bpc")


def custom_scalars_layout() -> dict:
    return {"tinyllm": {title: ["Multiline", tags] for title, tags in CHARTS.items()}}


def _tensorboard(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def run_hyperparameters(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """The settings worth comparing across runs: model shape, optimiser, data, batch."""
    hp = dict(pl_module.hparams)
    params: dict[str, Any] = {f"model/{k}": v for k, v in dict(hp.pop("model_config", {})).items()}
    params |= {f"optim/{k}": v for k, v in hp.items()}
    datamodule = trainer.datamodule
    for name in ("batch_size", "max_context", "val_split", "lowercase", "normalize_whitespace"):
        if hasattr(datamodule, name):
            params[f"data/{name}"] = getattr(datamodule, name)
    if hasattr(datamodule, "source"):
        params["data/source"] = datamodule.source
    params["trainer/max_steps"] = trainer.max_steps
    params["trainer/world_size"] = trainer.world_size
    params["trainer/precision"] = str(trainer.precision)
    # TensorBoard's HPARAMS plugin takes numbers, strings and booleans
    return {
        k: v if isinstance(v, bool | int | float | str) else str(v)
        for k, v in params.items()
        if v is not None
    } | {k: "null" for k, v in params.items() if v is None}


class TensorBoardExtras(L.Callback):
    """A Custom Scalars layout and the HPARAMS tab with the best val/loss."""

    def __init__(self, monitor: str = "val/loss"):
        self.monitor = monitor

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in _tensorboard(trainer):
                logger.experiment.add_custom_scalars(custom_scalars_layout())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = best_score(trainer, self.monitor)
        if best is None or not trainer.is_global_zero:
            return
        metrics = {HP_METRICS[0]: best, HP_METRICS[1]: best / LN2}
        params = run_hyperparameters(trainer, pl_module)
        for logger in _tensorboard(trainer):
            logger.log_hyperparams(params, metrics, step=trainer.global_step)
            logger.experiment.flush()
