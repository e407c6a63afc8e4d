"""Packaging: console scripts that work from any folder, configs shipped inside the package, the
optional extras, and one's own config folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT, TINY_OVERRIDES

from tinyllm.cli import chat_main, eval_main, export_main, prepare_entry, serve_main, train_main

SCRIPTS = {"tinyllm-train": train_main, "tinyllm-chat": chat_main, "tinyllm-eval": eval_main,
           "tinyllm-export": export_main, "tinyllm-serve": serve_main,
           "tinyllm-prepare": prepare_entry}  # fmt: skip


def command(name: str, *args: str, cwd, stdin: str | None = None, timeout: float = 120):
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `pip install -e .` (console scripts)"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [path, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_pyproject_declares_scripts_and_extras():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    scripts = project["scripts"]
    assert set(scripts) == set(SCRIPTS)
    for name, function in SCRIPTS.items():
        assert scripts[name] == f"{function.__module__}:{function.__name__}"
    extras = project["optional-dependencies"]
    assert {"dev", "sweep", "bench", "export"} <= set(extras)
    assert any(r.startswith("hydra-optuna-sweeper") for r in extras["sweep"])
    assert any(r.startswith("pytest") for r in extras["dev"])
    assert any(r.startswith("ruff") for r in extras["dev"])
    assert any(r.startswith("matplotlib") for r in extras["bench"])
    for package in ("transformers", "tokenizers"):  # the export check runs in CI
        assert any(r.startswith(package) for r in extras["export"])
        assert any(r.startswith(package) for r in extras["dev"])
    assert {"fastapi", "uvicorn"} <= {r.split(">")[0] for r in extras["serve"]}
    assert {"openai", "selenium"} <= {r.split(">")[0] for r in extras["dev"]}


def test_commands_that_do_not_train_start_without_lightning():
    """Lightning (with what it imports) takes seconds to load: chat, serve, export and the
    resume/output-folder checks of train must not wait for it. Run in a fresh interpreter."""
    probe = (
        "import sys, tinyllm.cli, tinyllm.console.program, tinyllm.serve.server, tinyllm.export;"
        "from tinyllm.cli import check_output_argv, resolve_resume_argv;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning')[:3])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_configs_live_in_the_package_and_configs_links_there():
    assert (ROOT / "configs").is_symlink()
    assert (ROOT / "configs").resolve() == (ROOT / "tinyllm" / "configs").resolve()
    assert (ROOT / "tinyllm" / "configs" / "train.yaml").is_file()


@pytest.mark.slow
def test_console_scripts_train_eval_and_chat_from_another_folder(tmp_path, corpus_file):
    help_text = command("tinyllm-train", "--help", cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    assert list(tmp_path.iterdir()) == []  # no empty outputs/ from the output folder's check
    for option in ("model: ", "hparams_search: optuna", "ddp", "experiment: "):
        assert option in help_text.stdout
    run_dir = tmp_path / "run"
    train = command(
        "tinyllm-train", *TINY_OVERRIDES, "trainer.max_steps=10", "training.val_interval=5",
        f"data.path={corpus_file}", f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert (run_dir / "best" / "model.safetensors").is_file()
    assert (run_dir / "train.log").is_file()

    evaluation = command("tinyllm-eval", str(run_dir), "--json", cwd=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr
    assert json.loads(evaluation.stdout)["split"] == "val"

    chat = command("tinyllm-chat", str(run_dir), cwd=tmp_path, stdin="ROMEO:\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()


def test_own_config_folder(tmp_path):
    own = tmp_path / "my_configs"
    (own / "model").mkdir(parents=True)
    (own / "model" / "wide.yaml").write_text(
        "defaults:\n  - small\n  - _self_\nn_embd: 512\nn_head: 8\n", encoding="utf-8"
    )
    (own / "my_train.yaml").write_text(  # a primary config building on the packaged one
        "defaults:\n  - train\n  - override model: wide\n  - _self_\nseed: 7\n", encoding="utf-8"
    )
    result = command(
        "tinyllm-train", "--config-dir", str(own), "--config-name", "my_train", "--cfg", "job",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "n_embd: 512" in result.stdout and "n_head: 8" in result.stdout
    assert "seed: 7" in result.stdout
    small = (ROOT / "configs" / "model" / "small.yaml").read_text(encoding="utf-8")
    n_layer = next(line for line in small.splitlines() if line.startswith("n_layer:"))
    assert f"  {n_layer}" in result.stdout  # the rest from the packaged model/small.yaml


@pytest.mark.skipif(sys.platform == "win32", reason="symlinked configs/")
def test_wheel_ships_the_configs(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "tinyllm", source / "tinyllm", ignore=ignore)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tinyllm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = ROOT / "tinyllm" / "configs"
    for path in configs.rglob("*.yaml"):
        assert f"tinyllm/configs/{path.relative_to(configs)}" in names
    assert "tinyllm/cli.py" in names
    for page in ("index.html", "style.css", "app.js"):  # the chat page of tinyllm-serve
        assert f"tinyllm/serve/static/{page}" in names


def test_ctrl_c_in_eval_is_one_line_even_when_a_library_rewords_it(
    trained_run, monkeypatch, capsys
):
    """eval.py under Ctrl-C: one line and 130, no traceback; also when the library it landed
    in turned it into an error of its own (OmegaConf did, mid-merge: "config.yaml cannot be
    read"), which would otherwise be reported as that error."""
    import signal

    from tinyllm import evaluation
    from tinyllm.evaluation import EvaluationError

    def interrupted_and_reworded(cfg):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, taken by eval_main's handler
        except KeyboardInterrupt:
            raise EvaluationError("config.yaml cannot be read (the library's words)") from None

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(evaluation, "evaluate_config", interrupted_and_reworded)
    try:
        assert eval_main([str(trained_run)]) == 130
    finally:
        signal.signal(signal.SIGINT, handler)
    assert capsys.readouterr().err == "interrupted: nothing was written\n"


@pytest.mark.parametrize("command", ["train.py", "eval.py"])
def test_output_into_a_reader_that_went_away_ends_quietly(command, trained_run):
    """`--help | head`, `eval.py RUN --json | head`: the reader closed before the output came."""
    args = ["--help"] if command == "train.py" else [str(trained_run), "--json"]
    process = subprocess.Popen([sys.executable, str(ROOT / command), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    process.stdout.close()  # before the program has written anything (its imports take longer)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
