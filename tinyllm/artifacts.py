"""The best model as self-contained files that load without unpickling anything.

    best/
      model.safetensors   weights (tensors only: cannot run code)
      model_config.json   ModelConfig
      tokenizer.json      CharacterTokenizer or ByteTokenizer state
      metadata.json       val loss, step, data source, console defaults

`load_model` also accepts a run folder (uses its best/) or a Lightning .ckpt, which is read with
`torch.load(weights_only=True)` so a crafted pickle is refused rather than executed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model

from tinyllm.generation import MAX_TEMPERATURE, MAX_TOKENS, MAX_TOP_K
from tinyllm.io import first_line, write_atomic, write_atomic_with
from tinyllm.model import ModelConfig, Transformer
from tinyllm.runs import default_log_dir, find_run_config, newest_with, read_yaml
from tinyllm.tokenizer import CharacterTokenizer, Tokenizer, tokenizer_from_state

T = TypeVar("T")

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "metadata.json"
BEST_DIR = "best"


class ArtifactError(ValueError):
    """A model path cannot be loaded; the message says which file and what to do."""


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: CharacterTokenizer
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def lowercase(self) -> bool:
        """Whether the model's corpus was lowercased: prompts are then lowercased too."""
        return bool(self.metadata.get("lowercase"))


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_artifacts(
    directory: str | Path, model: Transformer, tokenizer: CharacterTokenizer, metadata: dict
) -> Path:
    """Write the four files, each atomically; metadata last, so it never describes older weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic_with(directory / WEIGHTS_FILE, lambda tmp: save_safetensors_model(model, tmp))
    _write_json(directory / CONFIG_FILE, model.config.to_dict())
    tokenizer.save_state(directory / TOKENIZER_FILE)
    _write_json(directory / METADATA_FILE, {"format": "tinyllm.artifacts", "version": 1} | metadata)
    return directory


def _check_inside(path: Path) -> None:
    """A model folder's files are its own: a link that leads out of the folder is not followed."""
    if path.is_symlink() and path.parent.resolve() not in path.resolve().parents:
        raise ArtifactError(
            f"{path} links outside its model folder (to {path.resolve()}); refusing to follow it: "
            "copy the file into the folder if you trust it"
        )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ArtifactError(f"{path.name} is missing from {path.parent}: re-export or retrain")
    _check_inside(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}): the file is damaged") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return data


# JSON types the loaders accept: a file with a string where a number belongs is refused with
# ArtifactError here, not deep inside torch or the console.
_CONFIG_TYPES = {"vocab_size": int, "context_length": int, "n_layer": int, "n_head": int,
                 "n_embd": int, "dropout": (int, float), "attn_dropout": bool,
                 "dropout_mask": str, "bias": bool, "positional": str,
                 "tie_weights": bool}  # fmt: skip
_METADATA_TYPES = {"val_loss": (int, float), "val_bpc": (int, float), "step": int, "epoch": int,
                   "train_loss": (int, float), "data_source": str, "created": str,
                   "console": dict, "format": str, "version": int,
                   "lowercase": bool}  # fmt: skip
# console defaults: the limits SamplingSettings enforces (tinyllm/generation.py)
CONSOLE_RANGES = {"max_tokens": (int, 1, MAX_TOKENS), "temperature": ((int, float), 0,
                   MAX_TEMPERATURE), "top_k": (int, 0, MAX_TOP_K)}  # fmt: skip


def _type_error(path: Path, key: str, value: object, expected) -> ArtifactError:
    names = expected if isinstance(expected, tuple) else (expected,)
    wanted = " or ".join("number" if t is float else t.__name__ for t in names if t is not int)
    wanted = wanted or "integer"
    return ArtifactError(f"{path}: {key} must be a {wanted}, got {value!r}: the file is damaged")


def _is(value: object, expected) -> bool:
    if isinstance(value, bool):  # JSON true/false are not numbers
        return expected is bool or (isinstance(expected, tuple) and bool in expected)
    return isinstance(value, expected)


def check_model_config(data: dict, path: Path) -> dict:
    """Refuse a model_config.json (or a checkpoint's) whose values have the wrong JSON types."""
    for key, expected in _CONFIG_TYPES.items():
        if key in data and not _is(data[key], expected):
            raise _type_error(path, key, data[key], expected)
    return data


def check_metadata(data: dict, path: Path) -> dict:
    """Refuse a metadata.json with wrong types or console defaults out of range (null is fine)."""
    for key, expected in _METADATA_TYPES.items():
        if data.get(key) is not None and not _is(data[key], expected):
            raise _type_error(path, key, data[key], expected)
    if "console" in data and data["console"] is None:
        del data["console"]  # null: no stored console defaults, as if the key were absent
    for key, (expected, low, high) in CONSOLE_RANGES.items():
        value = data.get("console", {}).get(key)
        if value is None:
            continue
        if not _is(value, expected):
            raise _type_error(path, f"console.{key}", value, expected)
        if not low <= value <= high:
            raise ArtifactError(
                f"{path}: console.{key} must be in [{low}, {high}], got {value}: "
                "the file is damaged"
            )
    return data


