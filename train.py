"""Train a character-level transformer: `python train.py [overrides]`, `-m` for sweeps.

Configuration lives in configs/ (start at configs/train.yaml); every value can be overridden on
the command line, e.g. `python train.py model=tiny training.learning_rate=3e-4`.
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
def main(cfg: DictConfig) -> float | None:
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


if __name__ == "__main__":
    # `resume=true` / `resume=RUN`: continue that run in its own folder with its own overrides
    try:
        sys.argv = resolve_resume_argv(sys.argv)
        check_output_argv(sys.argv)  # before Hydra creates the run folder
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()
