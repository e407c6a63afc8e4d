"""Train a character-level transformer: `python train.py [overrides]`, `-m` for sweeps.

Configuration lives in configs/ (start at configs/train.yaml); every value can be overridden on
the command line, e.g. `python train.py model=tiny training.learning_rate=3e-4`.
`python train.py resume=true` continues the latest interrupted run in its own folder.
The installed command `tinyllm-train` is the same program (tinyllm/cli.py).
"""

from tinyllm.cli import train_main

if __name__ == "__main__":
    train_main()
