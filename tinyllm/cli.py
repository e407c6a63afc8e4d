"""Console scripts (pyproject.toml `[project.scripts]`), usable from any folder once installed:

    tinyllm-train [overrides]      as `python train.py`, configs read from the installed package
    tinyllm-chat [model]           as `python chat.py`
    tinyllm-eval MODEL [...]       as `python eval.py`

The configs ship inside the package (tinyllm/configs/, which the repository's top-level
`configs/` links to). To use your own, point Hydra at a folder of your own YAML:
`tinyllm-train --config-dir my_configs` adds it in front of the packaged configs (a group file
there, e.g. my_configs/model/huge.yaml, is then `model=huge`); `--config-name my_train` picks
another primary config from it. Outputs and data go under the current folder (`paths.root_dir`).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

log = logging.getLogger("tinyllm.train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    # the same task and error handling as train.py
    from tinyllm.artifacts import ArtifactError
    from tinyllm.config import ConfigError
    from tinyllm.corpus import CorpusError
    from tinyllm.sweep import exit_job
    from tinyllm.training import train

    try:
        from tinyllm.faults import NonFiniteLossError, TrainingInterrupted
    except ImportError:  # pragma: no cover - older trees without fault handling
        NonFiniteLossError = TrainingInterrupted = ()  # noqa: N806

    try:
        return train(cfg)
    except (ConfigError, CorpusError, ArtifactError) as e:
        log.error("%s", e)
        exit_job(2, e)
    except InstantiationException as e:
        log.error("%s", str(e.__cause__ or e).strip().splitlines()[0])
        exit_job(2, str(e.__cause__ or e))
    except TrainingInterrupted as e:
        log.warning("%s", e)
        log.warning("resume with:   %s", e.command)
        sys.exit(e.exit_code)
    except NonFiniteLossError as e:
        log.error("%s", e)
        exit_job(1, e)
    sys.exit(2)


def train_main() -> None:
    """`tinyllm-train`: train.py as an installed command."""
    try:
        from tinyllm.checkpointing import CheckpointError, resolve_resume_argv
        from tinyllm.faults import check_output_argv
    except ImportError:  # pragma: no cover - older trees without resume support
        resolve_resume_argv = check_output_argv = None
        CheckpointError = ValueError  # noqa: N806
    if resolve_resume_argv is not None:
        try:
            sys.argv = resolve_resume_argv(sys.argv)
            check_output_argv(sys.argv)  # before Hydra creates the run folder
        except (CheckpointError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    _train_app()


def chat_main() -> None:
    """`tinyllm-chat`: the chat console (`tinyllm.console.main`, the code behind chat.py)."""
    try:
        from tinyllm.console import main
    except ImportError:
        main = _repository_chat_main()
    sys.exit(main())


def _repository_chat_main():
    """chat.py's `main` from a source checkout (editable install), while the console module
    does not exist yet."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "chat.py"
    if not script.is_file():
        print("error: the chat console is not part of this installation", file=sys.stderr)
        sys.exit(2)
    return runpy.run_path(str(script), run_name="tinyllm_chat")["main"]


def eval_main() -> None:
    """`tinyllm-eval`: loss, bits per character and perplexity of a saved model."""
    from tinyllm.evaluation import main

    sys.exit(main())
