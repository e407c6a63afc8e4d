"""Every entry point and all command-line handling (pyproject.toml `[project.scripts]`):

    tinyllm-train [overrides]      as `python train.py`, configs read from the installed package
    tinyllm-chat [model]           as `python chat.py`
    tinyllm-eval MODEL [...]       as `python eval.py` (a Hydra app: tinyllm/configs/eval.yaml)
    tinyllm-export MODEL OUT_DIR   as `python -m tinyllm.export` (a transformers folder)
    tinyllm-serve [model] [...]    the HTTP API and chat page (tinyllm/serve; the serve extra)
    tinyllm-prepare [overrides]    encode a corpus into its token cache ahead of training

The configs ship inside the package (tinyllm/configs/, which the repository's top-level
`configs/` links to). To use your own, point Hydra at a folder of your own YAML:
`tinyllm-train --config-dir my_configs` adds it to the search path after the packaged configs
(so new names: my_configs/model/huge.yaml is then `model=huge`); `--config-name my_train` uses
my_configs/my_train.yaml as the primary config (it can start with `defaults: [train, _self_]`).
Outputs and data go under the current folder (`paths.root_dir`).

Before Hydra starts, `train_main` turns `resume=true` / `resume=RUN` into that run's overrides,
folder, last checkpoint and precision, and checks that the output folder can be written (Hydra
would fail with a traceback) and, for a new run, holds no other run. Both read where runs live
from the composed config (`paths.log_dir`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import hydra
import yaml
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from tinyllm.config import ConfigError, check_machine, check_rules, error_line, validate
from tinyllm.corpus import CorpusError, corpus_files
from tinyllm.interrupts import (
    InterruptedBeforeTraining,
    RememberedCtrlC,
    interrupted_line,
    watch_until_training,
)
from tinyllm.io import OneLineParser, command_name, silence_stdout, write_atomic
from tinyllm.runs import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    RUN_CONFIG,
    CheckpointError,
    RunFolderError,
    default_log_dir,
    missing_folders,
    new_run_folder,
    newest_with,
    read_yaml,
    remove_empty,
    take_back,
)
from tinyllm.sweep import exit_job, record_interrupted_job

log = logging.getLogger("tinyllm.train")

_LAST_IN_RUN = f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}"  # a run folder's, relative to it
# overrides that name the run itself; a resumed run gets them anew
_RUN_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "resume", "ckpt_path")
_TRUE = ("true", "yes", "1", "latest", "last")
_FALSE = ("", "false", "no", "0", "null", "none")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    # Lightning and the training code load here, not with this module: tinyllm-chat and
    # tinyllm-serve start without them (seconds), and so does a refused value or folder
    from tinyllm.artifacts import ArtifactError
    from tinyllm.callbacks import NonFiniteLossError, StoppedAtOnce, TrainingInterrupted
    from tinyllm.training import train

    try:
        return train(cfg)
    except (ConfigError, CorpusError, ArtifactError, RunFolderError) as e:
        log.error("%s", e)
        _take_back_single_run(cfg)
        return exit_job(2, e)  # in a -m sweep: this job fails, the others run (tinyllm/sweep.py)
    except InstantiationException as e:
        log.error("%s", str(e.__cause__ or e).strip().splitlines()[0])
        _take_back_single_run(cfg)
        return exit_job(2, str(e.__cause__ or e))
    except (
        TrainingInterrupted
    ) as e:  # Ctrl-C or SIGTERM: saved, then stopped (tinyllm/callbacks/fault_guard.py)
        log.warning("%s", e)
        log.warning("resume with:   %s", e.command)
        record_interrupted_job(e, e.best_score)  # in a -m sweep: its row in the summary
        sys.exit(e.exit_code)
    except StoppedAtOnce as e:  # a second Ctrl-C: nothing more saved (fault_guard.py)
        log.warning("%s", e)
        sys.exit(e.exit_code)
    except NonFiniteLossError as e:
        log.error("%s", e)
        return exit_job(1, e)
    except InterruptedBeforeTraining as e:  # the corpus's preparation, the Trainer's set-up
        log.warning("%s", e)
        _take_back_single_run(cfg)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # not from a signal of ours (interrupts.py): as Ctrl-C
        log.warning(interrupted_line())
        sys.exit(130)


def _take_back_single_run(cfg: DictConfig) -> None:
    """A refused run leaves no folder (runs.take_back); a sweep's jobs keep theirs, which its
    summary names."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        take_back(HydraConfig.get().runtime.output_dir)


