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
from tinyllm.config import ConfigError
from tinyllm.corpus import CorpusError
from tinyllm.training import train

log = logging.getLogger("tinyllm.train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except (ConfigError, CorpusError, ArtifactError) as e:
        log.error("%s", e)
    except InstantiationException as e:
        log.error("%s", str(e.__cause__ or e).strip().splitlines()[0])
    sys.exit(2)


if __name__ == "__main__":
    main()