# tables the model computes rather than stores (sinusoidal, rotary): sized by the config alone,
# so bounded here; 2**27 floats is 512 MB, far above any model this project trains
MAX_COMPUTED_ELEMENTS = 2**27


def check_weights_match(
    config: ModelConfig, shapes: dict[str, tuple[int, ...]], where: Path, config_name: str
) -> None:
    """Refuse a config that disagrees with the shapes of the weights it comes with, before
    anything of the config's size is allocated: a lie such as `n_embd: 60000` beside a small
    file fails here with one line instead of asking for tens of gigabytes.

    `shapes` come from the safetensors header or the checkpoint's tensors (already in memory,
    bounded by the file's size); the expected shapes come from a model built on the meta device.
    """

    def mismatch(detail: str) -> ArtifactError:
        return ArtifactError(f"{where} does not match {config_name} or is damaged ({detail})")

    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.count(".") > 1}
    # the count first: a set of n_layer numbers for `n_layer: 1e12` would take all the memory
    if len(layers) != config.n_layer or layers != set(range(config.n_layer)):
        raise mismatch(f"the weights hold {len(layers)} layers but the config says "
                       f"n_layer={config.n_layer}")  # fmt: skip
    try:
        with torch.device("meta"):
            model = Transformer(config)
    except (RuntimeError, TypeError, ValueError) as e:  # sizes past what torch can describe
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise mismatch(f"sizes no tensor can have: {first[:120]}") from None
    computed = sum(b.numel() for name, b in model.named_buffers() if name not in shapes)
    if computed > MAX_COMPUTED_ELEMENTS:
        raise mismatch(f"context_length={config.context_length} asks for {computed:,} values "
                       "of position tables")  # fmt: skip
    tensors = model.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        # tied weights are stored once, under either name
        stored = [n for n, t in tensors.items() if t is tensor and n in shapes]
        if not stored:
            raise mismatch(f"the weights have no {name}")
        got, wanted = tuple(shapes[stored[0]]), tuple(tensor.shape)
        if got != wanted:
            raise mismatch(
                f"{stored[0]} is {list(got)} in the weights but the config (n_embd="
                f"{config.n_embd}, vocab_size={config.vocab_size}, context_length="
                f"{config.context_length}) needs {list(wanted)}"
            )
    unexpected = sorted(set(shapes) - set(tensors))
    if unexpected:
        raise mismatch(f"unexpected weights {unexpected[:3]}")


def _damaged(weights: Path, error: Exception) -> ArtifactError:
    return ArtifactError(
        f"{weights} does not match {CONFIG_FILE} or is damaged ({first_line(error)[:200]})"
    )


def _stored_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors header, without reading any tensor."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(weights, e) from None


def _read_parsed(path: Path, parse: Callable[[dict], T]) -> T:
    """A saved JSON file turned into its object by `parse`; its ValueError or TypeError (a value
    of the wrong kind) becomes one ArtifactError naming the file."""
    try:
        return parse(_read_json(path))
    except ArtifactError:
        raise
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{path} is invalid: {e}") from None


def read_tokenizer(path: str | Path) -> Tokenizer:
    """A saved tokenizer.json, of whichever kind wrote it; ArtifactError naming the file if it is
    missing, damaged or not a tokenizer this tinyllm reads."""
    return _read_parsed(Path(path), tokenizer_from_state)


