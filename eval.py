"""Evaluate a saved model: `python eval.py MODEL [data.KEY=VALUE ...] [--json]`.

Reports loss, bits per character and perplexity on the run's validation split (same corpus,
cleaning and split as in training, read from the run's config.yaml) or on any text file
(`data.path=FILE`). See `python eval.py --help` and tinyllm/evaluation.py.
"""

from __future__ import annotations

import sys

from tinyllm.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
