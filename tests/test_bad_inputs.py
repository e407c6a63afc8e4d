"""Bad inputs, table-driven: each gives one line naming the problem and the fix, a non-zero exit,
no traceback, and nothing that a later `resume=true` or `chat.py` would pick up."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, make_corpus, run_chat, write_unsafe_checkpoint

from tinyllm.artifacts import ArtifactError, load_model
from tinyllm.generation import SamplingSettings, generate_text
from tinyllm.tokenizer import UnknownCharactersError

# under pytest-xdist the whole file runs on one worker, so that train_results runs once
pytestmark = pytest.mark.xdist_group("bad_inputs")

# --- train.py ------------------------------------------------------------------------------

# Every case runs train.py as `python train.py ARGS` would (its `__main__` block, Hydra
# included) inside ONE subprocess, to pay the start-up cost of torch and Lightning once: stdout
# and stderr are captured per case.
DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys, traceback
    sys.path.insert(0, sys.argv[1])
    script = sys.argv[1] + "/train.py"
    results = []
    for argv in json.loads(sys.stdin.read()):
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = [script, *argv]
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                code = e.code
            except BaseException:
                traceback.print_exc()
                code = "exception"
        results.append({"code": code, "output": out.getvalue() + err.getvalue()})
    print(json.dumps(results))
    """
)

CORPORA = {
    "empty.txt": b"",
    "blank.txt": b"  \n\t\n\n   \n",
    "binary.bin": bytes(range(256)) * 40,
    "latin1.txt": ("Caf\xe9 na\xefve r\xe9sum\xe9 " * 400).encode("latin-1"),
    "short.txt": b"ROMEO:\nHello there.\n",
    "a-file": b"",
}

