"""eval.py: loss, bits per character and perplexity of a saved model on its run's validation
split or any text file."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tinyllm.evaluation import EvaluationError, evaluate, evaluate_ids, main
from tinyllm.model import ModelConfig, Transformer


def run_eval(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_eval_script_reports_the_validation_split_as_table_and_json(trained_run, tmp_path):
    output = tmp_path / "eval.json"
    result = run_eval(str(trained_run), "--output", str(output))
    assert result.returncode == 0, result.stderr
    for label in ("loss (nats/char)", "bits per character", "perplexity", "split"):
        assert label in result.stdout
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["split"] == "val" and report["model"] == str(trained_run / "best")
    assert report["bpc"] == pytest.approx(report["loss"] / math.log(2))
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert f"{report['loss']:.4f}" in result.stdout

    # the same split the run validated on: the run's datamodule, rebuilt from its config.yaml
    datamodule = instantiate(OmegaConf.load(trained_run / "config.yaml").data)
    datamodule.setup("fit")
    assert report["characters"] == len(datamodule.val_ids)
    assert report["predicted"] == len(datamodule.val_ids) - 1  # every character after the first
    # close to the run's own best val/loss (measured on a capped number of windows)
    metadata = json.loads((trained_run / "best" / "metadata.json").read_text(encoding="utf-8"))
    assert report["loss"] == pytest.approx(metadata["val_loss"], rel=0.05)


def test_any_text_file_and_checkpoints(trained_run, corpus_file, capsys):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    assert main([str(ckpt), f"data.path={corpus_file}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "all" and report["data"] == str(corpus_file)
    assert report["characters"] == len(corpus_file.read_text(encoding="utf-8"))
    val = evaluate(ckpt, [f"data.path={corpus_file}"], split="val")
    train = evaluate(ckpt, [f"data.path={corpus_file}"], split="train")
    assert val.characters + train.characters == report["characters"]


def test_unknown_characters_are_named_or_skipped(trained_run, tmp_path, capsys):
    text = tmp_path / "other.txt"
    text.write_text("ROMEO:\nThe king ßays ünto thee.\n" * 5, encoding="utf-8")
    assert main([str(trained_run), f"data.path={text}"]) == 2
    err = capsys.readouterr().err
    assert "'ß'" in err and "'ü'" in err and "--skip-unknown" in err
    result = evaluate(trained_run, [f"data.path={text}"], skip_unknown=True)
    assert result.skipped_characters == 10
    assert result.characters == len(text.read_text(encoding="utf-8")) - 10
    assert math.isfinite(result.loss)


def test_data_overrides_and_errors(trained_run, tmp_path, capsys):
    normalized = evaluate(trained_run, ["data.normalize_whitespace=true"])
    assert normalized.split == "val" and math.isfinite(normalized.loss)
    with pytest.raises(EvaluationError, match="outside the model's vocabulary"):
        evaluate(trained_run, ["data.lowercase=true"])  # cleaned differently from the run
    assert main([str(trained_run), "trainer.max_steps=3"]) == 2
    assert "only data.KEY=VALUE" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bare = tmp_path / "bare"  # artifacts copied without their run: the text must be given
    bare.mkdir()
    for path in (trained_run / "best").iterdir():
        (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(EvaluationError, match="data.path=FILE"):
        evaluate(bare)


def test_every_character_is_scored_once():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=16)
    model = Transformer(config).eval()
    ids = torch.randint(11, (30,), dtype=torch.uint8)
    loss, predicted, windows = evaluate_ids(model, ids, context=8, batch_size=2)
    assert predicted == 29 and windows == 4  # windows start at 0, 8, 16, 24 (the last: 6 ids)
    expected = []
    with torch.no_grad():
        for start in (0, 8, 16, 24):
            chunk = ids[start : start + 9].long()[None]
            logits = model(chunk[:, :-1])
            expected.append(F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
    assert loss == pytest.approx(float(sum(expected)) / 29, rel=1e-5)
    with pytest.raises(EvaluationError):
        evaluate_ids(model, ids[:1], context=8)
