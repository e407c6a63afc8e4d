"""The composed Hydra config's checks, run before anything expensive happens.

The YAML under configs/ is the single source of values; RULES only says what each value may
be. `validate` turns every mistake into one `ConfigError` line that names the key.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tinyllm.corpus import known_encoding
from tinyllm.runs import default_log_dir, unique_folder
from tinyllm.tokenizer import TOKENIZER_KINDS

# the values training.optimizer, .optimizer_impl and .lr_schedule take (tinyllm/optimizers.py,
# tinyllm.module.LRPlan); here, free of torch, so that train.py checks a run's values and watches
# for Ctrl-C before the seconds of torch's import (tinyllm/interrupts.py)
OPTIMIZERS = ("adam", "adamw", "muon")
# auto: torch's default; foreach: multi-tensor kernels; fused: one fused kernel; loop: per tensor
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "loop")
# the learning rate's decay after warmup
LR_SCHEDULES = ("cosine", "wsd")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and what it may be."""


# bf16 is chosen on a CPU with AVX512-BF16 alone only when its matmuls take at most this share
# of fp32's: autocast's casts and the fp32 elementwise work eat the rest of the gain
BF16_MATMUL_SHARE = 0.8


def matmul_seconds(dtype, rows: int = 2048, width: int = 192, repeats: int = 8) -> float:
    """Best time of one (rows x width) @ (width x 4 width) matmul: the default model's MLP."""
    import time

    import torch

    a, b = torch.randn(rows, width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


# why `fastest_precision` chose as it did, for the run's log (train() writes it): it may first
# be resolved before logging is set up (train.py's checks before Hydra starts)
PRECISION_NOTES: list[str] = []


@functools.cache
def fastest_precision() -> str:
    """`${tinyllm.precision:}`: bf16-mixed where the hardware runs bf16 faster, else 32-true.

    A GPU with bf16 and a CPU with AMX get bf16-mixed (1.7x the tokens/s of fp32 on a Xeon with
    AMX, benchmarks/RESULTS.md); a CPU without native bf16 gets fp32, bf16 being emulated there.
    AVX512-BF16 alone is not enough to tell: bf16 trained 2x faster than fp32 on an AMD EPYC
    but 1.6x slower on an Intel Xeon VM, so there a 0.1-second matmul test decides (once per
    process). `trainer.precision=...` chooses without measuring.
    """
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    # private, so looked up: a torch without them counts as a CPU without native bf16
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    if amx or not avx512_bf16:
        return "bf16-mixed" if amx else "32-true"
    fp32, bf16 = matmul_seconds(torch.float32), matmul_seconds(torch.bfloat16)
    choice = "bf16-mixed" if bf16 <= BF16_MATMUL_SHARE * fp32 else "32-true"
    PRECISION_NOTES.append(
        f"precision {choice}: a bf16 matmul takes {100 * bf16 / fp32:.0f}% of fp32's on this "
        "CPU (AVX512-BF16, no AMX)"
    )
    return choice


OmegaConf.register_new_resolver("tinyllm.precision", fastest_precision, replace=True)
# where runs live (tinyllm/runs.py): $TINYLLM_OUTPUTS or <root>/outputs, and one folder per run
OmegaConf.register_new_resolver(
    "tinyllm.log_dir", lambda root=".": str(default_log_dir(root)), replace=True
)
OmegaConf.register_new_resolver("tinyllm.unique", unique_folder, replace=True)


# `model.compile=auto` compiles a run only when it is long enough to repay the one-off
# compilation (~30 s on 2 CPU cores, benchmarks/RESULTS.md "Speed switches")
AUTO_COMPILE_MIN_SECONDS = 300
AUTO_COMPILE_MIN_STEPS = 1000


def resolve_compile(cfg: DictConfig) -> bool:
    """Whether this run's training forward goes through torch.compile (`model.compile`).

    true and false choose; auto compiles when the run is long (a time budget of 5 minutes or
    more and at least 1,000 steps, or 1,000+ steps and no budget) and torch's compiler can run
    here (a C++ compiler for the CPU, Triton for a GPU). The choice and its reason are logged.
    """
    choice = OmegaConf.select(cfg, "model.compile", default=False)
    if choice != "auto":
        return bool(choice)
    budget = parse_duration(OmegaConf.select(cfg, "training.time_budget", default=None))
    steps = int(OmegaConf.select(cfg, "trainer.max_steps", default=-1) or -1)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if budget is not None and budget < AUTO_COMPILE_MIN_SECONDS:
        reason = f"a time budget under {AUTO_COMPILE_MIN_SECONDS // 60} minutes"
    elif 0 <= steps < AUTO_COMPILE_MIN_STEPS or (budget is None and steps < 0):
        reason = f"fewer than {AUTO_COMPILE_MIN_STEPS:,} steps"
    else:
        reason = compiler_missing(accelerator)
    if reason:
        log.info("model.compile=auto: not compiling (%s)", reason)
        return False
    log.info("model.compile=auto: compiling the training forward (a long run repays it)")
    return True


def trains_on_cuda(accelerator: str) -> bool:
    """Whether a Trainer with `trainer.accelerator=accelerator` runs on a CUDA GPU here."""
    import torch

    return accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def compiler_missing(accelerator: str) -> str | None:
    """Why torch.compile cannot run here, or None: inductor needs Triton on a GPU and a C++
    compiler on the CPU."""
    import os
    import shutil

    if trains_on_cuda(accelerator):
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    compilers = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    if not any(shutil.which(c) for c in compilers if c):
        return "no C++ compiler found: install g++ or clang++, or set CXX"
    return None


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, key: str = "training.time_budget") -> float | None:
    """Seconds from `600`, `"90s"`, `"10m"`, `"1h30m"`, `"1.5h"` or `"DD:HH:MM:SS"` (null: none)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(:\d+){1,3}", text):  # [[DD:]HH:]MM:SS, as trainer.max_time
            seconds = 0.0
            for part, unit in zip(reversed(text.split(":")), (1, 60, 3600, 86400), strict=False):
                seconds += int(part) * unit
        elif re.fullmatch(r"(\d+(\.\d+)?[smhd])+", text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
            )
        elif re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
    if seconds is None or not seconds > 0:
        raise ConfigError(
            f"{key} must be a positive duration such as 600, 90s, 10m, 1h30m or 00:00:10:00 "
            f"(null: no time limit), got {value!r}"
        )
    return seconds


# --- what each user-settable value may be, whatever key path sets it ----------------------------
# The training recipe is what users usually change, and other groups read it through
# interpolations (data.batch_size: ${training.batch_size}): its rules come first, so a bad
# `training.batch_size=0` is named as the user wrote it; a value set directly on those groups
# (`data.batch_size=0`, `module.learning_rate=-1`) gets the same kind of line.


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(low: int, nullable: bool = False):
    def check(value) -> bool:
        return (nullable and value is None) or (_integer(value) and value >= low)

    return check, f"an integer >= {low}" + (" or null" if nullable else "")


def _at_least(low: float, nullable: bool = False):
    def check(value) -> bool:
        return (nullable and value is None) or (_number(value) and value >= low)

    return check, f"a number >= {low}" + (" or null" if nullable else "")


def _between(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    def check(value) -> bool:
        return (
            _number(value)
            and (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high)
        )

    brackets = ("(" if low_open else "[", ")" if high_open else "]")
    return check, f"a number in {brackets[0]}{low}, {high}{brackets[1]}"


def _one_of(choices: tuple[str, ...]) -> tuple:
    return (lambda v: v in choices), f"one of {', '.join(choices)}"


def _duration(value) -> bool:
    try:
        parse_duration(value)
    except ConfigError:
        return False
    return True


def _text(value) -> bool:
    """Not blank: `data.path=` is "", which as a path would be the current folder."""
    return isinstance(value, str) and value.strip() != ""


def _path(what: str):
    """A path or null, as Hydra parses it (`data.path=2024` is a number): not blank."""

    def check(value) -> bool:
        return value is None or (isinstance(value, (str, int, float)) and _text(str(value)))

    return check, what


def _devices(value) -> bool:
    """What Lightning's `devices` takes: a count, -1 (all), "auto", or a list of indices."""
    if isinstance(value, str):
        return value == "auto" or (value.lstrip("-").isdigit() and _devices(int(value)))
    if isinstance(value, list):
        return bool(value) and all(_integer(i) and i >= 0 for i in value)
    return _integer(value) and (value >= 1 or value == -1)