# (id, overrides, exit code, the one line must contain[, more text the output must contain]);
# `{tmp}` is the cases' folder
TRAIN_CASES = [
    ("missing corpus", ["data.path={tmp}/nope.txt"], 2, "corpus file not found: {tmp}/nope.txt"),
    ("empty corpus", ["data.path={tmp}/empty.txt"], 2, "empty"),
    ("whitespace corpus", ["data.path={tmp}/blank.txt"], 2, "empty"),
    ("binary corpus", ["data.path={tmp}/binary.bin"], 2, "looks binary"),
    ("not utf-8", ["data.path={tmp}/latin1.txt"], 2, "data.encoding="),
    ("too short", ["data.path={tmp}/short.txt"], 2, "needs at least 332"),
    ("val_split 0", ["training.val_split=0"], 2,
     "training.val_split must be a number in (0, 1), got 0"),
    ("val_split 1", ["training.val_split=1"], 2,
     "training.val_split must be a number in (0, 1), got 1"),
    ("val_split < 0", ["training.val_split=-0.1"], 2,
     "training.val_split must be a number in (0, 1)"),
    ("lr 0", ["training.learning_rate=0"], 2,
     "training.learning_rate must be a number > 0, got 0"),
    ("lr < 0", ["training.learning_rate=-1"], 2,
     "training.learning_rate must be a number > 0, got -1"),
    ("heads", ["model.n_head=3"], 2, "model.n_head=3 must divide model.n_embd=32"),
    ("unknown encoding", ["data.encoding=utf-9"], 2,
     "data.encoding must be a text encoding Python knows, such as utf-8 or latin-1, got 'utf-9'"),
    ("a seed numpy cannot take", ["seed=5000000000"], 2,
     "seed must be an integer from 0 to 4294967295, got 5000000000"),
    ("a negative seed", ["seed=-1"], 2, "error: seed must be an integer from 0 to 4294967295"),
    ("no devices", ["trainer.devices=0"], 2, "trainer.devices must be a count (>= 1), -1 for "
     'all, "auto" or a list of indices, got 0'),
    # overrides that do not compose: Hydra's report (the problem, the fix, the options) on one
    # line, before Hydra starts (it would print several lines and exit 1)
    ("unknown key", ["training.learning_rat=1e-3"], 2, "error: Could not override "
     "'training.learning_rat': Key 'learning_rat' is not in struct; To append to your config "
     "use +training.learning_rat=1e-3"),
    ("unknown group option", ["model=smal"], 2,
     "error: In 'train': Could not find 'model/smal'; Available options in 'model': ",
     "small, tiny"),
    ("unreadable override", ["model.n_layer=[1"], 2, "error: cannot read 'model.n_layer=[1': "),
    ("a list or a sweep?", ["model.n_layer=1,2"], 2, "To sweep over it, add --multirun"),
    ("an interpolation to nothing", ["model.n_embd=${{oops}}"], 2,
     "error: model.n_embd: Interpolation key 'oops' not found"),
    ("a group set to null", ["logger=null"], 2, "error: Config group override must be"),
    ("a logger that is not a config", ["+logger.foo=1"], 2,
     "error: logger.foo must be a config with a _target_ (or null to switch it off), got 1"),
    # Hydra's own flags, read by Hydra's parser without its usage block before the line
    ("an unknown flag", ["--bogus"], 2, "error: unrecognized arguments: --bogus (see train.py "
     "--help)"),
    ("a flag without its value", ["--config-name"], 2, "error: argument --config-name/-cn: "
     "expected one argument"),
    # before Hydra starts (train.py's own check): one `error:` line on stderr
    ("resume without a run", ["resume=true"], 2, "error: no run to resume under outputs/ "),
    ("resume= and another ckpt_path=", ["resume={tmp}/old_run", "ckpt_path={tmp}/other.ckpt"],
     2, "resume= continues {tmp}/old_run from {tmp}/old_run/checkpoints/last.ckpt, not from "
     "ckpt_path={tmp}/other.ckpt"),
    ("a path Hydra's grammar cannot read", ["data.path=~/nope.txt"], 2,
     "cannot read 'data.path=~/nope.txt': quote a path, as in \"data.path='~/nope.txt'\""),
    ("unwritable run folder", ["hydra.run.dir={tmp}/a-file/run"], 2,
     "is not writable (Not a directory): set hydra.run.dir to a writable folder"),
    ("a file for the run folder", ["hydra.run.dir={tmp}/a-file"], 2,
     "hydra.run.dir={tmp}/a-file is a file: set hydra.run.dir to a folder"),
    ("a folder for ckpt_path", ["ckpt_path={tmp}/done"], 2,
     "checkpoint {tmp}/done is a folder: pass a file in it"),
    # a crafted checkpoint (code in its pickle) is refused before it runs: test_unsafe_checkpoint
    ("resume from an unsafe checkpoint", ["resume={tmp}/evil_run"], 2,
     "checkpoint {tmp}/evil_run/checkpoints/last.ckpt cannot be loaded safely"),
    # a run's folder is its own: a new run there would mix its checkpoints with the old ones
    ("a run's folder for a new run", ["hydra.run.dir={tmp}/old_run"], 2,
     "{tmp}/old_run already holds a run (checkpoints/last.ckpt): continue it with resume="),
    # continuing a run with another model or corpus: one line, before anything is rewritten
    ("another model from a checkpoint", ["ckpt_path={tmp}/done/checkpoints/last.ckpt",
     "model.n_embd=48"], 2, "model.n_embd=48, but checkpoint {tmp}/done/checkpoints/last.ckpt "
     "was trained with 32"),
    ("a new run from a finished checkpoint", ["ckpt_path={tmp}/done/checkpoints/last.ckpt"], 2,
     "checkpoint {tmp}/done/checkpoints/last.ckpt is at step 30 and trainer.max_steps=30: a "
     "new run from it would train nothing; raise trainer.max_steps"),
    ("another optimizer from a checkpoint", ["ckpt_path={tmp}/done/checkpoints/last.ckpt",
     "training.optimizer=adam"], 2, "training.optimizer=adam, but checkpoint "
     "{tmp}/done/checkpoints/last.ckpt was trained with muon"),
    ("another corpus from a checkpoint", ["ckpt_path={tmp}/done/checkpoints/last.ckpt",
     "data.path={tmp}/other.txt"], 2, "the corpus's vocabulary (28 characters) is not the one"),
    # a refused resume leaves the run's saved overrides alone: test_a_refused_resume_...
    ("resume with a bad value", ["resume={tmp}/done", "training.batch_size=0"], 2,
     "training.batch_size must be an integer >= 1"),
    # a loss that stops being a number (tinyllm/callbacks/fault_guard.py)
    ("absurd learning rate", ["training.learning_rate=1e6"], 1,
     "lower training.learning_rate (now 1000000.0)"),
]  # fmt: skip


