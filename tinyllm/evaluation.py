"""Loss, bits per character and perplexity of a saved model on a run's validation split or a file.

    python eval.py MODEL                                 # the run's validation split
    python eval.py model_path=MODEL data.path=other.txt  # a whole file (cleaned as in the run)
    python eval.py MODEL --json                          # JSON on stdout instead of the table

The settings are tinyllm/configs/eval.yaml, composed by Hydra with the overrides training takes
(`data.KEY=VALUE`, ...); tinyllm/cli.py turns the positional MODEL and the --flags into them.
MODEL is a run folder, its best/ folder or a .ckpt file (see `tinyllm.artifacts.load_model`).
The text is the run's data settings (its config.yaml, found next to best/ or checkpoints/) with
what the overrides change, read, cleaned, encoded and split by the run's datamodule
(`CharDataModule`, which maps the token cache), in the model's vocabulary. Every character of
the split is scored: non-overlapping windows of the model's context length, each predicting its
next characters, batched, without gradients. The loss is the mean over all predicted characters
(the training's `val/loss` averages a capped number of windows instead, so the two can differ
slightly).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tinyllm.artifacts import load_model
from tinyllm.config import ConfigError, check_rules, error_line
from tinyllm.data import CharDataModule
from tinyllm.io import write_atomic
from tinyllm.model import Transformer
from tinyllm.runs import RUN_CONFIG, find_run_config
from tinyllm.tokenizer import Tokenizer, UnknownCharactersError

SPLITS = ("val", "train", "all")


class EvaluationError(ValueError):
    """The evaluation cannot run; the message says what to change."""


@dataclass
class EvalSettings:
    """eval.yaml's own keys, type-checked by OmegaConf (`batch_size=abc` stops with the key)."""

    model_path: str = MISSING
    split: str | None = None
    batch_size: int = 64
    skip_unknown: bool = False
    device: str = "auto"
    json: bool = False
    output: str | None = None


@dataclass
class EvalResult:
    model: str
    data: str
    split: str
    characters: int
    predicted: int
    windows: int
    context: int
    loss: float
    bpc: float
    perplexity: float
    skipped_characters: int = 0
    unit: str = "character"  # what a token is: character, or byte (data.tokenizer=bytes)


# --- the config ----------------------------------------------------------------------------------


def eval_config(overrides: Sequence[str] = (), **settings: object) -> DictConfig:
    """eval.yaml composed with `overrides`, as `python eval.py OVERRIDES` sees it.

    `settings` (model_path=..., split=...) are set after composing, values as they are (the
    Python API: no override grammar to quote for). In the result, `data` is resolved: the
    model's run data (its config.yaml) with every data value the overrides change, or the
    composed data when the model has no run; `split` is filled in; `run_config` names the file.
    Hydra's compose API: no run folder, no log file, nothing written.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = list(overrides)
    try:
        keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]
        with initialize_config_module("tinyllm.configs", version_base="1.3"):
            defaults = compose("eval")
            _check_keys(overrides, keys, defaults)
            cfg = compose("eval", overrides=overrides)
        given = OmegaConf.masked_copy(cfg, [f.name for f in fields(EvalSettings)])
        own = OmegaConf.merge(OmegaConf.structured(EvalSettings), given, settings)
        composed = OmegaConf.to_container(cfg.data, resolve=True)
        default_data = OmegaConf.to_container(defaults.data, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise EvaluationError(error_line(e)) from None
    if OmegaConf.is_missing(own, "model_path"):
        raise EvaluationError(
            "give the model to evaluate: MODEL (or model_path=MODEL), a run folder, its "
            "best/ folder or a .ckpt file"
        )
    if own.split is not None and own.split not in SPLITS:
        raise EvaluationError(
            f"split must be one of {', '.join(SPLITS)}, got {own.split!r} (e.g. split=train)"
        )
    if own.batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {own.batch_size} (e.g. batch_size=64)")
    path_given = "data.path" in keys
    if own.split is None:
        own.split = "all" if path_given else "val"
    run_config = find_run_config(Path(own.model_path).expanduser())
    data = composed
    if run_config is not None:
        changed = {
            key: value
            for key, value in composed.items()
            if f"data.{key}" in keys or default_data.get(key) != value
        }
        data = {**_run_data(run_config), **changed}
    _check_values(cfg, data)
    return OmegaConf.create(
        {
            **OmegaConf.to_container(own),
            "data": data,
            "run_config": None if run_config is None else str(run_config),
        }
    )


def _check_keys(overrides: list[str], keys: list[str], defaults: DictConfig) -> None:
    """Overrides name eval.yaml's keys (Hydra would also take `+trainer.x=1`, unused here)."""
    roots = {*defaults.keys(), "hydra"}  # keys(): `in` is False for ??? (model_path)
    for override, key in zip(overrides, keys, strict=True):
        if key.split(".")[0].split("@")[0] not in roots:
            own = ", ".join(f"{f.name}=" for f in fields(EvalSettings))
            raise EvaluationError(
                f"unknown argument {override!r}: eval.py takes its own settings ({own}) and "
                "only data.KEY=VALUE overrides (e.g. data.path=my.txt data.lowercase=true; "
                "also training.val_split=, paths.KEY=)"
            )