_POSITIVE = (lambda v: _number(v) and v > 0, "a number > 0")
_FLAG = (lambda v: isinstance(v, bool), "true or false")
_BETAS = (
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_between(0, 1, high_open=True)
                                                                   [0](b) for b in v),
    "two numbers in [0, 1)",
)  # fmt: skip
_MAX_STEPS = (lambda v: _integer(v) and (v == -1 or v >= 1), "an integer >= 1 (or -1: no limit)")
_MAX_EPOCHS = (
    lambda v: v is None or (_integer(v) and (v == -1 or v >= 1)),
    "an integer >= 1 (or -1/null: no limit)",
)
_VAL_CHECK = (
    lambda v: (_integer(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
    "an integer >= 1 (steps) or a fraction in (0, 1]",
)

RULES: dict[str, tuple] = {
    # numpy's seeds (Lightning's seed_everything); data.seed is ${seed} unless set apart
    "seed": (lambda v: _integer(v) and 0 <= v < 2**32, "an integer from 0 to 4294967295"),
    **dict.fromkeys(
        [
            f"training.{key}"
            for key in (
                "epochs",
                "batch_size",
                "max_context",
                "val_interval",
                "sample_frequency",
                "sample_tokens",
                "console_max_tokens",
            )
        ],
        _int_at_least(1),
    ),
    "training.learning_rate": _POSITIVE,
    "training.val_split": _between(0, 1, low_open=True, high_open=True),
    "training.gradient_clip": _at_least(0),  # 0: no clipping
    "training.temperature": _at_least(0),
    "training.sample_prompt": (lambda v: isinstance(v, str), "text (a number quoted: \"'42'\")"),
    "training.console_temperature": _at_least(0),
    "training.console_top_k": _int_at_least(0),  # 0: off
    "training.optimizer": _one_of(OPTIMIZERS),
    "training.optimizer_impl": _one_of(OPTIMIZER_IMPLS),
    "training.weight_decay": _at_least(0),
    "training.betas": _BETAS,
    "training.warmup_steps": _int_at_least(0),
    "training.lr_decay_steps": _int_at_least(1, nullable=True),
    "training.lr_schedule": _one_of(LR_SCHEDULES),
    "training.lr_cooldown": _between(0, 1, low_open=True),
    "training.min_lr_ratio": _between(0, 1),
    "training.muon_lr_scale": _POSITIVE,
    "training.muon_momentum": _between(0, 1, high_open=True),
    "training.muon_ns_steps": (lambda v: _integer(v) and 1 <= v <= 20, "an integer from 1 to 20"),
    "training.muon_momentum_warmup": _int_at_least(0),  # 0: off
    "training.ema_decay": _between(0, 1, high_open=True),  # 0: off
    "training.num_threads": _int_at_least(1, nullable=True),  # null: torch's default
    "training.time_budget": (
        _duration,
        "a positive duration such as 600, 90s, 10m, 1h30m or 00:00:10:00 (null: no time limit)",
    ),
    "data.path": _path(
        "a text file, a folder or a quoted glob, e.g. data.path=my.txt (null: the plays)"
    ),
    "data.tokenizer": _one_of(tuple(TOKENIZER_KINDS)),
    "data.encoding": (
        lambda v: _text(v) and known_encoding(v),
        "a text encoding Python knows, such as utf-8 or latin-1",
    ),
    "data.lowercase": _FLAG,
    "data.normalize_whitespace": _FLAG,
    "data.keep_stage_directions": _FLAG,
    "data.pin_memory": _FLAG,
    "data.cache_dir": _path("a folder (null: prepare the corpus in memory)"),
    "data.batch_size": _int_at_least(1),
    "data.max_context": _int_at_least(1),
    "data.val_split": _between(0, 1, low_open=True, high_open=True),
    "data.num_workers": _int_at_least(0),
    "data.train_windows_per_epoch": _int_at_least(1, nullable=True),
    "data.max_val_windows": _int_at_least(1, nullable=True),
    "data.seed": _int_at_least(0),
    "module.learning_rate": _POSITIVE,
    "module.weight_decay": _at_least(0),
    "module.betas": _BETAS,
    "module.warmup_steps": _int_at_least(0),
    "module.lr_decay_steps": _int_at_least(1, nullable=True),
    "module.min_lr_ratio": _between(0, 1),
    "module.ema_decay": _between(0, 1, high_open=True),
    "trainer.max_steps": _MAX_STEPS,
    "trainer.max_epochs": _MAX_EPOCHS,
    "trainer.min_steps": _int_at_least(0, nullable=True),
    "trainer.val_check_interval": _VAL_CHECK,
    "trainer.log_every_n_steps": _int_at_least(1),
    "trainer.gradient_clip_val": _at_least(0, nullable=True),
    "trainer.accumulate_grad_batches": _int_at_least(1),
    "trainer.num_nodes": _int_at_least(1),
    "trainer.devices": (_devices, 'a count (>= 1), -1 for all, "auto" or a list of indices'),
    "trainer.num_sanity_val_steps": _int_at_least(-1),
    "callbacks.early_stopping.patience": _int_at_least(0),
    "callbacks.early_stopping.min_delta": _at_least(0),
    "callbacks.model_checkpoint.save_top_k": _int_at_least(-1),
    "callbacks.sample_text.every_n_steps": _int_at_least(1),
    "callbacks.sample_text.max_new_tokens": _int_at_least(1),
    "callbacks.sample_text.temperature": _between(0, 100),
    "callbacks.best_artifacts.console_max_tokens": _int_at_least(1),
    "callbacks.best_artifacts.console_temperature": _between(0, 100),
    "callbacks.best_artifacts.console_top_k": _int_at_least(0),
}

_TRAINING_KEYS = {key.split(".", 1)[1] for key in RULES if key.startswith("training.")}


def check_rules(cfg: DictConfig) -> None:
    """Every value named in RULES that the composed config has (a group or callback switched
    off has none) is what its rule says, or one ConfigError line names it."""
    for key, (check, wanted) in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key} cannot be resolved: {error_line(e, named=key)}") from None
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if value is None and OmegaConf.select(cfg, key, default="absent") == "absent":
            continue
        if not check(value):
            raise ConfigError(f"{key} must be {wanted}, got {value!r}")
    unknown = sorted(set(cfg.get("training") or ()) - _TRAINING_KEYS)
    if unknown:  # `+training.lr=1`: a setting nothing reads
        raise ConfigError(
            f"training.{unknown[0]} is not a training setting: configs/training/default.yaml "
            "lists them"
        )


def error_line(error: BaseException, *, named: str = "") -> str:
    """A Hydra or OmegaConf error as one line, for every command that composes a config.

    OmegaConf's first line says it all (the lines below repeat the key and its type). Hydra's
    further lines are the fix it suggests or the options it lists: kept, joined ("Available
    options in 'model': small, tiny"), its config search path left out. A cause (the
    OmegaConf error behind a Hydra one) follows the problem; `named`: the text it follows.
    """
    override = getattr(error, "override", None)  # an override Hydra's grammar cannot read
    if isinstance(override, str):
        key, _, value = override.partition("=")
        if value.startswith("~") or "/" in value:  # a path the grammar reads only quoted
            return f"cannot read {override!r}: quote a path, as in \"{key}='{value}'\""
        return f"cannot read {override!r}: {error_line(Exception(str(error)), named=named)}"
    parts: list[str] = []
    for raw in str(error).split("Config search path:")[0].splitlines():
        line = raw.strip()
        if line and raw.startswith("\t") and parts:  # one option of the list above it
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        elif line:
            parts.append(line)
    if isinstance(error, OmegaConfBaseException):
        parts = parts[:1]
    first = parts[0] if parts else type(error).__name__
    full_key = getattr(error, "full_key", None)
    if full_key and full_key not in first + named:  # OmegaConf's type errors name it only below
        first = f"{full_key}: {first}"
    if error.__cause__ is not None:
        first = f"{first.rstrip('.')}: {error_line(error.__cause__, named=first)}"
    return "; ".join(part.rstrip(".") for part in [first, *parts[1:]])


def validate(cfg: DictConfig) -> None:
    """Check the composed config: every value its rule (RULES), the model's shape, and what
    only the combination of values decides."""
    check_rules(cfg)
    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()}
    model.pop("_target_", None)
    # `model.compile` is a training switch (torch.compile), not part of the saved ModelConfig
    if model.pop("compile", False) not in (True, False, "auto"):
        raise ConfigError(f"model.compile must be true, false or auto, got {cfg.model.compile!r}")
    model.setdefault("vocab_size", 1)  # filled from the tokenizer later
    from tinyllm.model import ModelConfig  # torch: loaded once a value needs checking

    try:
        ModelConfig.from_dict(model)
    except (TypeError, ValueError) as e:
        raise ConfigError(error_line(e)) from None
    precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    training = cfg.training
    if training.optimizer_impl == "fused" and training.gradient_clip > 0 and "mixed" in precision:
        # Lightning's mixed-precision plugin refuses to clip what a fused optimizer unscales itself
        raise ConfigError(
            f"training.optimizer_impl=fused cannot clip gradients under trainer.precision="
            f"{precision}: set training.gradient_clip=0, training.optimizer_impl=foreach "
            "or trainer.precision=32-true"
        )
    for group in ("callbacks", "logger"):  # each entry is instantiated: a config, or null (off)
        entries = cfg.get(group)
        for name, entry in entries.items() if isinstance(entries, DictConfig) else ():
            if entry is not None and not isinstance(entry, DictConfig):
                raise ConfigError(
                    f"{group}.{name} must be a config with a _target_ (or null to switch it "
                    f"off), got {entry!r}"
                )


