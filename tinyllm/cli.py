"""Console scripts (pyproject.toml `[project.scripts]`), usable from any folder once installed:

    tinyllm-train [overrides]      as `python train.py`, configs read from the installed package
    tinyllm-chat [model]           as `python chat.py`
    tinyllm-eval MODEL [...]       as `python eval.py`
    tinyllm-serve [model] [...]    the HTTP API and chat page (tinyllm/serve; the serve extra)

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


def serve_main() -> None:
    """`tinyllm-serve`: the OpenAI-compatible API and chat page (= `python -m tinyllm.serve`)."""
    from tinyllm.serve.server import main

    sys.exit(main())
