"""Peak memory: resident set size of a real `python train.py` run in a subprocess.

    python -m benchmarks.memory --corpus ../shared/data/tinyshakespeare.txt [--quick] [--steps N]

The run is the default recipe (every callback, the logger, one validation over the configured
validation windows, one text sample) cut to `--steps` optimizer steps; its peak RSS is read from
`getrusage(RUSAGE_CHILDREN).ru_maxrss` after it exits. The peak is reached in the first
validation, so a few hundred steps show the full run's figure (measured: RESULTS.md).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import QUICK, ROOT, bench_parser, report


def peak_rss(corpus: str | None, overrides: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="tinyllm-mem-") as run_dir:
        # train.py as a user runs it, from the current folder (its data/ and token caches)
        command = [sys.executable, "-c", _WRAPPER, sys.executable, str(ROOT / "train.py")]
        command += [f"trainer.max_steps={steps}", "print_config=false", f"hydra.run.dir={run_dir}"]
        if corpus:
            command.append(f"data.path={Path(corpus).resolve()}")
        command += [f"training.val_interval={max(1, steps // 2)}", *overrides]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"train.py failed:\n{done.stderr[-2000:]}")
    kilobytes = int(done.stdout.strip().splitlines()[-1])
    return {"steps": steps, "overrides": overrides, "peak_rss_mb": kilobytes / 1024}


# A fresh process that runs train.py as its only child and prints the child's peak RSS (KiB), so
# that nothing else this benchmark process ran can inflate the figure.
_WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def run(corpus: str | None, quick: bool = False, steps: int = 300) -> dict:
    if quick:
        results = {"default": peak_rss(corpus, QUICK, 4)}
    else:
        results = {
            "default": peak_rss(corpus, [], steps),
            "nanogpt_cpu": peak_rss(corpus, ["experiment=nanogpt_cpu"], steps),
        }
    for name, r in results.items():
        print(f"memory {name}: peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
    return results


def main(argv=None) -> None:
    parser = bench_parser(__doc__, overrides=False)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    report("memory", run(args.corpus, args.quick, args.steps))


if __name__ == "__main__":
    main()
