"""The LightningModule: schedule, optimiser groups, metrics, and a real short fit."""

from __future__ import annotations

import math
import time
from itertools import pairwise

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tinyllm.data import CharDataModule
from tinyllm.module import LanguageModel, LRPlan
from tinyllm.optimizers import CombinedOptimizer, build_optimizer


def tiny_model_config(vocab_size: int, **overrides) -> dict:
    return {
        "vocab_size": vocab_size, "context_length": 32, "n_layer": 1, "n_head": 2, "n_embd": 32,
    } | overrides  # fmt: skip


def test_warmup_cosine_shape():
    warmup, decay, floor = 10, 110, 0.1
    plan = LRPlan(warmup_steps=warmup, end_step=decay, min_lr_ratio=floor)
    values = [plan.multiplier(step) for step in range(200)]
    # linear rise during warmup, reaching 1 on its last step
    assert values[0] == pytest.approx(1 / warmup)
    assert all(b > a for a, b in pairwise(values[:warmup]))
    assert values[warmup - 1] == pytest.approx(1.0)
    assert values[warmup] == pytest.approx(1.0)
    # cosine decay: never rising, half way down at the middle, the floor at the end and after
    decaying = values[warmup : decay + 1]
    assert all(b <= a for a, b in pairwise(decaying))
    assert values[(warmup + decay) // 2] == pytest.approx((1.0 + floor) / 2)
    assert values[decay] == pytest.approx(floor)
    assert values[decay:] == [floor] * (200 - decay)
    assert min(values) == pytest.approx(floor)
    # no warmup: full rate from the first step
    assert LRPlan(0, 100, floor).multiplier(0) == pytest.approx(1.0)


def test_warmup_stable_decay_shape():
    plan = LRPlan(warmup_steps=10, end_step=110, min_lr_ratio=0.1, cooldown=0.4)
    values = [plan.multiplier(step) for step in range(200)]
    assert values[9] == pytest.approx(1.0)
    # flat at the peak for the first 60% of the decay span, then a straight line to the floor
    assert values[9:71] == [1.0] * 62
    assert values[90] == pytest.approx((1.0 + 0.1) / 2)
    assert all(b - a == pytest.approx(-0.9 / 40) for a, b in pairwise(values[70:111]))
    assert values[110:] == [pytest.approx(0.1)] * 90
    # an end moved while stable keeps the plateau; moved while cooling, it goes straight down
    stable = LRPlan(10, 110, 0.1, cooldown=0.4)
    stable.move_end(30, 210)
    assert stable.multiplier(138) == 1.0 and stable.multiplier(210) == pytest.approx(0.1)
    assert stable.multiplier(139) < 1.0
    cooling = LRPlan(10, 110, 0.1, cooldown=0.4)
    cooling.move_end(80, 150)
    after = [cooling.multiplier(step) for step in range(80, 151)]
    assert after[0] == pytest.approx(values[80])
    assert all(b - a == pytest.approx((0.1 - values[80]) / 70) for a, b in pairwise(after))


@pytest.fixture
def datamodule(corpus_file) -> CharDataModule:
    dm = CharDataModule(
        path=str(corpus_file), max_context=32, batch_size=16, val_split=0.1, max_val_windows=20
    )
    dm.setup("fit")
    return dm


def mean_loss(module: LanguageModel, batches) -> float:
    """Cross-entropy per token over `batches`, computed here independently of the module."""
    module.eval()
    with torch.no_grad():
        total = sum(
            F.cross_entropy(module(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            for x, y in batches
        )
    module.train()
    return total / sum(y.numel() for _, y in batches)


def fit(module: LanguageModel, dm: CharDataModule, max_steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        log_every_n_steps=1,  # chart-only metrics (lr, train/bpc) are logged on logging steps
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return trainer


@pytest.mark.parametrize(
    ("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_real_fit_learns_with_the_selected_optimizer(datamodule, name, cls):
    L.seed_everything(0)
    lr, floor, steps = 3e-3, 0.1, 20
    module = LanguageModel(
        tiny_model_config(datamodule.tokenizer.vocab_size),
        optimizer=name, learning_rate=lr, weight_decay=0.1, warmup_steps=3, min_lr_ratio=floor,
    )  # fmt: skip
    fixed = [next(iter(datamodule.train_dataloader())), *datamodule.val_dataloader()]
    before = mean_loss(module, fixed)
    assert before == pytest.approx(math.log(datamodule.tokenizer.vocab_size), rel=0.05)

    trainer = fit(module, datamodule, steps)
    assert trainer.global_step == steps
    after = mean_loss(module, fixed)
    assert after < before - 0.3, (before, after)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))

    optimizer = trainer.optimizers[0]
    assert type(optimizer) is cls
    assert module.hparams.optimizer == name
    # weight decay on matrices only, every parameter in exactly one group
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.dim() < 2 for p in no_decay["params"])
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in module.model.parameters())
    assert module.model.token_embedding.weight in decay["params"]
    assert module.model.blocks[0].ln1.weight in no_decay["params"]
    # warmup + cosine over the run's max_steps: the floor is reached on the last step
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * floor)
    # `lr` is logged as the rate of the last step
    assert float(trainer.callback_metrics["lr"]) == pytest.approx(
        lr * LRPlan(3, steps, floor).multiplier(steps - 1)
    )


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(datamodule):
    L.seed_everything(0)
    lr, floor, steps, scale = 3e-3, 0.1, 20, 2.0
    module = LanguageModel(
        tiny_model_config(datamodule.tokenizer.vocab_size, n_layer=2),
        optimizer="muon", learning_rate=lr, weight_decay=0.1, warmup_steps=3, min_lr_ratio=floor,
        muon_lr_scale=scale, muon_ns_steps=3,
    )  # fmt: skip
    fixed = [next(iter(datamodule.train_dataloader())), *datamodule.val_dataloader()]
    before = mean_loss(module, fixed)
    trainer = fit(module, datamodule, steps)
    assert mean_loss(module, fixed) < before - 0.3

    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, CombinedOptimizer)
    muon, adamw = optimizer.optimizers
    assert type(muon) is torch.optim.Muon and type(adamw) is torch.optim.AdamW
    named = dict(module.model.named_parameters())
    hidden = {n for n, p in named.items() if n.startswith("blocks.") and p.dim() == 2}
    assert hidden == {
        n for n, p in named.items() if any(p is q for q in muon.param_groups[0]["params"])
    }
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.proj.weight"} <= hidden
    decay, no_decay = adamw.param_groups
    rest = {id(p) for p in decay["params"] + no_decay["params"]}
    assert rest == {id(p) for n, p in named.items() if n not in hidden}
    assert {id(named["token_embedding.weight"]), id(named["lm_head.weight"])} <= {
        id(p) for p in decay["params"]
    }
    # one schedule for every group: each ends at its own rate times the floor
    assert muon.param_groups[0]["lr"] == pytest.approx(scale * lr * floor)
    assert muon.param_groups[0]["ns_steps"] == 3
    assert decay["lr"] == no_decay["lr"] == pytest.approx(lr * floor)
    # every parameter has its optimizer state, under the one optimizer that owns it
    assert all(
        muon.state[p]["momentum_buffer"].shape == p.shape for p in muon.param_groups[0]["params"]
    )
    assert set(optimizer.state) == set(muon.state) | set(adamw.state)