def load_artifacts(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    config = _read_parsed(
        config_path, lambda data: ModelConfig.from_dict(check_model_config(data, config_path))
    )
    tokenizer = read_tokenizer(directory / TOKENIZER_FILE)
    _check_vocabulary(tokenizer, config, directory)
    metadata_path = directory / METADATA_FILE
    metadata = (
        check_metadata(_read_json(metadata_path), metadata_path) if metadata_path.exists() else {}
    )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{WEIGHTS_FILE} is missing from {directory}: re-export or retrain")
    _check_inside(weights)
    check_weights_match(config, _stored_shapes(weights), weights, CONFIG_FILE)
    model = Transformer(config)
    try:
        load_safetensors_model(model, weights, strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise _damaged(weights, e) from None
    _check_finite(model, weights)
    return LoadedModel(model.to(device).eval(), tokenizer, metadata, directory)


def _check_vocabulary(tokenizer: Tokenizer, config: ModelConfig, where: Path) -> None:
    """The tokenizer decodes every id the model can sample (and no more)."""
    if tokenizer.vocab_size != config.vocab_size:
        raise ArtifactError(
            f"{where}: tokenizer has {tokenizer.vocab_size} characters but the model expects "
            f"{config.vocab_size}: the files come from different runs"
        )


def _check_finite(model: Transformer, where: Path) -> None:
    """Weights that are NaN or infinite (a damaged file with an intact header) would give blank
    text and NaN losses without a word."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(
                f"{where}: weight {name} holds NaN or infinite values: the file is damaged; "
                "use another checkpoint (checkpoints/) or retrain"
            )


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The one way any .ckpt is read (chat, eval, export, ckpt_path=, resume=, Lightning's own
    restore): `torch.load(weights_only=True)` refuses a pickle that would build arbitrary objects,
    so a crafted file cannot run code. `mmap`: tensors stay in the file until used, so checking a
    large checkpoint does not read it into memory."""
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a safe tinyllm checkpoint"
        text = str(e).strip()
        if "Weights only load failed" in text:  # torch's advice would be to load it unsafely
            reason = "it holds pickled objects, which loading could run as code: refused"
        elif "zip" in text or "mmap" in text:
            reason = "not a file torch.save wrote, or cut short"
        else:
            reason = first_line(e)[:200]
        raise ArtifactError(
            f"checkpoint {path} cannot be loaded safely ({reason}); use a best/ artifacts folder "
            "or a checkpoint written by tinyllm"
        ) from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """A Lightning .ckpt of a tinyllm run, loaded without executing any pickled code."""
    path = Path(path)
    checkpoint = read_checkpoint(path, device)
    try:
        config = ModelConfig.from_dict(
            check_model_config(dict(checkpoint["hyper_parameters"]["model_config"]), path)
        )
        # Lightning stores a datamodule's state_dict under its class name
        data_state = checkpoint["CharDataModule"]
        tokenizer = tokenizer_from_state(data_state["tokenizer"])
        _check_vocabulary(tokenizer, config, path)
        lowercase = data_state.get("lowercase")
        if not isinstance(lowercase, bool):  # a checkpoint from before it was kept there
            lowercase = _run_lowercases(path)
        prefix = "model."
        state = {
            k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
        }
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        check_weights_match(config, shapes, path, "its model config")
        model = Transformer(config)
        model.load_state_dict(state, strict=True)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        reason = f"{type(e).__name__}: {e}"
        raise ArtifactError(f"{path} is not a tinyllm checkpoint ({reason})") from None
    _check_finite(model, path)
    metadata = {"step": checkpoint.get("global_step"), "source": "checkpoint",
                "lowercase": lowercase}  # fmt: skip
    return LoadedModel(model.to(device).eval(), tokenizer, metadata, path)


def _run_lowercases(checkpoint: Path) -> bool:
    """`data.lowercase` of the run a checkpoint belongs to, as its config.yaml says (False where
    there is none or it cannot be read)."""
    config = find_run_config(checkpoint)
    try:
        return read_yaml(config)["data"]["lowercase"] is True if config else False
    except (KeyError, TypeError):
        return False


def find_latest_best(outputs_dir: str | Path | None = None) -> Path:
    """The best/ folder most recently written by train.py under `outputs_dir` (default: where
    runs live, $TINYLLM_OUTPUTS or outputs/). Only the run folders train.py makes are searched,
    so other things kept there are never picked by accident."""
    outputs_dir = Path(outputs_dir) if outputs_dir is not None else default_log_dir()
    # metadata.json is written last (save_artifacts): a best/ being exported is not chosen yet
    run = newest_with(outputs_dir, f"{BEST_DIR}/{METADATA_FILE}")
    if run is None:
        raise ArtifactError(
            f"no trained model under {outputs_dir}/: run `python train.py` first or pass a path"
        )
    return run / BEST_DIR


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    outputs_dir: str | Path | None = None,
) -> LoadedModel:
    """A best/ folder, a run folder (its best/), a .ckpt file, or None for the latest run under
    `outputs_dir` (default: where runs live, tinyllm/runs.py)."""
    if path is None:
        return load_artifacts(find_latest_best(outputs_dir), device)
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        return load_checkpoint(path, device)
    if path.is_dir():
        if (path / WEIGHTS_FILE).exists() or (path / CONFIG_FILE).exists():
            return load_artifacts(path, device)
        if (path / BEST_DIR).is_dir():
            return load_artifacts(path / BEST_DIR, device)
    if not path.exists():
        raise ArtifactError(f"model path {path} does not exist")
    raise ArtifactError(
        f"no model at {path}: pass a run folder, its best/ folder, or a .ckpt checkpoint"
    )