def train_main() -> None:
    """`python train.py` and `tinyllm-train`."""
    watch_until_training()
    try:
        _train_main()
    except BrokenPipeError:  # `--help | head`
        sys.exit(silence_stdout())


def _train_main() -> None:
    try:
        sys.argv = resolve_resume_argv(sys.argv)
        check_config(sys.argv)
        check_output_argv(sys.argv)  # before Hydra creates the run folder
        with _kept_if_refused(_resumed_run(sys.argv)):
            _train_app()
    except (ConfigError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except InterruptedBeforeTraining as e:  # the checks, Hydra's set-up, the imports
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # not from a signal of ours (interrupts.py): as Ctrl-C
        print(interrupted_line(), file=sys.stderr)
        sys.exit(130)


def _resumed_run(argv: list[str]) -> Path | None:
    """The run folder `resolve_resume_argv` resumes (its `resume=RUN`), if any."""
    runs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    return Path(runs[-1]) if runs else None


@contextmanager
def _kept_if_refused(run: Path | None):
    """A resume refused for bad input (exit 2) leaves the run's `.hydra/` as it was. Hydra
    rewrites it (overrides.yaml above all) before train() checks anything, so the refused
    override would otherwise be replayed by every later `resume=` of the run."""
    folder = run / ".hydra" if run is not None else None
    saved = {p: p.read_bytes() for p in folder.glob("*.yaml")} if folder and folder.is_dir() else {}
    try:
        yield
    except SystemExit as e:
        if e.code == 2:
            for path, data in saved.items():
                write_atomic(path, data)
        raise


def chat_main() -> None:
    """`tinyllm-chat`: the chat console (as `python chat.py`)."""
    from tinyllm.console import main

    sys.exit(main())


# --- tinyllm-eval / eval.py ----------------------------------------------------------------------


def eval_main(argv: list[str] | None = None) -> int:
    """`tinyllm-eval` and `python eval.py`: loss, bits per character and perplexity of a saved
    model. eval.yaml composed with Hydra's compose API rather than `@hydra.main`: evaluation
    only reads, so it gets no run folder, `.hydra/` or log file to suppress, and every bad input
    (Hydra's own errors too) is one `error:` line and exit 2, not Hydra's exit 1."""
    ctrl_c = RememberedCtrlC()
    try:
        overrides = eval_overrides(sys.argv[1:] if argv is None else argv)  # --help: no torch
        from tinyllm.artifacts import ArtifactError
        from tinyllm.evaluation import EvaluationError, eval_config, evaluate_config, report

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        try:
            cfg = eval_config(overrides)
            report(evaluate_config(cfg), cfg)
        except (EvaluationError, ArtifactError, CorpusError) as e:
            if ctrl_c.pressed:  # the error is the interruption's, in a library's words
                raise KeyboardInterrupt from None
            print(f"error: {e}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `--json | head`
        return silence_stdout()
    return 0


def eval_overrides(args: list[str]) -> list[str]:
    """`MODEL [KEY=VALUE ...] [--flags]` -> Hydra overrides of eval.yaml: MODEL ->
    `model_path=MODEL`, then the KEY=VALUE arguments unchanged (`data.path=x.txt`, `split=train`),
    then the flags (`--json` -> `json=true`, `--split train` -> `split=train`; the last of two
    values for a key wins). The positional's and the flags' values are quoted: any path is taken
    as it is (an argument with `=` is an override unless it is a path that exists)."""
    prog = command_name("tinyllm-eval", "eval.py")
    parser = OneLineParser(
        prog=prog,
        description="Loss, bits per character and perplexity of a saved model. Settings are "
        "tinyllm/configs/eval.yaml, composed by Hydra: KEY=VALUE overrides (model_path=, "
        "split=, json=, data.path=, ...) or the positional MODEL and the flags below.",
        epilog=f"e.g. {prog} outputs/runs/<time> data.path=other.txt --json",
    )
    parser.add_argument("args", nargs="*", metavar="MODEL | KEY=VALUE",
                        help="a run folder, its best/ or a .ckpt; data.KEY=VALUE, ...")  # fmt: skip
    parser.add_argument("--split", help="val (default for the run's data), train, or all "
                        "(default with data.path=FILE)")  # fmt: skip
    parser.add_argument("--batch-size", help="windows per forward pass (64)")
    parser.add_argument("--skip-unknown", action="store_true", help="drop unknown characters")
    parser.add_argument("--device", help="cpu, cuda, ... (auto: cuda if any)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON to FILE")
    parsed = parser.parse_intermixed_args(args)
    # the model: the argument without `=`, or a path that exists though it has one
    models = [a for a in parsed.args if "=" not in a or Path(a).expanduser().exists()]
    if len(models) > 1:
        parser.error(f"one model at a time, got {len(models)}: {' '.join(models)}")
    overrides = [f"model_path={_quoted(m)}" for m in models]
    overrides += [a for a in parsed.args if a not in models]
    for key, value in vars(parsed).items():  # each flag's dest is its eval.yaml key
        if key != "args" and value not in (None, False):
            overrides.append(f"{key}=true" if value is True else f"{key}={_quoted(value)}")
    return overrides


def _quoted(value: str) -> str:
    """A Hydra override value that is `value` exactly: single-quoted, with its quotes (and the
    backslashes before a quote or the end, the only ones the grammar reads) escaped."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def serve_main() -> None:
    """`tinyllm-serve`: the OpenAI-compatible API and chat page (= `python -m tinyllm.serve`)."""
    from tinyllm.serve.server import main

    sys.exit(main())


def export_main() -> None:
    """`tinyllm-export`: write a model as a Hugging Face transformers folder (and check it)."""
    try:  # torch's import alone takes a second
        from tinyllm.export import main
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())


# --- tinyllm-prepare ----------------------------------------------------------------------------


def prepare_main(argv: list[str] | None = None) -> int:
    """`tinyllm-prepare data.path=...`: encode a corpus into its token cache ahead of training.

    Takes the same `data.*` (and `paths.*`) overrides as training, so the cache it writes is
    the one `tinyllm-train` with those overrides maps; prepare on one machine, copy data/ (or
    share it) and train on another. Prints where the cache is; exits 2 with one line on bad input.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    parser = OneLineParser(
        prog="tinyllm-prepare",
        description="Encode a corpus once into the token cache that training memory-maps.",
        epilog="e.g. tinyllm-prepare data.path='books/*.txt' data.tokenizer=bytes",
    )
    parser.add_argument("overrides", nargs="*", help="data.KEY=VALUE or paths.KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if not o.lstrip("+~").startswith(("data.", "paths."))]
    if bad:
        print(f"error: unknown argument {bad[0]!r}: give data.KEY=VALUE overrides", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        with initialize_config_module("tinyllm.configs", version_base="1.3"):
            cfg = compose("train", overrides=args.overrides)
        check_rules(cfg)  # the values training would refuse (data.lowercase=maybe)
        datamodule = instantiate(cfg.data)
        _check_cache_dir(datamodule.cache_dir)  # before reading a corpus that may be huge
        with _progress_bar(enabled=not args.quiet) as progress:
            datamodule.progress = progress
            prepared = datamodule.prepare()
    except KeyboardInterrupt:
        print("interrupted: no token cache was written", file=sys.stderr)
        return 130
    except (CorpusError, ValueError, HydraException, OmegaConfBaseException) as e:
        # the data module's own error behind Hydra's "Error in call to target ..."
        cause = e.__cause__ if isinstance(e, InstantiationException) else None
        print(f"error: {error_line(cause or e)}", file=sys.stderr)
        return 2
    if prepared.folder is None:  # the folder stopped being writable after the check
        print(f"error: {_unwritable_cache(datamodule.cache_dir, 'not writable')}", file=sys.stderr)
        return 2
    print(
        f"prepared {datamodule.source}: {len(prepared.ids):,} tokens, vocabulary "
        f"{prepared.tokenizer.vocab_size} ({datamodule.tokenizer_kind}), in {prepared.folder}"
    )
    return 0


def _check_cache_dir(cache_dir: Path | None) -> None:
    """tinyllm-prepare exists to write the token cache: refuse a folder it cannot write."""
    if cache_dir is None:
        raise CorpusError(
            "data.cache_dir=null prepares in memory at every run, so there is nothing to "
            "prepare ahead: set paths.data_dir (or data.cache_dir) to a folder"
        )
    try:
        folder = Path(cache_dir) / "prepared"
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise _unwritable_cache(cache_dir, e.strerror or str(e)) from None


def _unwritable_cache(cache_dir: Path | None, reason: str) -> CorpusError:
    return CorpusError(
        f"cannot write the token cache under {cache_dir} ({reason}): set paths.data_dir (or "
        "data.cache_dir) to a writable folder"
    )


class _progress_bar:
    """A rich progress bar fed by the preparation's (phase, bytes done, bytes in all) reports."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description:>10}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        return self.update

    def update(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total)
        self.bar.update(self.tasks[phase], completed=done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def prepare_entry() -> None:
    """Console script `tinyllm-prepare`."""
    sys.exit(prepare_main())


# --- where the command line says runs live ----------------------------------------------------


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _overrides(argv: list[str]) -> list[str]:
    """The command line's overrides: `key=value` and `~key` (a deletion needs no value)."""
    return [a for a in argv[1:] if ("=" in a or a.startswith("~")) and not a.startswith("-")]


def _values(argv: list[str]) -> dict[str, str]:
    """key -> value of the `key=value` overrides, unquoted as Hydra reads them: Lightning's DDP
    launcher passes `hydra.run.dir="..."` on to the other ranks with its quotes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, values = OverridesParser.create(), {}
    for override in _overrides(argv):
        if "=" not in override:
            continue
        value = override.split("=", 1)[1]
        with contextlib.suppress(HydraException):  # not an override Hydra can read: as given
            parsed = parser.parse_overrides([override])[0].value()
            value = parsed if isinstance(parsed, str) else value
        values[_key(override)] = value
    return values


@functools.lru_cache(maxsize=4)
def _composed(argv: tuple[str, ...]) -> DictConfig:
    """The config a run of `argv` composes: the packaged configs, yours (`--config-dir`,
    `--config-name`) and the overrides but Hydra's own and the run's folder and checkpoint,
    without starting a run. Raises Hydra's or OmegaConf's error for a bad override."""
    from hydra import compose, initialize_config_module

    given = _hydra_arguments(list(argv))  # a tuple: the cache's key
    overrides = [a for a in given.overrides if _key(a) not in (*_RUN_KEYS, "hydra")]
    overrides = [a for a in overrides if not _key(a).startswith("hydra.")]
    if given.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(given.config_dir).resolve()}]")
    with initialize_config_module("tinyllm.configs", version_base="1.3"):
        return compose(given.config_name or "train", overrides=overrides, return_hydra_config=True)


def check_config(argv: list[str]) -> None:
    """Before Hydra creates the run's folder: the overrides compose, and the values pass the
    checks training starts with (`validate`, `check_machine`), or one ConfigError line names
    the problem and the fix. Hydra would report a bad override over several lines (exit 1) and
    a bad value would leave a run folder of only its log.

    Only a plain run (overrides, no flag) is checked here. With a flag Hydra prints something
    (`--cfg`, `--help`), sweeps (`-m`) or composes from a folder of yours (`--config-dir`,
    `--config-path`), and with `hydra.mode=` or a search config (`hparams_search=optuna`) it
    sweeps: it checks those itself, and each sweep job checks its own values. The corpus is
    looked up as the run's first step looks it up (`corpus_files`); a text too short for its
    windows is found when the run reads it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    if any(a.startswith("-") for a in argv[1:]):
        _hydra_arguments(argv)  # a flag Hydra does not know, or without its value: one line
        return
    parser, sweeps = OverridesParser.create(), []
    for override in _overrides(argv):
        try:
            parsed = parser.parse_overrides([override])[0]
        except OverrideParseException as e:
            raise ConfigError(error_line(e)) from None  # "cannot read 'key=value': ..."
        if parsed.key_or_group == "hydra.mode":
            return
        if parsed.is_sweep_override():
            sweeps.append(override)
    try:
        # a search config (hparams_search=optuna) sweeps by itself, over values it chooses:
        # each of its jobs checks its own; a sweep without one, Hydra asks for -m (below)
        plain = _composed(tuple(a for a in argv if a not in sweeps))
        if plain.hydra.mode == RunMode.MULTIRUN:
            return
        cfg = _composed(tuple(argv))
        validate(cfg)
        check_machine(cfg)
        if cfg.data.path is not None:  # the run's first step: a missing file, an empty folder
            corpus_files(cfg.data.path)
    except CorpusError as e:
        raise ConfigError(str(e)) from None
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        if "HydraConfig was not set" in str(e):  # a ${hydra:...} value: known once Hydra runs
            return
        if isinstance(e, ConfigError):  # validate's own line
            raise
        raise ConfigError(error_line(e)) from None


def _hydra_arguments(argv: list[str]):
    """`argv` as Hydra's own parser reads it (its flags, then `.overrides`), or one
    ConfigError line where Hydra would refuse it (and print its usage block first)."""
    from hydra._internal.utils import get_args_parser

    def refuse(message: str):
        raise ConfigError(f"{message} (see {Path(argv[0]).name} --help)")

    parser = get_args_parser()
    parser.error = refuse
    return parser.parse_args(argv[1:])


def configured_log_dir(argv: list[str]) -> Path:
    """`paths.log_dir` as the run would compose it (or, for overrides that do not compose, as
    they name it: Hydra or check_config reports them)."""
    try:
        return Path(_composed(tuple(argv)).paths.log_dir)
    except Exception:  # noqa: BLE001 - a bad override: reported where the run is checked
        values = _values(argv)
        root = values.get("paths.root_dir", ".")
        return Path(values.get("paths.log_dir") or default_log_dir(root))


def check_output_argv(argv: list[str]) -> None:
    """The folder named by `hydra.run.dir=` (or `hydra.sweep.dir=` with -m), or else the
    configured `paths.log_dir`, must be a folder we can write in."""
    values = _values(argv)
    multirun = any(a in ("-m", "--multirun") for a in argv[1:])
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = values.get(key)
    if folder is None:
        folder, key = str(configured_log_dir(argv)), "paths.log_dir"
    if "$" in folder:  # an interpolation: Hydra resolves it, training.check_output_dir checks
        return
    path = Path(folder).expanduser()
    new_run = key == "hydra.run.dir" and "ckpt_path" not in values
    if new_run and (path / _LAST_IN_RUN).is_file():  # a new run would mix its files in
        raise RunFolderError(
            f"{path} already holds a run ({_LAST_IN_RUN}): continue it with "
            f"resume={path}, or set hydra.run.dir to a new folder"
        )
    if key == "hydra.sweep.dir" and path.is_dir():  # its jobs would mix with the old ones
        job = next((j for j in sorted(path.iterdir()) if (j / ".hydra").is_dir()), None)
        if job is not None:
            raise RunFolderError(
                f"{path} already holds a sweep's jobs ({job.name}/): continue one with "
                f"resume={job}, or set hydra.sweep.dir to a new folder"
            )
    # made to be probed, then removed again: Hydra makes the run's folder, and a command that
    # runs nothing (--help, --cfg job) leaves no empty outputs/ behind
    if path.is_file():  # mkdir would say "File exists"
        raise RunFolderError(f"{key}={path} is a file: set {key} to a folder")
    made = missing_folders(path)
    if made and made[0] == path and key == "hydra.run.dir":
        new_run_folder(path, made[1:])
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise RunFolderError(
            f"output folder {path} is not writable ({e.strerror or e}): set {key} to a "
            "writable folder"
        ) from None
    finally:
        remove_empty(made)


# --- resume=true / resume=PATH ---------------------------------------------------------------


def find_resumable_run(log_dir: str | Path) -> Path:
    """The run folder under `log_dir` whose `checkpoints/last.ckpt` was written most recently."""
    run = newest_with(log_dir, _LAST_IN_RUN)
    if run is None:
        raise CheckpointError(
            f"no run to resume under {log_dir}/ (none has {_LAST_IN_RUN}): "
            "start one with `python train.py`, or pass resume=<run folder>"
        )
    return run


def resolve_resume(value: str, log_dir: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) for `resume=VALUE`: true (the newest run), a run folder, or a
    .ckpt inside a run's checkpoints/ folder."""
    if value.strip().lower() in _TRUE:
        run = find_resumable_run(log_dir)
        return run, run / _LAST_IN_RUN
    path = Path(value).expanduser()
    if path.is_file() and path.suffix == ".ckpt":
        if path.parent.name != CHECKPOINT_DIR:
            raise CheckpointError(
                f"{path} is not inside a run's checkpoints/ folder: resume=<run folder>, "
                f"or start a new run from it with ckpt_path={path}"
            )
        return path.parent.parent, path
    if path.is_dir():
        if (path / _LAST_IN_RUN).is_file():
            return path, path / _LAST_IN_RUN
        raise CheckpointError(
            f"{path} has no {_LAST_IN_RUN} to resume from (pass a run folder of `python train.py`)"
        )
    raise CheckpointError(f"resume={value}: no such run folder or checkpoint")


def _saved_overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); resume with ckpt_path= instead") from None
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise CheckpointError(f"{path} is not a list of overrides; resume with ckpt_path=")
    return [o for o in saved if _key(o) not in _RUN_KEYS]


def resolve_resume_argv(argv: list[str]) -> list[str]:
    """`train.py ... resume=X` -> the run's saved overrides + yours + its folder and last.ckpt.

    Overrides given now win over the saved ones with the same key (e.g. a larger
    `trainer.max_steps` to train on). Without `resume=` (or with resume=false/null) `argv` is
    returned unchanged. Multirun (`-m`) cannot resume; its jobs are resumed one by one.
    """
    if not any(a.startswith("resume=") for a in argv[1:]):
        return argv
    flags, overrides = _split_flags(argv)  # `-p resume=x` is a flag's value, not a resume
    resume = [o for o in overrides if o.startswith("resume=")]
    if not resume:
        return argv
    value = resume[-1].split("=", 1)[1]
    if value.strip().lower() in _FALSE:
        return [argv[0], *flags, *(o for o in overrides if not o.startswith("resume="))]
    if any(a in ("-m", "--multirun") for a in flags):
        raise CheckpointError("resume= works on one run: resume each job folder of a sweep")
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("ckpt_path=")]
    user = [o for o in overrides if _key(o) not in ("resume", "ckpt_path")]
    log_dir = configured_log_dir(argv) if value.strip().lower() in _TRUE else None
    run, ckpt = resolve_resume(value, log_dir or ".")
    # a ckpt_path= of its own would be dropped (DDP's other ranks repeat the run's own one)
    if given and given[-1] and Path(given[-1]).expanduser().resolve() != ckpt.resolve():
        raise CheckpointError(
            f"resume= continues {run} from {ckpt}, not from ckpt_path={given[-1]}: to continue "
            "from that checkpoint pass resume=<it>, or start a new run from it with ckpt_path= "
            "alone"
        )
    # every override's key, `~key` deletions included (a saved one must not apply twice)
    user_keys = {_key(a) for a in user}
    saved = [o for o in _saved_overrides(run) if _key(o) not in user_keys]
    if "trainer.precision" not in user_keys | {_key(o) for o in saved}:
        saved += _trained_precision(run)
    run_dir = [] if "hydra.run.dir" in user_keys else [f"hydra.run.dir={run}"]
    flags = _config_flags(run, flags) + flags  # Hydra takes its flags before the overrides
    return [argv[0], *flags, *saved, *user, *run_dir, f"ckpt_path={ckpt}", f"resume={run}"]


def _split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags with their values, the overrides) of a command line's arguments."""
    overrides = _hydra_arguments(argv).overrides
    left, flags = list(overrides), []
    for arg in argv[1:]:
        if left and arg == left[0]:
            left.pop(0)
        else:
            flags.append(arg)
    return flags, overrides


def _config_flags(run: Path, flags: list[str]) -> list[str]:
    """`--config-name`/`--config-dir` as the run was started with them, unless given again:
    without them its saved overrides would be composed on another primary config."""
    try:
        hydra_cfg = read_yaml(run / ".hydra" / "hydra.yaml")["hydra"]
        job, sources = hydra_cfg["job"], hydra_cfg["runtime"]["config_sources"]
    except (KeyError, TypeError):
        return []
    given = {f.split("=", 1)[0] for f in flags}
    added = []
    if not given & {"--config-name", "-cn"} and job.get("config_name") not in (None, "train"):
        added += ["--config-name", str(job["config_name"])]
    folders = [s.get("path") for s in sources if s.get("provider") == "command-line"]
    if not given & {"--config-dir", "-cd"} and folders and folders[0]:
        added += ["--config-dir", str(folders[0])]
    return added


def _trained_precision(run: Path) -> list[str]:
    """`trainer.precision=` as the run trained: `auto` measures the machine again at every
    start, and a resumed run must not switch between bf16 and fp32 half-way."""
    try:
        precision = read_yaml(run / RUN_CONFIG)["trainer"]["precision"]
    except (KeyError, TypeError):
        return []
    return [f"trainer.precision={precision}"] if isinstance(precision, (str, int)) else []
