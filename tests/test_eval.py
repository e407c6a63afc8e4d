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
from conftest import ROOT, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tinyllm.cli import eval_overrides
from tinyllm.config import ConfigError, validate
from tinyllm.evaluation import EvaluationError, eval_config, evaluate, evaluate_ids, main
from tinyllm.model import ModelConfig, Transformer


def run_eval(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_eval_reports_the_validation_split_as_table_and_json(trained_run, tmp_path, capsys):
    """In process: the command's own function (`python eval.py` runs it: the Hydra form below;
    `tinyllm-eval --json` from another folder: tests/test_packaging.py)."""
    output = tmp_path / "eval.json"
    assert main([str(trained_run), "--output", str(output)]) == 0
    stdout = capsys.readouterr().out
    for label in ("loss (nats/char)", "bits per character", "perplexity", "split"):
        assert label in stdout
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["split"] == "val" and report["model"] == str(trained_run / "best")
    assert report["bpc"] == pytest.approx(report["loss"] / math.log(2))
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert f"{report['loss']:.4f}" in stdout

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


def test_a_byte_model_is_scored_per_byte(tmp_path, capsys):
    from tinyllm.artifacts import save_artifacts
    from tinyllm.tokenizer import ByteTokenizer

    config = ModelConfig(vocab_size=256, context_length=16, n_layer=1, n_head=2, n_embd=16)
    best = save_artifacts(tmp_path / "best", Transformer(config), ByteTokenizer(), {})
    text = tmp_path / "t.txt"
    text.write_text("é" * 20, encoding="utf-8")
    assert main([str(best), f"data.path={text}", f"data.cache_dir={tmp_path}"]) == 0
    stdout = capsys.readouterr().out
    for label in ("bytes", "40 in", "loss (nats/byte)", "bits per byte"):
        assert label in stdout, label
    assert "character" not in stdout
    assert evaluate(best, [f"data.path={text}", "data.cache_dir=null"]).unit == "byte"


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
    for device in ("tpu", "cuda" if not torch.cuda.is_available() else "mps:7"):
        assert main([str(trained_run), "--device", device]) == 2
        err = capsys.readouterr().err
        assert f"device '{device}' is not available here" in err and err.count("\n") == 1
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


# --- the Hydra app (tinyllm/configs/eval.yaml) -------------------------------------------------


def test_hydra_form_gives_the_classic_report_and_writes_nothing_else(trained_run, tmp_path):
    """`model_path=... split=... json=true output=...` from another folder: the same numbers as
    the classic flags, and no run folder, .hydra/ or log file (the compose API)."""
    classic = evaluate(trained_run, split="train")
    # data.cache_dir=null: prepared in memory, so the folder must stay exactly as it was
    result = run_eval(f"model_path={trained_run}", "split=train", "json=true", "output=eval.json",
                      "data.cache_dir=null", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    assert report["split"] == "train" and report["characters"] == classic.characters
    assert report["loss"] == pytest.approx(classic.loss, rel=1e-6)


def test_training_overrides_reach_the_run_data(trained_run):
    """`training.val_split=` changes the split as it did in training (data reads it); data.KEY=
    given explicitly wins even when it equals the packaged default."""
    total = evaluate(trained_run, split="all").characters
    half = evaluate(trained_run, ["training.val_split=0.5"])
    assert half.split == "val" and half.characters == int(total * 0.5)
    cfg = eval_config(["data.val_split=0.1", "data.lowercase=false"], model_path=str(trained_run))
    assert cfg.data.val_split == 0.1 and cfg.data.lowercase is False
    assert cfg.data.path == str(OmegaConf.load(trained_run / "config.yaml").data.path)


def test_argv_translation_keeps_any_path_exact(tmp_path):
    model = str(tmp_path / "odd, run's \\ [folder]\\")  # a comma, a quote, brackets, backslashes
    argv = [model, "--json", "--split=train", "data.path=x.txt", "--batch-size", "8",
            "--skip-unknown", "--device", "cpu"]  # fmt: skip
    overrides = eval_overrides(argv)
    cfg = eval_config(overrides)
    assert cfg.model_path == model and cfg.data.path == "x.txt"
    assert (cfg.json, cfg.split, cfg.batch_size, cfg.skip_unknown, cfg.device) == (
        True, "train", 8, True, "cpu")  # fmt: skip
    assert eval_overrides(["model_path=m", "json=true"]) == ["model_path=m", "json=true"]
    with_equals = tmp_path / "lr=3e-3"  # a folder named after an override, as sweeps make
    with_equals.mkdir()
    assert eval_overrides([str(with_equals), "split=all"]) == [
        f"model_path='{with_equals}'", "split=all"]  # fmt: skip


def test_bad_input_is_one_line_and_exit_2(trained_run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    cases = [
        ([f"model_path={trained_run}", "batch_size=abc"], "batch_size"),
        ([f"model_path={trained_run}", "batch_size=0"], "batch_size must be >= 1"),
        ([f"model_path={trained_run}", "split=test"], "split must be one of val, train, all"),
        ([f"model_path={trained_run}", "json=maybe"], "json"),
        ([f"model_path={trained_run}", "data.nope=1"], "data.nope"),
        ([f"model_path={trained_run}", "model.n_layer=2"], "only data.KEY=VALUE"),
        ([f"model_path={trained_run}", "data.path=a,b"], "quote the value"),
        ([f"model_path={trained_run}", f"output={tmp_path}/a-file/eval.json"], "cannot write"),
        ([], "give the model to evaluate"),
        ([str(trained_run), str(trained_run)], "one model at a time"),
        ([str(trained_run), "--bogus"], "unrecognized arguments: --bogus"),
    ]
    for argv, expected in cases:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2, argv
        assert expected in err and err.startswith("error: "), (argv, err)
        assert "\n" not in err and "Traceback" not in err, (argv, err)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.val_split=abc", "training.val_split must be a number in (0, 1), got 'abc'"),
        ("training.val_split=null", "training.val_split must be a number in (0, 1), got None"),
        ("training.max_context=abc", "training.max_context must be an integer >= 1, got 'abc'"),
        ("training.batch_size=abc", "training.batch_size must be an integer >= 1, got 'abc'"),
        ("data.val_split=abc", "data.val_split must be a number in (0, 1), got 'abc'"),
        ("data.val_split=null", "data.val_split must be a number in (0, 1), got None"),
        ("data.lowercase=abc", "data.lowercase must be true or false, got 'abc'"),
        ("data.lowercase=1", "data.lowercase must be true or false, got 1"),
        ("data.normalize_whitespace=abc", "data.normalize_whitespace must be true or false"),
        ("data.keep_stage_directions=null", "data.keep_stage_directions must be true or false"),
        ("data.pin_memory=abc", "data.pin_memory must be true or false"),
        ("data.path=", "data.path must be a text file, a folder or a quoted glob"),
        ("data.path=' '", "data.path must be a text file"),
        ("data.path=[a.txt]", "data.path must be a text file"),
        ("data.cache_dir=", "data.cache_dir must be a folder (null: prepare the corpus in memory)"),
        ("data.encoding=null", "data.encoding must be a text encoding"),
        ("data.tokenizer=", "data.tokenizer must be one of chars, bytes"),
        ("data.batch_size=abc", "data.batch_size must be an integer >= 1, got 'abc'"),
        ("data.max_context=abc", "data.max_context must be an integer >= 1, got 'abc'"),
        ("data.num_workers=abc", "data.num_workers must be an integer >= 0"),
        ("data.max_val_windows=abc", "data.max_val_windows must be an integer >= 1 or null"),
        ("data.train_windows_per_epoch=abc", "data.train_windows_per_epoch must be an integer"),
        ("data.seed=abc", "data.seed must be an integer >= 0"),
        ("seed=abc", "seed must be an integer from 0 to 4294967295, got 'abc'"),
        ("+training.unknown=1", "training.unknown is not a training setting"),
    ],
)
def test_values_of_the_wrong_type_are_refused_as_training_refuses_them(
    override, expected, trained_run, tmp_path, capsys
):
    """A value training would refuse (tinyllm.config's checks) is one line and exit 2 here too,
    not a traceback (`training.val_split=abc`), nor applied as true (`data.lowercase=abc`), nor
    the current folder read as the corpus (`data.path=`)."""
    assert main([str(trained_run), override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err, err
    assert "\n" not in err and "Traceback" not in err, err
    with pytest.raises(ConfigError) as refused:  # train.py's words for the same value
        validate(compose_config([override], tmp_path))
    assert err == f"error: {refused.value}"
