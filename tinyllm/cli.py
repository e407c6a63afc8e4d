"""Console scripts (pyproject.toml `[project.scripts]`), usable from any folder once installed:

    tinyllm-train [overrides]      as `python train.py`, configs read from the installed package
    tinyllm-chat [model]           as `python chat.py`
    tinyllm-eval MODEL [...]       as `python eval.py`
    tinyllm-prepare [overrides]    encode a corpus into its token cache ahead of training

The configs ship inside the package (tinyllm/configs/, which the repository's top-level
`configs/` links to). To use your own, point Hydra at a folder of your own YAML:
`tinyllm-train --config-dir my_configs` adds it to the search path after the packaged configs
(so new names: my_configs/model/huge.yaml is then `model=huge`); `--config-name my_train` uses
my_configs/my_train.yaml as the primary config (it can start with `defaults: [train, _self_]`).
Outputs and data go under the current folder (`paths.root_dir`).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from tinyllm.artifacts import ArtifactError
from tinyllm.checkpointing import CheckpointError, resolve_resume_argv
from tinyllm.config import ConfigError
from tinyllm.corpus import CorpusError
from tinyllm.faults import NonFiniteLossError, TrainingInterrupted, check_output_argv
from tinyllm.sweep import exit_job
from tinyllm.training import train

log = logging.getLogger("tinyllm.train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except (ConfigError, CorpusError, ArtifactError) as e:
        log.error("%s", e)
        exit_job(2, e)  # in a -m sweep: this job fails, the others still run (tinyllm/sweep.py)
    except InstantiationException as e:
        log.error("%s", str(e.__cause__ or e).strip().splitlines()[0])
        exit_job(2, str(e.__cause__ or e))
    except TrainingInterrupted as e:  # Ctrl-C or SIGTERM: saved, then stopped (tinyllm/faults.py)
        log.warning("%s", e)
        log.warning("resume with:   %s", e.command)
        sys.exit(e.exit_code)
    except NonFiniteLossError as e:
        log.error("%s", e)
        exit_job(1, e)
    sys.exit(2)


def train_main() -> None:
    """`python train.py` and `tinyllm-train`."""
    # `resume=true` / `resume=RUN`: continue that run in its own folder with its own overrides
    try:
        sys.argv = resolve_resume_argv(sys.argv)
        check_output_argv(sys.argv)  # before Hydra creates the run folder
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _train_app()


def chat_main() -> None:
    """`tinyllm-chat`: the chat console (as `python chat.py`)."""
    from tinyllm.console import main

    sys.exit(main())


def eval_main() -> None:
    """`tinyllm-eval`: loss, bits per character and perplexity of a saved model."""
    from tinyllm.evaluation import main

    sys.exit(main())


def prepare_main(argv: list[str] | None = None) -> int:
    """`tinyllm-prepare data.path=...`: encode a corpus into its token cache ahead of training.

    Takes the same `data.*` (and `paths.*`) overrides as training, so the cache it writes is
    the one `tinyllm-train` with those overrides maps; prepare on one machine, copy data/ (or
    share it) and train on another. Prints where the cache is; exits 2 with one line on bad input.
    """
    import argparse

    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    parser = argparse.ArgumentParser(
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
        datamodule = instantiate(cfg.data)
        with _progress_bar(enabled=not args.quiet) as progress:
            datamodule.progress = progress
            prepared = datamodule.prepare()
    except (CorpusError, ValueError, HydraException, OmegaConfBaseException) as e:
        message = str(e.__cause__ or e).strip().splitlines()
        print(f"error: {message[0] if message else type(e).__name__}", file=sys.stderr)
        return 2
    if prepared.folder is None:
        print(
            f"error: cannot write the token cache under {datamodule.cache_dir}: set "
            "paths.data_dir (or data.cache_dir) to a writable folder",
            file=sys.stderr,
        )
        return 2
    print(
        f"prepared {datamodule.source}: {len(prepared.ids):,} tokens, vocabulary "
        f"{prepared.tokenizer.vocab_size} ({datamodule.tokenizer_kind}), in {prepared.folder}"
    )
    return 0


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
