"""Loss, bits per character and perplexity of a saved model on a run's validation split or a file.

    python eval.py MODEL                          # the run's validation split
    python eval.py MODEL data.path=other.txt      # a whole text file (cleaned as in the run)
    python eval.py MODEL --json                   # JSON on stdout instead of the table

MODEL is a run folder, its best/ folder or a .ckpt file (see `tinyllm.artifacts.load_model`).
The data settings (corpus, cleaning, validation split) come from the run's config.yaml, found
next to best/ (or the checkpoints/ folder); `data.KEY=VALUE` arguments override them. Every
character of the split is scored: non-overlapping windows of the model's context length, each
predicting its next characters, batched, without gradients. The loss is the mean over all
predicted characters (the training's `val/loss` averages a capped number of windows instead, so
the two can differ slightly).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tinyllm.artifacts import ArtifactError, load_model
from tinyllm.corpus import CorpusError
from tinyllm.data import CharDataModule
from tinyllm.model import Transformer
from tinyllm.tokenizer import Tokenizer

RUN_CONFIG = "config.yaml"
SPLITS = ("val", "train", "all")


class EvaluationError(ValueError):
    """The evaluation cannot run; the message says what to change."""


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


def find_run_config(model_path: Path) -> Path | None:
    """The config.yaml of the run a model came from (run folder, best/ or checkpoints/x.ckpt)."""
    model_path = Path(model_path).resolve()
    folder = model_path.parent if model_path.is_file() else model_path
    for candidate in (folder, folder.parent):
        if (candidate / RUN_CONFIG).is_file():
            return (candidate / RUN_CONFIG).resolve()
    return None


def data_settings(model_path: Path, overrides: list[str]) -> tuple[dict, bool]:
    """The run's data settings with `data.KEY=VALUE` overrides; and whether data.path was given."""
    config_path = find_run_config(model_path)
    base: DictConfig = OmegaConf.create({"data": {}})
    if config_path is not None:
        run = OmegaConf.load(config_path)
        base = OmegaConf.create({"data": OmegaConf.to_container(run.get("data") or {})})
    bad = [o for o in overrides if not o.startswith("data.") or "=" not in o]
    if bad:
        raise EvaluationError(
            f"unknown argument {bad[0]!r}: only data.KEY=VALUE overrides are accepted "
            "(e.g. data.path=my.txt data.lowercase=true)"
        )
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise EvaluationError(f"invalid override: {str(e).splitlines()[0]}") from None
    settings = OmegaConf.to_container(merged.data, resolve=False)
    path_given = any(o.startswith("data.path=") for o in overrides)
    if config_path is None and not path_given:
        raise EvaluationError(
            f"no {RUN_CONFIG} found next to {model_path}: pass the text to evaluate on with "
            "data.path=FILE"
        )
    return settings, path_given


def load_text(settings: dict) -> tuple[str, CharDataModule]:
    """The corpus, read and cleaned exactly as the training run's datamodule did."""
    datamodule = make_datamodule(settings)
    return datamodule.load_text(), datamodule


def make_datamodule(settings: dict) -> CharDataModule:
    """The training run's datamodule, from its data settings."""
    accepted = inspect.signature(CharDataModule.__init__).parameters
    unknown = sorted(k for k in settings if k not in accepted and k != "_target_")
    if unknown:
        raise EvaluationError(f"unknown data setting data.{unknown[0]}")
    kwargs = {k: v for k, v in settings.items() if k in accepted and k != "self"}
    kwargs.setdefault("val_split", 0.1)
    try:
        return CharDataModule(**kwargs)
    except ValueError as e:
        raise EvaluationError(str(e)) from None


def corpus_ids(
    datamodule: CharDataModule, tokenizer: Tokenizer, skip_unknown: bool, use_cache: bool
) -> tuple[torch.Tensor, int]:
    """The corpus's ids under the model's tokenizer, and how many characters were skipped.

    The run's own corpus comes from its token cache (memory-mapped: a big corpus is never held
    as text) when the model's tokenizer is the one the cache was prepared with; other text is
    read and encoded whole, so characters the model never saw can be named or skipped.
    """
    if use_cache:
        prepared = datamodule.prepare()
        if prepared.tokenizer == tokenizer:
            return torch.from_numpy(prepared.ids), 0
    ids, skipped = encode(datamodule.load_text(), tokenizer, skip_unknown)
    dtype = torch.uint8 if tokenizer.vocab_size <= 256 else torch.int32
    return torch.tensor(ids, dtype=dtype), skipped


