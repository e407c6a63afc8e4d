"""Evaluate a saved model: `python eval.py MODEL [data.KEY=VALUE ...] [--json]`, or as a Hydra
app, `python eval.py model_path=MODEL data.path=other.txt split=train json=true`.

Reports loss, bits per character and perplexity on the run's validation split (same corpus,
cleaning and split as in training, read from the run's config.yaml) or on any text file
(`data.path=FILE`). Settings: tinyllm/configs/eval.yaml; see `python eval.py --help` and
tinyllm/evaluation.py.
"""

from __future__ import annotations

import sys

from tinyllm.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
