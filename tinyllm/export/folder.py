"""Writing the export: every file into a temporary folder, checked, then renamed into place."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save
from torch import nn

from tinyllm.artifacts import LoadedModel, load_model
from tinyllm.export.architectures import ExportError, hf_config, hf_tensors, refuse_unmapped
from tinyllm.export.card import console_defaults, generation_config, model_card, read_run_config
from tinyllm.export.tokenizer_files import tokenizer_files

if TYPE_CHECKING:
    from tinyllm.export.check import Checker, CheckReport


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_folder(loaded: LoadedModel, folder: Path, run_config: dict | None = None) -> None:
    """Write every file of the export into `folder` (an empty, temporary folder)."""
    run_config = run_config or {}
    model = loaded.model
    tensors = hf_tensors(model)
    dtype = model.token_embedding.weight.dtype
    console = console_defaults(loaded.metadata, run_config)
    # bytes written by Python, not save_file: that creates the file 0600, ignoring the umask
    (folder / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    eps = {norm.eps for norm in model.modules() if isinstance(norm, (nn.LayerNorm, nn.RMSNorm))}
    if len(eps) != 1:  # one eps in the stock configs
        raise ExportError(f"the model's norms do not share one eps ({sorted(eps)})")
    _write_json(folder / "config.json", hf_config(model.config, dtype, eps.pop()))
    context = model.config.context_length
    _write_json(folder / "generation_config.json", generation_config(console, context))
    for name, data in tokenizer_files(loaded.tokenizer, context, loaded.lowercase).items():
        _write_json(folder / name, data)
    (folder / "README.md").write_text(model_card(loaded, run_config, console), encoding="utf-8")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def prepare_destination(out_dir: Path, source: Path | None, force: bool) -> None:
    """Refuse an OUT_DIR that holds something (unless --force), would destroy the source, or
    lies in the model's own folder (a best/ is the model: the export would mix with its files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a folder: choose another OUT_DIR")
    if source is not None and source.is_dir() and _inside(out_dir.resolve(), source.resolve()):
        raise ExportError(
            f"{out_dir} is the folder of the model being exported ({source}) or inside it: "
            "choose an OUT_DIR outside it"
        )
    if _inside(Path.cwd().resolve(), out_dir.resolve()):
        raise ExportError(
            f"{out_dir} is the current folder or holds it: the export replaces OUT_DIR as a "
            "whole, so name a new folder (e.g. OUT_DIR=exported)"
        )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise ExportError(
                f"{out_dir} exists and is not empty: choose another OUT_DIR or pass --force "
                "to replace it"
            )
        if source is not None and _inside(source.resolve(), out_dir.resolve()):
            raise ExportError(
                f"{out_dir} holds the model being exported ({source}): --force would delete it; "
                "choose another OUT_DIR"
            )


def publish(tmp: Path, out_dir: Path) -> None:
    """Put the finished temporary folder at `out_dir`, replacing what is there (if anything)."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
    try:
        os.replace(out_dir, old / out_dir.name)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old / out_dir.name, out_dir)  # put the old folder back
            raise
    finally:
        if out_dir.exists():  # the new folder, or the old one back: `old` holds nothing needed
            shutil.rmtree(old, ignore_errors=True)


def export(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    force: bool = False,
    check: Checker | None = None,
) -> tuple[LoadedModel, CheckReport | None]:
    """Write the transformers folder for a run folder, best/ folder or .ckpt to `out_dir`.

    `check`, if given, runs on the finished temporary folder before it is published: a failed
    check leaves `out_dir` as it was. Raises ExportError (or ArtifactError) for bad input.
    """
    # absolute: "." has no name or parent of its own to put the temporary folder beside
    model_path = Path(model_path).expanduser()
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    loaded = load_model(model_path)
    refuse_unmapped(loaded.model.config)
    prepare_destination(out_dir, loaded.path, force)
    run_config = read_run_config(model_path)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # a sibling, so the final rename stays on one filesystem; mkdir honours the umask
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
    except OSError as e:
        raise ExportError(
            f"cannot write to {out_dir.parent} ({e.strerror or e}): choose a writable OUT_DIR"
        ) from None
    try:
        try:
            write_folder(loaded, tmp, run_config)
        except OSError as e:
            raise ExportError(
                f"cannot write the export next to {out_dir} ({e.strerror or e}): "
                "free some space or choose another OUT_DIR"
            ) from None
        report = check(loaded, tmp) if check is not None else None
        if report is None or report.passed:
            try:
                publish(tmp, out_dir)
            except OSError as e:
                raise ExportError(
                    f"cannot move the export to {out_dir} ({e.strerror or e}): "
                    "choose a writable OUT_DIR"
                ) from None
        return loaded, report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