# Lightning loggers whose package is one of our optional extras (pyproject.toml): the logger's
# class → (the package it imports, the extra that installs it)
LOGGER_EXTRAS = {"MLFlowLogger": ("mlflow", "mlflow"), "WandbLogger": ("wandb", "wandb")}


def check_machine(cfg: DictConfig) -> None:
    """What the config asks of this machine (after `validate`, which checks the config alone:
    each logger entry a config or null): a GPU config without a GPU, or a logger without its
    package, stops here, before the corpus is prepared and the run's files written."""

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("gpu", "cuda") and not trains_on_cuda(accelerator):
        raise ConfigError(
            f"trainer.accelerator={accelerator}, but this machine has no CUDA GPU torch can use: "
            "train with trainer=cpu (or trainer.accelerator=auto)"
        )
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if devices in (-1, "-1") and not trains_on_cuda(accelerator):
        # Lightning: "devices selected with CPUAccelerator should be an int > 0"
        raise ConfigError(
            "trainer.devices=-1 (every GPU) needs a CUDA GPU, and this machine has none: on a "
            "CPU give a count of processes, e.g. trainer=ddp trainer.devices=2"
        )
    for name, entry in (cfg.get("logger") or {}).items():
        target = str(entry["_target_"]) if entry and "_target_" in entry else ""
        package, extra = LOGGER_EXTRAS.get(target.rsplit(".", 1)[-1], (None, None))
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger={name} needs {package}, which is not installed: "
                f'pip install -e ".[{extra}]" (or choose another logger=)'
            )


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a Rich tree, one branch per top-level group."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", style="bold", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="cyan", guide_style="dim")
        is_group = isinstance(value, DictConfig)
        text = OmegaConf.to_yaml(value, resolve=True) if is_group else str(value)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich.print(tree)