def test_combined_optimizer_state_round_trips_and_refuses_a_mismatch(datamodule):
    def fresh():
        model = LanguageModel(tiny_model_config(datamodule.tokenizer.vocab_size), optimizer="muon")
        return model, build_optimizer(model.model, model.hparams)

    model, optimizer = fresh()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = optimizer.state_dict()
    _, other = fresh()
    other.load_state_dict(state)
    for a, b in zip(optimizer.optimizers, other.optimizers, strict=True):
        for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"], strict=True):
            for key, value in a.state[pa].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.state[pb][key]))
    adam_only = LanguageModel(tiny_model_config(datamodule.tokenizer.vocab_size), optimizer="adamw")
    with pytest.raises(ValueError, match="optimizer it was trained with"):
        other.load_state_dict(build_optimizer(adam_only.model, adam_only.hparams).state_dict())


def test_tied_weights_are_one_decayed_parameter(datamodule):
    module = LanguageModel(
        tiny_model_config(datamodule.tokenizer.vocab_size, tie_weights=True),
        weight_decay=0.1,
        lr_decay_steps=50,  # a fixed horizon: no trainer needed
    )
    config = module.configure_optimizers()
    decay, no_decay = config["optimizer"].param_groups
    tied = module.model.token_embedding.weight
    assert sum(p is tied for p in decay["params"]) == 1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.model.parameters()))
    scheduler = config["lr_scheduler"]
    assert scheduler["interval"] == "step" and scheduler["name"] == "lr"


def test_validation_logs_loss_and_bits_per_character(datamodule):
    L.seed_everything(0)
    module = LanguageModel(tiny_model_config(datamodule.tokenizer.vocab_size))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    expected = mean_loss(module, list(datamodule.val_dataloader()))
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)


def test_hyperparameters_are_saved_as_plain_data():
    module = LanguageModel(tiny_model_config(10), optimizer="adamw", betas=(0.8, 0.9))
    hp = dict(module.hparams)
    assert hp["model_config"] == tiny_model_config(10)
    assert hp["optimizer"] == "adamw" and hp["betas"] == [0.8, 0.9]
    assert type(hp["model_config"]) is dict and type(hp["betas"]) is list


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="training.optimizer must be one of"):
        LanguageModel(tiny_model_config(10), optimizer="sgd")


def test_muon_momentum_warms_up_then_holds(datamodule):
    class Momenta(L.Callback):
        def __init__(self):
            self.seen: list[float] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.seen.append(optimizer.optimizers[0].param_groups[0]["momentum"])

    module = LanguageModel(
        tiny_model_config(datamodule.tokenizer.vocab_size), optimizer="muon",
        muon_momentum=0.95, muon_momentum_warmup=10,
    )  # fmt: skip
    momenta = Momenta()
    L.Trainer(
        max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[momenta],
    ).fit(module, datamodule=datamodule)  # fmt: skip
    assert momenta.seen == pytest.approx([0.85 + 0.01 * step for step in range(10)] + [0.95] * 2)


def test_tokens_per_second_measure_the_step_not_the_callbacks_after_it(datamodule):
    """A callback's work at the end of a batch (a text sample, a checkpoint) runs before the
    module's on_train_batch_end: it must not count as the step's time."""

    class SlowAfterTheStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            time.sleep(0.25)

    module = LanguageModel(tiny_model_config(datamodule.tokenizer.vocab_size))
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        log_every_n_steps=1, callbacks=[SlowAfterTheStep()],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    tokens = 16 * 32  # batch x context
    # with the sleep counted it would be at most tokens / 0.25 = 2,048; a step takes milliseconds
    assert float(trainer.callback_metrics["train/tokens_per_sec"]) > 4 * tokens / 0.25