def _check_values(cfg: DictConfig, data: dict) -> None:
    """What train.py would refuse, in its words (tinyllm.config's checks, not a second set):
    the composed training recipe and seed, which data reads (`training.val_split=abc`), and the
    data settings evaluated (`data.lowercase=abc`, `data.path=`)."""
    try:
        check_rules(cfg)
        check_rules(OmegaConf.create({"data": data}))
    except ConfigError as e:
        raise EvaluationError(str(e)) from None


def _run_data(run_config: Path) -> dict:
    """The data settings a run was trained with (its resolved config.yaml)."""
    try:
        run = OmegaConf.load(run_config)
        data = run.get("data") if isinstance(run, DictConfig) else None
        return OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else {}
    except (OSError, ValueError, OmegaConfBaseException) as e:
        raise EvaluationError(
            f"{run_config} cannot be read ({error_line(e)}): give the text with data.path=FILE"
        ) from None


# --- the ids, through the datamodule -------------------------------------------------------------


def datamodule_for(data: dict, tokenizer: Tokenizer) -> CharDataModule:
    """The run's datamodule for these settings, encoding in the model's vocabulary.

    Built directly rather than by `instantiate`: a run folder is not trusted to name the class
    (`_target_`) that runs."""
    accepted = inspect.signature(CharDataModule.__init__).parameters
    unknown = sorted(k for k in data if k not in accepted and k != "_target_")
    if unknown:
        raise EvaluationError(f"unknown data setting data.{unknown[0]}")
    kwargs = {k: v for k, v in data.items() if k in accepted and k != "self"}
    kwargs["tokenizer"] = tokenizer.kind  # the model's ids, whatever the run's data said
    try:
        datamodule = CharDataModule(**kwargs)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    datamodule.tokenizer = tokenizer
    return datamodule


def split_ids(cfg: DictConfig, tokenizer: Tokenizer) -> tuple[torch.Tensor, int, CharDataModule]:
    """The ids of `cfg.split` of `cfg.data` in `tokenizer`'s vocabulary; how many ids were left
    out as unknown (`cfg.skip_unknown`); and the datamodule that read, encoded and split them."""
    if cfg.run_config is None and cfg.data.get("path") is None:
        raise EvaluationError(
            f"no {RUN_CONFIG} found next to {cfg.model_path}: pass the text to evaluate on with "
            "data.path=FILE"
        )
    datamodule = datamodule_for(OmegaConf.to_container(cfg.data), tokenizer)
    prepared = datamodule.prepare()
    try:
        ids = torch.from_numpy(datamodule.encoded(prepared, drop_unknown=cfg.skip_unknown))
    except UnknownCharactersError as e:
        unknown = e.characters
        shown = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise EvaluationError(
            f"the text has {len(unknown)} character(s) outside the model's vocabulary: {shown}; "
            "pass --skip-unknown (skip_unknown=true) to drop them"
        ) from None
    train, val = datamodule.split(ids)
    part = {"all": ids, "train": train, "val": val}[cfg.split]
    return part, len(prepared.ids) - len(ids), datamodule


