"""The Hydra configs: every group option composes, resolves, validates and instantiates; invalid
values stop with one line naming the key."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import lightning as L
import pytest
from conftest import CONFIG_DIR, TINY_OVERRIDES, compose_config, read_events
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from tinyllm.callbacks import (
    BestArtifactsCallback,
    ProgressBar,
    SampleTextCallback,
    TensorBoardExtras,
)
from tinyllm.config import (
    RULES,
    ConfigError,
    print_config_tree,
    resolve_compile,
    validate,
)
from tinyllm.data import CharDataModule
from tinyllm.model import ModelConfig
from tinyllm.module import LanguageModel
from tinyllm.training import build_model_config, instantiate_group

GROUPS = ("model", "data", "training", "trainer", "callbacks", "logger", "paths", "module")
GROUPS += ("experiment", "hydra")
OPTIONS = sorted(
    f"{group}={path.stem}" for group in GROUPS for path in (CONFIG_DIR / group).glob("*.yaml")
)


def test_every_group_has_its_options():
    for option in ("model=tiny", "model=small", "model=medium", "trainer=default", "trainer=cpu",
                   "trainer=gpu", "callbacks=default", "callbacks=none", "logger=tensorboard",
                   "logger=none", "experiment=smoke", "experiment=shakespeare_gpu",
                   "data=shakespeare", "hydra=default", "paths=default"):  # fmt: skip
        assert option in OPTIONS


def check_interpolations(cfg, output_dir) -> None:
    training = cfg.training
    assert cfg.paths.output_dir == str(output_dir)
    assert cfg.data.batch_size == training.batch_size
    assert cfg.data.max_context == training.max_context
    assert cfg.data.val_split == training.val_split
    assert cfg.data.seed == cfg.seed
    assert cfg.model.context_length == training.max_context
    assert cfg.trainer.gradient_clip_val == training.gradient_clip
    assert cfg.trainer.max_epochs == training.epochs
    assert cfg.trainer.val_check_interval == training.val_interval
    assert cfg.trainer.default_root_dir == str(output_dir)
    assert cfg.module.learning_rate == training.learning_rate
    assert cfg.module.optimizer == training.optimizer
    assert list(cfg.module.betas) == list(training.betas)
    callbacks = cfg.callbacks or {}
    if "best_artifacts" in callbacks:
        assert callbacks.best_artifacts.dirpath == f"{output_dir}/best"
        assert callbacks.best_artifacts.console_max_tokens == training.console_max_tokens
        assert callbacks.best_artifacts.console_temperature == training.console_temperature
        assert callbacks.best_artifacts.console_top_k == training.console_top_k
    if "model_checkpoint" in callbacks:
        assert callbacks.model_checkpoint.dirpath == f"{output_dir}/checkpoints"
    if "sample_text" in callbacks:
        assert callbacks.sample_text.every_n_steps == training.sample_frequency
        assert callbacks.sample_text.temperature == training.temperature
    if cfg.get("logger") and "tensorboard" in cfg.logger:
        assert cfg.logger.tensorboard.save_dir == str(output_dir)


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_resolves_validates_and_instantiates(option, tmp_path):
    cfg = compose_config([option], output_dir=tmp_path)
    # every interpolation resolves (including ${hydra:runtime.output_dir})
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert container["paths"]["output_dir"] == str(tmp_path)
    check_interpolations(cfg, tmp_path)

    validate(cfg)
    # every value of the recipe has its rule: none goes unchecked
    ruled = {key.split(".", 1)[1] for key in RULES if key.startswith("training.")}
    assert set(cfg.training) == ruled

    model_config = build_model_config(cfg.model, vocab_size=65)
    assert isinstance(model_config, ModelConfig)
    assert model_config.context_length == cfg.training.max_context
    assert isinstance(instantiate(cfg.data), CharDataModule)
    compile = resolve_compile(cfg)
    module = instantiate(cfg.module, model_config=model_config.to_dict(), compile=compile)
    assert isinstance(module, LanguageModel)
    assert module.hparams.learning_rate == cfg.training.learning_rate
    assert module.hparams.compile is compile  # a bool: model.compile=auto is resolved
    assert module.hparams.optimizer_impl == cfg.training.optimizer_impl

    callbacks = instantiate_group(cfg.get("callbacks"))
    assert len(callbacks) == len(cfg.callbacks or {})
    extra = {"logger=mlflow": "mlflow", "logger=wandb": "wandb"}.get(option)
    loggers = []
    if extra is None or importlib.util.find_spec(extra) is not None:  # optional extras
        loggers = instantiate_group(cfg.get("logger"))
        assert len(loggers) == len(cfg.get("logger") or {})
    if cfg.trainer.accelerator != "gpu":  # no GPU here: a gpu Trainer cannot be built
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        assert isinstance(trainer, L.Trainer)
        assert trainer.max_steps == cfg.trainer.max_steps
        assert trainer.gradient_clip_val == cfg.training.gradient_clip


def test_default_callbacks_and_logger(tmp_path):
    cfg = compose_config([], output_dir=tmp_path)
    callbacks = {type(c) for c in instantiate_group(cfg.callbacks)}
    assert callbacks == {ModelCheckpoint, EarlyStopping, ProgressBar, SampleTextCallback,
                         BestArtifactsCallback, TensorBoardExtras}  # fmt: skip
    assert issubclass(ProgressBar, RichProgressBar)
    checkpoint = next(c for c in instantiate_group(cfg.callbacks) if type(c) is ModelCheckpoint)
    assert checkpoint.monitor == "val/loss" and checkpoint.save_last
    assert checkpoint.dirpath == str(tmp_path / "checkpoints")
    (logger,) = instantiate_group(cfg.logger)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir) == tmp_path / "tensorboard"


def test_none_options_are_empty(tmp_path):
    assert instantiate_group(compose_config(["callbacks=none"], tmp_path).callbacks) == []
    assert instantiate_group(compose_config(["logger=none"], tmp_path).get("logger")) == []


def test_model_sizes(tmp_path):
    def size(option):
        model = compose_config([option], tmp_path).model
        return model.n_layer, model.n_head, model.n_embd

    tiny, small, medium = size("model=tiny"), size("model=small"), size("model=medium")
    assert tiny[0] < small[0] < medium[0] and tiny[2] < small[2] < medium[2]


def test_gpu_experiment_is_nanogpt_shakespeare_char_scale(tmp_path):
    cfg = compose_config(["experiment=shakespeare_gpu"], tmp_path)
    model = cfg.model
    assert (model.n_layer, model.n_head, model.n_embd, model.context_length) == (6, 6, 384, 256)
    assert cfg.trainer.accelerator == "gpu"
    validate(cfg)
    # nanoGPT's block, as the CPU comparison uses it (the default block overfits at this scale)
    cpu = compose_config(["experiment=nanogpt_cpu"], tmp_path).model
    block = ["positional", "norm", "mlp", "qk_norm", "zero_init", "bias", "tie_weights"]
    assert {k: model[k] for k in block} == {k: cpu[k] for k in block}
    assert model.attn_dropout and model.dropout == 0.2


def test_smoke_experiment_overrides_the_defaults(tmp_path):
    default = compose_config([], tmp_path)
    smoke = compose_config(["experiment=smoke"], tmp_path)
    assert smoke.model.n_layer == compose_config(["model=tiny"], tmp_path).model.n_layer
    assert smoke.trainer.max_steps < default.trainer.max_steps
    assert smoke.data.max_context == smoke.model.context_length == smoke.training.max_context
    assert smoke.training.max_context != default.training.max_context


def test_command_line_style_overrides_reach_every_reader(tmp_path):
    cfg = compose_config(
        ["training.batch_size=7", "training.max_context=20", "training.gradient_clip=0.5",
         "training.optimizer=adamw", "seed=5"],
        tmp_path,
    )  # fmt: skip
    assert cfg.data.batch_size == 7
    assert cfg.data.max_context == cfg.model.context_length == 20
    assert cfg.trainer.gradient_clip_val == 0.5
    assert cfg.module.optimizer == "adamw"
    assert cfg.data.seed == 5 and cfg.callbacks.sample_text.seed == 5
    validate(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.learning_rate=-1", "training.learning_rate"),
        ("training.learning_rate=0", "training.learning_rate"),
        ("training.learning_rate=fast", "training.learning_rate"),
        ("training.val_split=0", "training.val_split"),
        ("training.val_split=1", "training.val_split"),
        ("training.val_split=-0.1", "training.val_split"),
        ("training.batch_size=0", "training.batch_size"),
        ("training.epochs=2.5", "training.epochs"),
        ("training.gradient_clip=-1", "training.gradient_clip"),
        ("training.optimizer=sgd", "training.optimizer"),
        ("training.betas=[0.9]", "training.betas"),
        ("training.console_top_k=-1", "training.console_top_k"),
        ("+training.foo=1", "training.foo"),
        ("model.n_head=5", "model.n_head"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.positional=alibi", "model.positional"),
        ("seed=abc", "seed"),
        ("training.time_budget=soon", "training.time_budget"),
        ("training.time_budget=-5", "training.time_budget"),
        ("training.lr_schedule=linear", "training.lr_schedule"),
        ("training.lr_cooldown=0", "training.lr_cooldown"),
        ("training.muon_momentum_warmup=-1", "training.muon_momentum_warmup"),
        # set on the group that reads the recipe, not through training.*
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_split=1.5", "data.val_split"),
        ("data.num_workers=-1", "data.num_workers"),
        ("module.learning_rate=-1", "module.learning_rate"),
        ("module.betas=[0.9,1.5]", "module.betas"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
        ("callbacks.early_stopping.patience=-1", "callbacks.early_stopping.patience"),
        ("callbacks.sample_text.every_n_steps=0", "callbacks.sample_text.every_n_steps"),
        ("callbacks.best_artifacts.console_temperature=500", "console_temperature"),
    ],
)
def test_invalid_values_raise_one_line_naming_the_key(override, key, tmp_path):
    cfg = compose_config([override], tmp_path)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert key in message
    assert "\n" not in message.strip()


def test_fused_optimizer_with_clipping_under_mixed_precision_is_refused(tmp_path):
    fused = ["training.optimizer_impl=fused", "trainer.precision=bf16-mixed"]
    with pytest.raises(ConfigError, match=r"set training\.gradient_clip=0"):
        validate(compose_config([*fused, "training.gradient_clip=1.0"], tmp_path))
    validate(compose_config([*fused, "training.gradient_clip=0"], tmp_path))
    validate(
        compose_config(["training.optimizer_impl=fused", "trainer.precision=32-true"], tmp_path)
    )


def test_n_head_must_divide_the_width(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.n_head=5 must divide model\.n_embd=192"):
        validate(compose_config(["model.n_embd=192", "model.n_head=5"], tmp_path))
    validate(compose_config(["model.n_embd=192", "model.n_head=8"], tmp_path))  # 192 / 8 is fine


# bad values and misspelled keys through train.py (one line, exit code, nothing written):
# tests/test_bad_inputs.py ("lr < 0", "hydra: unknown key")


def test_config_tree_is_printed_resolved(tmp_path, capsys):
    cfg = compose_config(["training.learning_rate=0.0042"], tmp_path)
    print_config_tree(cfg)
    out = capsys.readouterr().out
    for group in ("paths", "data", "model", "module", "training", "trainer", "callbacks"):
        assert group in out
    assert "learning_rate: 0.0042" in out
    assert "output_dir: /" in out and "${" not in out  # interpolations shown resolved


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "bf16_share", "expected"),
    [
        (True, True, 2.0, "bf16-mixed"),  # AMX: bf16 without measuring
        (False, False, 0.1, "32-true"),  # no native bf16: emulated, fp32 without measuring
        (False, True, 0.5, "bf16-mixed"),  # AVX512-BF16 where bf16 matmuls are 2x faster
        (False, True, 1.2, "32-true"),  # AVX512-BF16 where they are slower (a Xeon VM here)
    ],
)
def test_default_precision_follows_the_hardware(
    tmp_path, monkeypatch, amx, avx512_bf16, bf16_share, expected
):
    import torch

    from tinyllm import config

    # the CPU's features cannot be changed here, so the checks and the timing are replaced
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(
        config, "matmul_seconds", lambda dtype: bf16_share if dtype == torch.bfloat16 else 1.0
    )
    config.fastest_precision.cache_clear()
    try:
        assert compose_config([], tmp_path).trainer.precision == expected
        chosen = compose_config(["trainer.precision=bf16-mixed"], tmp_path).trainer.precision
        assert chosen == "bf16-mixed"
    finally:
        config.fastest_precision.cache_clear()


def test_matmul_timing_measures_both_dtypes():
    import torch

    from tinyllm.config import matmul_seconds

    for dtype in (torch.float32, torch.bfloat16):
        assert 0 < matmul_seconds(dtype, rows=64, width=32, repeats=2) < 1.0


# --- debugging configs and loggers, each run for real on a tiny model -----------------------


def _tiny_run(tmp_path, corpus_file, *overrides):
    from tinyllm.training import train

    run = tmp_path / "run"
    cfg = compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}", *overrides], run)
    return run, train(cfg)


def test_debug_fast_dev_run(tmp_path, corpus_file):
    run, score = _tiny_run(tmp_path, corpus_file, "debug=fdr")
    import json

    assert score is not None  # one validation batch, measured
    assert json.loads((run / "best" / "metadata.json").read_text())["step"] == 1


def test_debug_overfit_learns_its_few_batches(tmp_path, corpus_file, recwarn):
    import json

    run, score = _tiny_run(tmp_path, corpus_file, "debug=overfit", "trainer.max_steps=100",
                           "training.learning_rate=2e-2")  # fmt: skip
    train_loss = json.loads((run / "best" / "metadata.json").read_text())["train_loss"]
    # from ~3.8 (a uniform guess) on 3 batches seen ~17 times each by the best validation;
    # the validation batches are other text
    assert train_loss < 2.0
    # epochs of 3 batches, shorter than the logging interval (10): every interval is logged all
    # the same, so Lightning's warning that the epoch's logs go missing is not shown
    assert not [w for w in recwarn if "logging interval" in str(w.message)]
    steps = [e.step for e in read_events(run / "tensorboard").Scalars("train/bpc")]
    assert steps == list(range(9, 100, 10))


def test_debug_limit_runs_short_epochs(tmp_path, corpus_file):
    import torch

    run, _ = _tiny_run(tmp_path, corpus_file, "debug=limit", "trainer.max_steps=-1")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 60  # 3 epochs of 20 batches


def test_debug_profiler_writes_its_report(tmp_path, corpus_file):
    run, _ = _tiny_run(tmp_path, corpus_file, "debug=profiler")
    (report,) = run.glob("*profile*.txt")
    assert "run_training_batch" in report.read_text()


def test_csv_logger_writes_the_metrics(tmp_path, corpus_file, caplog):
    import csv

    with caplog.at_level(logging.INFO, logger="tinyllm.training"):
        run, score = _tiny_run(tmp_path, corpus_file, "logger=csv")
    assert "chat with it:" in caplog.text and "tensorboard --logdir" not in caplog.text
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert val and min(val) == pytest.approx(score)
    assert any(r.get("train/loss") for r in rows)


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_optional_loggers_are_configured_offline(tmp_path, name):
    logger = compose_config([f"logger={name}"], tmp_path).logger[name]
    assert logger._target_.startswith("lightning.pytorch.loggers.")
    if name == "mlflow":
        assert logger.tracking_uri.startswith("file:")
    else:
        assert logger.offline is True


def test_weight_average_is_what_validation_scores_and_best_keeps(tmp_path, corpus_file):
    """training.ema_decay: validation and best/ use the moving average (torch's AveragedModel),
    updated after every batch; the checkpoint keeps the trained weights and the average apart."""
    import json

    import torch
    import torch.nn.functional as F
    from hydra.utils import instantiate
    from safetensors.torch import load_file

    from tinyllm.artifacts import load_model

    run, score = _tiny_run(tmp_path, corpus_file, "training.ema_decay=0.8")
    assert json.loads((run / "best" / "metadata.json").read_text())["step"] == 30
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert int(state["ema.n_averaged"]) == 30
    best = load_file(run / "best" / "model.safetensors")
    name = "blocks.0.attn.qkv.weight"
    assert torch.equal(best[name], state[f"ema.module.{name}"])
    assert not torch.allclose(best[name], state[f"model.{name}"])
    # the logged score is the exported average's loss on the same validation windows
    datamodule = instantiate(compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}"]).data)
    datamodule.setup("validate")
    model, total, count = load_model(run / "best").model, 0.0, 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():
            total += float(F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
    assert total / count == pytest.approx(score, rel=1e-5)

    # resumed without the average it is dropped; a run without one resumed with it starts one
    from tinyllm.training import train

    last = run / "checkpoints" / "last.ckpt"
    for i, decay in enumerate((0.0, 0.8)):
        again = tmp_path / f"resumed{i}"
        overrides = [
            f"ckpt_path={last}",
            f"trainer.max_steps={40 + 10 * i}",
            f"training.ema_decay={decay}",
        ]
        cfg = compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}", *overrides], again)
        assert train(cfg) is not None
        state = torch.load(again / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert ("ema.n_averaged" in state) == bool(decay)
        last = again / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_weights(tmp_path, corpus_file):
    """`model.compile=true` runs the training forward through torch.compile (dynamo compiles
    graphs) and the artifacts still hold the plain Transformer's weights."""
    import json

    import torch._dynamo
    from safetensors import safe_open

    torch._dynamo.reset()
    compiled_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    run, score = _tiny_run(tmp_path, corpus_file, "model.compile=true", "trainer.max_steps=6",
                           "training.val_interval=3", "callbacks.sample_text=null")  # fmt: skip
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > compiled_before
    assert (
        score is not None and json.loads((run / "best" / "metadata.json").read_text())["step"] == 6
    )
    with safe_open(str(run / "best" / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    assert "token_embedding.weight" in keys and not any("_orig_mod" in k for k in keys)