if not torch.cuda.is_available():  # a GPU config on a machine without one
    TRAIN_CASES.append(("a GPU config without a GPU", ["trainer=gpu"], 2,
                        "trainer.accelerator=gpu, but this machine has no CUDA GPU torch can use: "
                        "train with trainer=cpu"))  # fmt: skip
    TRAIN_CASES.append(("every GPU without a GPU", ["trainer.devices=-1"], 2,
                        "trainer.devices=-1 (every GPU) needs a CUDA GPU"))  # fmt: skip
for _logger in ("mlflow", "wandb"):  # a logger whose package (our optional extra) is missing
    if importlib.util.find_spec(_logger) is None:
        TRAIN_CASES.append((f"logger={_logger} without its extra", [f"logger={_logger}"], 2,
                            f'logger={_logger} needs {_logger}, which is not installed: '
                            f'pip install -e ".[{_logger}]"'))  # fmt: skip

# Commands the checks before Hydra starts must let through (each trains 2 steps, or prints)
ACCEPTED_CASES = [
    ("a deletion without a value", ["trainer=gpu", "~trainer.accelerator"]),
    ("a value Hydra's run resolves", ["training.sample_prompt=${{hydra:job.name}}"]),
    ("an absolute interpolation in training", ["training.batch_size=${{training.max_context}}"]),
    ("a GPU config printed on any machine", ["trainer=gpu", "--cfg", "job"]),
]

# values and overrides checked before Hydra starts (its log is not set up: a plain `error:`)
REFUSED_BEFORE_HYDRA = {
    "val_split 0", "val_split 1", "val_split < 0", "lr 0", "lr < 0", "heads", "unknown key",
    "unknown group option", "unreadable override", "a list or a sweep?",
    "an interpolation to nothing", "a group set to null", "a logger that is not a config",
    "a GPU config without a GPU", "every GPU without a GPU", "logger=mlflow without its extra",
    "logger=wandb without its extra", "missing corpus", "resume= and another ckpt_path=",
    "a path Hydra's grammar cannot read", "a file for the run folder", "unknown encoding",
    "no devices", "a seed numpy cannot take", "a negative seed", "an unknown flag",
    "a flag without its value",
}  # fmt: skip


