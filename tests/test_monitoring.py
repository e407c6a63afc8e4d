"""What TensorBoard shows for a run (read back from the event files) and the progress bar."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import read_events
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import OmegaConf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from tinyllm.callbacks import ProgressBar
from tinyllm.callbacks.tensorboard_extras import CHARTS, HP_METRICS


def test_every_curve_is_logged(trained_run):
    events = read_events(trained_run / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    wanted = {"train/loss", "val/loss", "train/bpc", "val/bpc", "lr", "train/tokens_per_sec"}
    assert wanted | {"train/grad_norm", *HP_METRICS} <= scalars
    for tag in ("train/grad_norm", "train/bpc"):
        values = [e.value for e in events.Scalars(tag)]
        assert values and all(math.isfinite(v) and v > 0 for v in values)
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    for event in events.Scalars("train/bpc"):  # bits per character = nats / ln 2
        assert event.value == pytest.approx(losses[event.step] / math.log(2), rel=1e-5)
    # the chart-only metrics are computed on the logging steps only, and on every one of them
    for tag in ("train/bpc", "lr", "train/tokens_per_sec", "train/grad_norm"):
        assert sorted(e.step for e in events.Scalars(tag)) == sorted(losses), tag


def test_train_and_val_share_one_chart_per_metric(trained_run):
    events = read_events(trained_run / "tensorboard")
    (event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts == CHARTS
    assert charts["loss"] == ["train/loss", "val/loss"]
    assert charts["bits per character"] == ["train/bpc", "val/bpc"]
    scalars = set(events.Tags()["scalars"])
    assert all(tag in scalars for tags in charts.values() for tag in tags)  # no empty chart


def test_hparams_tab_holds_the_run_settings_and_best_val_loss(trained_run):
    events = read_events(trained_run / "tensorboard")
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert metric_tags == set(HP_METRICS)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    cfg = OmegaConf.load(trained_run / "config.yaml")
    assert hparams["model/n_layer"].number_value == cfg.model.n_layer
    assert hparams["model/n_embd"].number_value == cfg.model.n_embd
    assert hparams["model/dropout"].number_value == cfg.model.dropout
    assert hparams["optim/learning_rate"].number_value == pytest.approx(cfg.training.learning_rate)
    assert hparams["data/batch_size"].number_value == cfg.training.batch_size
    assert hparams["optim/optimizer"].string_value == cfg.training.optimizer

    best = min(e.value for e in events.Scalars("val/loss"))
    (logged,) = events.Scalars("hp/best_val_loss")
    assert logged.value == pytest.approx(best, rel=1e-6)
    assert logged.step == cfg.trainer.max_steps
    (bpc,) = events.Scalars("hp/best_val_bpc")
    assert bpc.value == pytest.approx(best / math.log(2), rel=1e-6)


def test_progress_bar_shows_short_names(monkeypatch):
    metrics = {"train/loss": 3.1, "val/loss": 2.9, "train/tokens_per_sec": 12345.6, "v_num": 0}
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, t, m: dict(metrics))
    shown = ProgressBar().get_metrics(None, None)
    assert shown == {"loss": 3.1, "val_loss": 2.9, "tok/s": "12,346"}


class _Boring(L.LightningModule):
    """Seven batches of a one-weight regression: a Trainer's loop, nothing else."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.weight - batch) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(7, 1), batch_size=1)


@pytest.mark.parametrize(
    ("min_interval", "max_steps", "drawn"),
    [(0.0, -1, [*range(1, 8), *range(1, 8)]), (3600.0, -1, [1, 7, 7]),  # 2 epochs of 7 batches
     (3600.0, 10, [1, 7, 3])],  # the run ends in the middle of its second epoch
)  # fmt: skip
def test_progress_bar_redraws_at_most_every_min_interval_and_at_the_epoch_end(
    min_interval, max_steps, drawn
):
    class Recording(ProgressBar):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.drawn: list[int] = []

        def _update(self, progress_bar_id, current, visible=True, hard=False):
            if progress_bar_id is not None and progress_bar_id == self.train_progress_bar_id:
                self.drawn.append(current)
            super()._update(progress_bar_id, current, visible, hard)

    bar = Recording(min_interval=min_interval)
    trainer = L.Trainer(max_epochs=2, max_steps=max_steps, callbacks=[bar], logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        accelerator="cpu")  # fmt: skip
    trainer.fit(_Boring())
    # every batch, or the run's first and then only each epoch's or the run's last (the bar
    # never ends short)
    assert bar.drawn == drawn
