"""Talk to a trained model: `python chat.py [MODEL] [--prompt TEXT] [options]`.

MODEL is a run folder, its best/ folder or a .ckpt file; without it, the best model of the most
recent run under outputs/ is used. `python chat.py --help` tells the rest; the console itself
lives in tinyllm/console/ (also installed as `tinyllm-chat`).
"""

import sys

from tinyllm.console import main

if __name__ == "__main__":
    sys.exit(main())