@pytest.fixture(scope="module")
def train_results(tmp_path_factory, corpus_file, trained_run):
    tmp = tmp_path_factory.mktemp("bad")
    for name, data in CORPORA.items():
        (tmp / name).write_bytes(data)
    (tmp / "other.txt").write_text("the quick brown fox jumps over a lazy dog\n" * 40)
    write_unsafe_checkpoint(tmp / "evil_run" / "checkpoints" / "last.ckpt", tmp / "pwned")
    (tmp / "old_run" / "checkpoints").mkdir(parents=True)
    (tmp / "old_run" / "checkpoints" / "last.ckpt").write_bytes(b"an earlier run's")
    shutil.copytree(trained_run, tmp / "done")  # a finished run of our own to continue
    runs = []
    for i, (_, overrides, *_) in enumerate(TRAIN_CASES):
        given = [o.format(tmp=tmp) for o in overrides]
        path = (
            [] if any(o.startswith("data.path=") for o in given) else [f"data.path={corpus_file}"]
        )
        # a resumed run keeps its folder (the case's own, or the one it resumes)
        own = any(o.startswith(("hydra.run.dir=", "resume=")) for o in given)
        run_dir = [] if own and "evil" not in str(given) else [f"hydra.run.dir={tmp}/run{i}"]
        runs.append([*TINY_OVERRIDES, *path, *run_dir, *given])
    for i, (_, overrides) in enumerate(ACCEPTED_CASES):
        given = [o.format(tmp=tmp) for o in overrides]
        runs.append([*TINY_OVERRIDES, "trainer.max_steps=2", f"data.path={corpus_file}",
                     f"hydra.run.dir={tmp}/accepted{i}", *given])  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(ROOT)], input=json.dumps(runs), capture_output=True,
        text=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("index", "case"), list(enumerate(TRAIN_CASES)), ids=[c[0] for c in TRAIN_CASES]
)
def test_bad_training_input(train_results, index, case):
    tmp, results = train_results
    name, _, code, expected, *more = (c.format(tmp=tmp) if isinstance(c, str) else c for c in case)
    result = results[index]
    output = result["output"]
    assert result["code"] == code, output[-3000:]
    assert "Traceback" not in output
    errors = [x for x in output.splitlines() if "ERROR" in x or x.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert expected in errors[0], errors[0]
    for text in more:
        assert text in output, output[-3000:]
    # nothing a later run would take for a model or a run to resume
    run = tmp / f"run{index}"
    assert not (run / "checkpoints").exists() and not (run / "best").exists()
    if code == 2:  # not even a run folder holding only its log: the one line said it all
        assert not run.exists(), sorted(p.name for p in run.iterdir())
    if name in REFUSED_BEFORE_HYDRA:
        assert errors[0].startswith("error: "), errors[0]


@pytest.mark.parametrize(
    ("index", "case"), list(enumerate(ACCEPTED_CASES)), ids=[c[0] for c in ACCEPTED_CASES]
)
def test_accepted_training_input(train_results, index, case):
    tmp, results = train_results
    result = results[len(TRAIN_CASES) + index]
    output = result["output"]
    assert result["code"] in (0, None), output[-3000:]
    assert "Traceback" not in output and "error:" not in output and "ERROR" not in output
    if "--cfg" in case[1]:
        assert "accelerator: gpu" in output  # printed, not refused for want of a GPU
    else:
        assert (tmp / f"accepted{index}" / "best" / "model.safetensors").is_file()


def test_a_refused_resume_leaves_the_run_as_it_was(train_results, trained_run):
    """Hydra rewrites the resumed run's .hydra/ before train() refuses the bad value: it is put
    back, so a later plain `resume=` does not replay the refused override."""
    tmp, _ = train_results
    for name in (".hydra/overrides.yaml", ".hydra/config.yaml", "config.yaml", "tokenizer.json"):
        assert (tmp / "done" / name).read_bytes() == (trained_run / name).read_bytes(), name
    assert sorted(p.name for p in (tmp / "done" / "checkpoints").iterdir()) == sorted(
        p.name for p in (trained_run / "checkpoints").iterdir()
    )


def test_too_short_corpus_says_how_much_is_needed(train_results):
    _, results = train_results
    (line,) = [x for x in results[5]["output"].splitlines() if "ERROR" in x]
    assert "has 20 characters" in line and "use a longer text or lower training.max_context" in line


def test_unsafe_checkpoint_ran_no_code(train_results):
    tmp, results = train_results
    (index,) = [i for i, c in enumerate(TRAIN_CASES) if c[0] == "resume from an unsafe checkpoint"]
    assert results[index]["code"] == 2
    assert not (tmp / "pwned").exists()  # the payload never ran (tests/test_security.py)


# --- model folders -------------------------------------------------------------------------


def _break(best: Path, how: str) -> None:
    if how.startswith("missing "):
        (best / how.removeprefix("missing ")).unlink()
    elif how == "truncated weights":
        data = (best / "model.safetensors").read_bytes()
        (best / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "empty weights":
        (best / "model.safetensors").write_bytes(b"")
    elif how == "truncated config":
        text = (best / "model_config.json").read_text()
        (best / "model_config.json").write_text(text[: len(text) // 2])
    elif how == "config wider than weights":
        config = json.loads((best / "model_config.json").read_text())
        config["n_embd"] *= 2
        (best / "model_config.json").write_text(json.dumps(config))
    elif how == "config deeper than weights":
        config = json.loads((best / "model_config.json").read_text())
        config["n_layer"] += 1
        (best / "model_config.json").write_text(json.dumps(config))
    elif how == "tokenizer larger than embedding":
        state = json.loads((best / "tokenizer.json").read_text())
        state["vocab"].append("\u263a")
        (best / "tokenizer.json").write_text(json.dumps(state))


BROKEN = [
    ("missing model.safetensors", "model.safetensors is missing from"),
    ("missing model_config.json", "model_config.json is missing from"),
    ("missing tokenizer.json", "tokenizer.json is missing from"),
    ("truncated weights", "does not match model_config.json or is damaged"),
    ("empty weights", "does not match model_config.json or is damaged"),
    ("truncated config", "is not valid JSON"),
    ("config wider than weights", "does not match model_config.json or is damaged"),
    ("config deeper than weights", "does not match model_config.json or is damaged"),
    ("tokenizer larger than embedding", "the files come from different runs"),
]


@pytest.mark.parametrize(("how", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_model_folder(trained_run, tmp_path, how, message):
    best = tmp_path / "best"
    shutil.copytree(trained_run / "best", best)
    _break(best, how)
    with pytest.raises(ArtifactError, match=message) as error:
        load_model(best)
    assert "\n" not in str(error.value)


def test_broken_model_folder_in_chat(trained_run, tmp_path):
    best = tmp_path / "best"
    shutil.copytree(trained_run / "best", best)
    _break(best, "config wider than weights")
    result = run_chat(str(best), "--prompt", "a", timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not match model_config.json or is damaged" in lines[0]


# --- prompts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(trained_run):
    return load_model(trained_run)


def test_prompt_of_only_unknown_characters(model):
    with pytest.raises(UnknownCharactersError, match="characters not in the vocabulary: '☃'"):
        generate_text(model.model, model.tokenizer, "☃☃☃", SamplingSettings(max_tokens=5))


def test_very_long_prompt_is_cut_to_the_context(model):
    vocab = model.tokenizer.vocab
    prompt = "".join(vocab[i % len(vocab)] for i in range(100_000))
    text = generate_text(model.model, model.tokenizer, prompt, SamplingSettings(max_tokens=20))
    assert len(text) == 20 and set(text) <= set(vocab)


def test_very_long_prompt_in_chat(trained_run):
    prompt = (make_corpus(2) * 2000)[:100_000]
    result = run_chat(str(trained_run), "--prompt", prompt, "--max-tokens", "20", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.stdout) >= 20


def test_prompt_of_only_unknown_characters_in_chat(trained_run):
    result = run_chat(str(trained_run), "--prompt", "☃☃☃")
    assert "Traceback" not in result.stderr
    assert "☃" in result.stderr  # named
    assert result.returncode in (0, 1, 2)  # the chat helper's choice; never a crash


# --- chat commands (the console's parser) --------------------------------------------------

console = pytest.importorskip("tinyllm.console")

BAD_COMMANDS = [
    "/temp", "/temp hot", "/temp -1", "/temp 1e999", "/temp nan", "/topk", "/topk -3",
    "/topk 2.5", "/topk 99999999999999999999999", "/topp", "/topp 0", "/topp 1.5", "/topp x",
    "/max", "/max 0", "/max -5", "/max ten", "/max 10000000000000", "/seed x", "/seed -1",
    "/seed 1e400", "/load", "/nosuch", "/", "/help me",
]  # fmt: skip


@pytest.mark.parametrize("line", BAD_COMMANDS)
def test_bad_chat_command_is_refused_with_a_message(line):
    with pytest.raises(console.CommandError) as error:
        console.parse_command(line)
    message = str(error.value)
    assert message and "\n" not in message


def _serve(argv: list[str]) -> int:
    from tinyllm.serve.server import build_parser

    build_parser().parse_args(argv)
    return 0


def _main_of(module: str):
    return lambda argv: importlib.import_module(module).main(argv)


# every program's own options: (its main, a bad command line, its name, what the line says)
BAD_OPTIONS = [
    (_main_of("tinyllm.console.program"), ["--temperature", "hot"], "chat.py",
     "'hot' is not a number"),
    (_main_of("tinyllm.console.program"), ["--threads", "0"], "chat.py", "0 is out of range"),
    (_serve, ["--port", "x"], "tinyllm-serve", "'x' is not a port number"),
    (_main_of("tinyllm.export"), [], "tinyllm-export", "required: model, out_dir"),
    (lambda argv: __import__("tinyllm.cli").cli.prepare_main(argv), ["--bogus"],
     "tinyllm-prepare", "unrecognized arguments: --bogus"),
    (lambda argv: __import__("tinyllm.cli").cli.eval_main(argv), ["--bogus"], "eval.py",
     "unrecognized arguments: --bogus"),
]  # fmt: skip


@pytest.mark.parametrize(("main", "argv", "prog", "says"), BAD_OPTIONS,
                         ids=[f"{b[2]} {' '.join(b[1])}" for b in BAD_OPTIONS])  # fmt: skip
def test_a_bad_option_is_one_line_naming_the_help(main, argv, prog, says, capsys):
    """argparse's refusal without the usage block before it: one line, as every other bad
    input gets, and exit 2."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert says in lines[0] and lines[0].endswith(f"(see {prog} --help)")