# --- scoring -------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_ids(
    model: Transformer, ids: torch.Tensor, context: int, batch_size: int = 64, device="cpu"
) -> tuple[float, int, int]:
    """Mean next-character cross-entropy (nats) over every character of `ids` after the first.

    Non-overlapping windows of `context + 1` ids (the last one may be shorter); returns the loss,
    the number of predicted characters and the number of windows.
    """
    if len(ids) < 2:
        raise EvaluationError(f"need at least 2 characters to evaluate, got {len(ids)}")
    model.eval()
    starts = list(range(0, len(ids) - 1, context))
    full = [s for s in starts if s + context + 1 <= len(ids)]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)]
    if len(full) < len(starts):
        groups.append([starts[-1]])  # the shorter tail window
    total, count = 0.0, 0
    for group in groups:
        batch = torch.stack([ids[s : s + context + 1].long() for s in group]).to(device)
        logits = model(batch[:, :-1])
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += batch[:, 1:].numel()
    return total / count, count, len(starts)


def _device(name: str) -> str:
    """`device=` as torch names it; one line for a device this machine does not have."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except (RuntimeError, TypeError):
        kind = None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}  # fmt: skip
    if not available.get(kind):
        have = ", ".join(k for k, ok in available.items() if ok)
        raise EvaluationError(f"device {name!r} is not available here: use --device auto or one "
                              f"of {have}")  # fmt: skip
    return name


def evaluate_config(cfg: DictConfig) -> EvalResult:
    """Evaluate the model an `eval_config` names on its split."""
    device = _device(cfg.device)
    model_path = Path(cfg.model_path).expanduser()
    loaded = load_model(model_path, device=device)
    if cfg.run_config is None and loaded.lowercase:  # a model without its run's config.yaml:
        cfg.data.lowercase = True  # its text is read lowercased, as its corpus was
    part, skipped, datamodule = split_ids(cfg, loaded.tokenizer)
    context = loaded.model.config.context_length
    loss, predicted, windows = evaluate_ids(loaded.model, part, context, cfg.batch_size, device)
    return EvalResult(
        model=str(loaded.path or model_path),
        data=datamodule.source,
        split=cfg.split,
        characters=len(part),
        predicted=predicted,
        windows=windows,
        context=context,
        loss=loss,
        bpc=loss / math.log(2),
        perplexity=math.exp(loss),
        skipped_characters=skipped,
        unit=loaded.tokenizer.unit,
    )


def evaluate(
    model_path: str | Path,
    overrides: Sequence[str] = (),
    split: str | None = None,
    batch_size: int | None = None,
    skip_unknown: bool | None = None,
    device: str = "cpu",
) -> EvalResult:
    """Evaluate a saved model (the Python API of `eval.py MODEL OVERRIDES`); `split` defaults to
    val (the run's data) or all (data.path=FILE)."""
    given = {"split": split, "batch_size": batch_size, "skip_unknown": skip_unknown}
    settings = {k: v for k, v in given.items() if v is not None}
    cfg = eval_config(overrides, model_path=str(model_path), device=device, **settings)
    return evaluate_config(cfg)


# --- the report ----------------------------------------------------------------------------------


def report(result: EvalResult, cfg: DictConfig) -> None:
    """Print the result (a table, or JSON with `json`) and write the JSON to `output`."""
    data = json.dumps(asdict(result), indent=2, ensure_ascii=False)
    if cfg.output:
        output = Path(cfg.output).expanduser()
        try:
            write_atomic(output, (data + "\n").encode("utf-8"))
        except OSError as e:
            raise EvaluationError(
                f"cannot write {output} ({e.strerror or e}): set output= to a writable file"
            ) from None
    if cfg.json:
        print(data)
    else:
        print_table(result)


def print_table(result: EvalResult) -> None:
    import rich
    from rich.table import Table

    table = Table(title="evaluation", show_header=False)
    table.add_column(style="cyan")
    table.add_column(justify="right")
    table.add_row("model", result.model)
    table.add_row("data", result.data)
    table.add_row("split", result.split)
    unit = result.unit
    table.add_row(f"{unit}s", f"{result.characters:,} in {result.windows:,} windows")
    if result.skipped_characters:
        table.add_row("skipped (unknown)", f"{result.skipped_characters:,}")
    table.add_row(f"loss (nats/{unit[:4]})", f"{result.loss:.4f}")
    table.add_row(f"bits per {unit}", f"{result.bpc:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.3f}")
    rich.print(table)


def main(argv: list[str] | None = None) -> int:
    """`eval.py ARGS` in-process (the command line is handled by tinyllm.cli.eval_main)."""
    from tinyllm.cli import eval_main

    return eval_main(argv)
