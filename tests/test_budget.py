"""Promises about a run's end: the schedule fits the time budget on a slow machine, every way of
stopping ends with a validation, and a resumed run trains to the steps asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY_OVERRIDES, compose_config, read_events, without

from tinyllm.training import train


class Delay(L.Callback):
    """Slows every step down, or only the first `steps` (a machine whose early steps mislead the
    plan), as a slow machine would (named by `+callbacks.delay._target_`)."""

    def __init__(self, seconds: float, steps: int | None = None):
        self.seconds, self.steps = seconds, steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.steps is None or trainer.global_step <= self.steps:
            time.sleep(self.seconds)


BASE = [
    *without(TINY_OVERRIDES, "trainer.max_steps", "training.val_interval"),
    # longer than every run here, on any machine (a fast one ran 250 steps in 2 s): only the end
    # validates
    "training.val_interval=1000000",
    "trainer.log_every_n_steps=1",
    "training.learning_rate=1e-2",
    "training.min_lr_ratio=0.1",
]


def _train(run: Path, corpus_file: Path, *extra: str) -> float | None:
    return train(compose_config([*BASE, f"data.path={corpus_file}", *extra], run))


def _scalars(run: Path, tag: str) -> dict[int, float]:
    events = read_events(run / "tensorboard")
    return {e.step: e.value for e in events.Scalars(tag)}


def _last_step(run: Path) -> int:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["global_step"]


def _assert_validated_at_end(run: Path, score: float | None) -> None:
    step = _last_step(run)
    val = _scalars(run, "val/loss")
    # Lightning logs a validation run after step N at the logging step N - 1
    assert max(val) >= step - 1, (step, val)
    metadata = json.loads((run / "best" / "metadata.json").read_text())
    assert metadata["val_loss"] is not None and metadata["val_loss"] == score
    assert metadata["step"] == step


def test_slow_run_plans_its_steps_into_the_budget(tmp_path, corpus_file, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="tinyllm"):
        score = _train(
            run, corpus_file, "training.time_budget=8s", "trainer.max_steps=100000",
            "training.warmup_steps=5", f"+callbacks.delay._target_={__name__}.Delay",
            "+callbacks.delay.seconds=0.1",
        )  # fmt: skip
    planned = [r.message for r in caplog.records if "planning" in r.message]
    assert len(planned) == 1 and "to fit it at" in planned[0], planned
    step = _last_step(run)
    assert 10 < step < 80  # 8 s at 10 steps/s at most
    rates = _scalars(run, "lr")
    floor = 1e-2 * 0.1
    assert rates[max(rates)] == pytest.approx(floor, rel=0.05)  # the floor at the end
    assert max(rates.values()) == pytest.approx(1e-2, rel=0.05)  # after a full warmup
    _assert_validated_at_end(run, score)


def test_fast_run_keeps_its_steps_and_its_schedule(tmp_path, corpus_file, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="tinyllm"):
        _train(run, corpus_file, "training.time_budget=10m", "trainer.max_steps=30")
    assert any("all 30 steps fit" in r.message for r in caplog.records)
    assert _last_step(run) == 30


@pytest.mark.parametrize(
    "stop",
    [
        ["trainer.max_steps=7"],  # max_steps, shorter than the validation interval
        ["trainer.max_steps=100000", "trainer.max_time=00:00:00:02"],  # Lightning's Timer
        ["trainer.max_steps=100000", "training.time_budget=2s"],  # the budget
        ["trainer.max_steps=100000", "training.epochs=1"],  # the last epoch ends
    ],
    ids=["max_steps", "max_time", "time_budget", "epochs"],
)
def test_every_way_of_stopping_ends_validated(tmp_path, corpus_file, stop):
    run = tmp_path / "run"
    score = _train(run, corpus_file, *stop)
    _assert_validated_at_end(run, score)
    assert len(_scalars(run, "val/loss")) == 1  # once: the end


def test_early_stopping_end_is_its_own_validation(tmp_path, corpus_file):
    run = tmp_path / "run"
    score = _train(
        run, corpus_file, "trainer.max_steps=100000", "training.val_interval=3",
        "callbacks.early_stopping.patience=0", "callbacks.early_stopping.min_delta=10",
    )  # fmt: skip
    _assert_validated_at_end(run, score)
    assert len(_scalars(run, "val/loss")) == 2  # steps 3 and 6: no extra validation after it
    assert _last_step(run) == 6


def test_resumed_run_trains_to_the_new_steps_with_a_continuous_rate(tmp_path, corpus_file):
    run = tmp_path / "run"
    _train(run, corpus_file, "trainer.max_steps=20", "logger=none")
    last = run / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 20
    _train(run, corpus_file, "trainer.max_steps=40", f"ckpt_path={last}", "logger=none")
    second = torch.load(last, weights_only=True)
    assert second["global_step"] == 40
    (before,) = first["lr_schedulers"][0]["_last_lr"][:1]
    (after,) = second["lr_schedulers"][0]["_last_lr"][:1]
    # the finished run was at its floor; the extra steps continue from it, without a jump
    assert before == pytest.approx(1e-3) and after == pytest.approx(1e-3)
    assert second["lr_plan"]["end_step"] == 40 and second["lr_plan"]["anchor_step"] == 20


def test_run_faster_than_its_plan_extends_it_once(tmp_path, corpus_file, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="tinyllm"):
        score = _train(
            run, corpus_file, "training.time_budget=6s", "trainer.max_steps=100000",
            "training.warmup_steps=3", f"+callbacks.delay._target_={__name__}.Delay",
            "+callbacks.delay.seconds=0.15", "+callbacks.delay.steps=8",
        )  # fmt: skip
    messages = [r.message for r in caplog.records]
    (planned,) = [m for m in messages if "planning" in m]
    first_end = int(planned.split("planning ")[1].split(" steps")[0].replace(",", ""))
    (extended,) = [m for m in messages if "extending to" in m]
    new_end = int(extended.split("extending to ")[1].split(" steps")[0].replace(",", ""))
    assert new_end > first_end
    assert _last_step(run) == new_end  # trained to the new plan within the budget
    rates = _scalars(run, "lr")
    assert rates[max(rates)] == pytest.approx(1e-2 * 0.1, rel=0.05)  # the floor at the new end
    _assert_validated_at_end(run, score)
