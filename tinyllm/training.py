"""One training run from a composed config: build everything by instantiation, fit, report."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from tinyllm.artifacts import TOKENIZER_FILE
from tinyllm.callbacks import (
    BestArtifactsCallback,
    FaultGuard,
    TimeBudget,
    TrainingStateCallback,
    ValidateAtEnd,
    best_score,
)
from tinyllm.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    check_continues,
    verify_checkpoint,
)
from tinyllm.config import (
    PRECISION_NOTES,
    ConfigError,
    check_machine,
    parse_duration,
    print_config_tree,
    resolve_compile,
    trains_on_cuda,
    validate,
)
from tinyllm.data import CharDataModule
from tinyllm.io import command_name, write_atomic
from tinyllm.model import ModelConfig
from tinyllm.runs import RUN_CONFIG, RunLock, is_own_checkpoint

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 100 * 2**20


def _not_an_advert(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg)


def route_lightning_logs_to_root() -> None:
    """Lightning installs its own console handlers at import; send its records to the run's
    handlers (console and train.log) instead, without its sales tips."""
    for name in ("lightning", "lightning.pytorch"):
        lightning_logger = logging.getLogger(name)
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
        lightning_logger.propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)
    warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
    # an epoch shorter than log_every_n_steps (a small corpus, debug=overfit): Lightning warns
    # that the epoch's logs will be missing, but it counts logging steps across epochs (as the
    # module's chart-only metrics do), so every interval is logged all the same
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def check_output_dir(path: Path) -> None:
    """Fail before training, not after an hour, if the run folder cannot take our files."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"output folder {path} is not writable ({e.strerror}): set hydra.run.dir to a "
            "writable folder"
        ) from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"only {free // 2**20} MiB free at {path}: free some disk space or set "
            "hydra.run.dir elsewhere"
        )


def instantiate_group(group: DictConfig | None) -> list:
    """Every `_target_` entry of a group like callbacks/ or logger/ (null entries are off)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_model_config(model: DictConfig, vocab_size: int) -> ModelConfig:
    """The `model` group as a ModelConfig; `model.compile` is a training switch the module reads."""
    settings = OmegaConf.to_container(model, resolve=True)
    settings.pop("compile", None)
    return instantiate(settings, vocab_size=vocab_size)


def train(cfg: DictConfig) -> float | None:
    """Train as configured; return the best monitored validation loss (for sweepers)."""
    validate(cfg)
    check_machine(cfg)
    route_lightning_logs_to_root()
    for note in PRECISION_NOTES:  # the measured choice, in every run's log (sweep jobs too)
        log.info("%s", note)
    output_dir = Path(cfg.paths.output_dir)
    # refuse untrusted pickles before Lightning reads the file
    checkpoint = verify_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    check_output_dir(output_dir)
    # under DDP, Lightning's launcher re-runs this script on every rank: one rank writes the files
    writes_files = rank_zero_only.rank == 0
    # one live run per folder (rank zero holds it for all ranks); released however fit ends
    with RunLock(output_dir) if writes_files else contextlib.nullcontext():
        return _train(cfg, output_dir, writes_files, checkpoint)


def _train(
    cfg: DictConfig, output_dir: Path, writes_files: bool, checkpoint: dict | None
) -> float | None:
    if writes_files and cfg.get("print_config", True):
        print_config_tree(cfg)
    datamodule, module = build_data_and_module(cfg)
    if checkpoint is not None:  # before the run's files are rewritten for a model it cannot be
        tokenizer = datamodule.tokenizer.state_dict()
        check_continues(checkpoint, cfg.ckpt_path, module.config.to_dict(), tokenizer,
                        module.hparams.optimizer)  # fmt: skip
        step, max_steps = int(checkpoint.get("global_step", 0)), int(cfg.trainer.max_steps)
        # a new run from it would train nothing, and have no best/
        if not is_own_checkpoint(cfg.ckpt_path, output_dir) and 0 < max_steps <= step:
            raise CheckpointError(
                f"checkpoint {cfg.ckpt_path} is at step {step} and trainer.max_steps={max_steps}: "
                "a new run from it would train nothing; raise trainer.max_steps"
            )
        del checkpoint  # Lightning reads the file again, for its restore
    if writes_files:
        write_atomic(output_dir / RUN_CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())
        datamodule.tokenizer.save_state(output_dir / TOKENIZER_FILE)
        log.info("config and tokenizer saved in %s", _shown(output_dir))
    config = module.config
    log.info(
        "model: %d layers, %d heads, %d wide, context %d, %s parameters",
        config.n_layer,
        config.n_head,
        config.n_embd,
        config.context_length,
        f"{module.model.num_parameters():,}",
    )
    trainer, guard = build_trainer(cfg, output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    best = next((c for c in trainer.callbacks if isinstance(c, BestArtifactsCallback)), None)
    if trainer.is_global_zero:
        tensorboard = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
        report(output_dir, best, tensorboard)
    guard.raise_if_interrupted(trainer)
    return best_score(trainer)  # the value Hydra sweepers minimise


def build_data_and_module(cfg: DictConfig) -> tuple[CharDataModule, L.LightningModule]:
    """Threads and seed set, the datamodule prepared and set up, the module built on its
    vocabulary: what `train` fits (and the overhead benchmark's plain loop steps)."""
    if cfg.training.get("num_threads"):
        torch.set_num_threads(cfg.training.num_threads)
    if trains_on_cuda(str(cfg.trainer.get("accelerator", "auto"))):
        # TF32 for the float32 matmuls that autocast leaves (Lightning's advice for tensor cores)
        torch.set_float32_matmul_precision("high")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: CharDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_config = build_model_config(cfg.model, vocab_size=datamodule.tokenizer.vocab_size)
    module = instantiate(
        cfg.module, model_config=model_config.to_dict(), compile=resolve_compile(cfg)
    )
    return datamodule, module


def build_trainer(
    cfg: DictConfig, output_dir: Path, extra_callbacks: list | None = None, **trainer_overrides
) -> tuple[L.Trainer, FaultGuard]:
    """The Trainer of a run: the configured callbacks and loggers, plus the promises every run
    keeps whatever the callbacks config says: the time budget, a validation at the end,
    interrupts and non-finite loss, the RNG state in checkpoints (tinyllm/callbacks/)."""
    guard = FaultGuard(output_dir)
    callbacks = [
        *instantiate_group(cfg.get("callbacks")),
        TimeBudget(parse_duration(cfg.training.get("time_budget"))),
        ValidateAtEnd(),
        guard,
        TrainingStateCallback(),
        *(extra_callbacks or []),
    ]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **trainer_overrides,
    )
    return trainer, guard


def _shown(path: Path) -> str:
    """A path as short as it can be said from the current folder."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def report(output_dir: Path, best: BestArtifactsCallback | None, tensorboard: bool) -> None:
    if best is None:
        log.info("run finished; outputs in %s", _shown(output_dir))
        return
    score = "n/a" if best.best_score is None else f"{best.best_score:.4f}"
    log.info("best val/loss %s; model artifacts in %s", score, _shown(best.dirpath))
    chat = command_name("tinyllm-chat", "python chat.py")
    log.info("chat with it:   %s %s", chat, _shown(best.dirpath))
    if tensorboard:  # logger=tensorboard (not csv, none, debug=fdr)
        log.info("watch curves:   tensorboard --logdir %s", _shown(output_dir))