def encode(text: str, tokenizer: Tokenizer, skip_unknown: bool) -> tuple[list[int], int]:
    """Ids of `text`; a byte tokenizer knows every character, a character one may not."""
    unknown = tokenizer.unknown_characters(text)
    if unknown and not skip_unknown:
        shown = ", ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise EvaluationError(
            f"the text has {len(unknown)} character(s) outside the model's vocabulary: {shown}; "
            "pass --skip-unknown to drop them"
        )
    if unknown:
        dropped = set(unknown)
        kept = "".join(c for c in text if c not in dropped)
        return tokenizer.encode(kept), len(text) - len(kept)
    return tokenizer.encode(text), 0


def split_ids(ids: torch.Tensor, val_split: float, split: str) -> torch.Tensor:
    """The same contiguous split as CharDataModule.setup: validation is the last `val_split`."""
    if split == "all":
        return ids
    n_val = int(len(ids) * val_split)
    return ids[len(ids) - n_val :] if split == "val" else ids[: len(ids) - n_val]


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
        batch = torch.stack([ids[s : s + context + 1] for s in group]).long().to(device)
        logits = model(batch[:, :-1])
        nll = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(nll)
        count += batch[:, 1:].numel()
    return total / count, count, len(starts)


def evaluate(
    model_path: str | Path,
    overrides: list[str] = (),
    split: str | None = None,
    batch_size: int = 64,
    skip_unknown: bool = False,
    device: str = "cpu",
) -> EvalResult:
    """Evaluate a saved model; `split` defaults to val (run data) or all (data.path=FILE)."""
    model_path = Path(model_path).expanduser()
    loaded = load_model(model_path, device=device)
    settings, path_given = data_settings(model_path, list(overrides))
    split = split or ("all" if path_given else "val")
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {SPLITS}, got {split!r}")
    datamodule = make_datamodule(settings)
    ids, skipped = corpus_ids(datamodule, loaded.tokenizer, skip_unknown, not path_given)
    part = split_ids(ids, datamodule.val_split, split)
    context = loaded.model.config.context_length
    loss, predicted, windows = evaluate_ids(loaded.model, part, context, batch_size, device)
    return EvalResult(
        model=str(loaded.path or model_path),
        data=datamodule.source,
        split=split,
        characters=len(part),
        predicted=predicted,
        windows=windows,
        context=context,
        loss=loss,
        bpc=loss / math.log(2),
        perplexity=math.exp(loss),
        skipped_characters=skipped,
    )


def print_table(result: EvalResult) -> None:
    import rich
    from rich.table import Table

    table = Table(title="evaluation", show_header=False)
    table.add_column(style="cyan")
    table.add_column(justify="right")
    table.add_row("model", result.model)
    table.add_row("data", result.data)
    table.add_row("split", result.split)
    table.add_row("characters", f"{result.characters:,} in {result.windows:,} windows")
    if result.skipped_characters:
        table.add_row("skipped (unknown)", f"{result.skipped_characters:,}")
    table.add_row("loss (nats/char)", f"{result.loss:.4f}")
    table.add_row("bits per character", f"{result.bpc:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.3f}")
    rich.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="eval.py",
        description="Loss, bits per character and perplexity of a saved model.",
        epilog="Data overrides: data.path=FILE, data.lowercase=true, data.val_split=0.2, ...",
    )
    parser.add_argument("model", help="run folder, its best/ folder, or a .ckpt file")
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE (default: the run's data)")
    parser.add_argument(
        "--split", choices=SPLITS, help="val (default for the run's data), train, or all "
        "(default with data.path=FILE)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="windows per forward pass")
    parser.add_argument("--skip-unknown", action="store_true", help="drop unknown characters")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda if any)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON to FILE")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        result = evaluate(
            args.model, args.overrides, args.split, args.batch_size, args.skip_unknown, device
        )
    except (EvaluationError, ArtifactError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = json.dumps(asdict(result), indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(data + "\n", encoding="utf-8")
    if args.json:
        print(data)
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
