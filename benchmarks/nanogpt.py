"""nanoGPT beside tinyllm: run nanoGPT's own train.py and record its validation loss against time.

    python -m benchmarks.nanogpt                              # README CPU recipe -> curve.json
    python -m benchmarks.nanogpt max_iters=500                # the recipe with nanoGPT overrides
    python -m benchmarks.nanogpt --device cuda                # nanoGPT's GPU recipe alone
    python -m benchmarks.nanogpt --device cuda --gpu-compare  # both GPU recipes, time to 1.47

nanoGPT is the peer, not a dependency: the project never imports it. Its files (MIT) come from
../shared/anchors/nanoGPT, are copied into a scratch folder (--workdir, default
outputs/bench/nanogpt) with tiny-shakespeare as data/shakespeare_char/input.txt, prepared by its
prepare.py and run there as a subprocess. Each line of its stdout is stamped with the seconds since
its train.py was launched (start-up, data loading and compilation count) and its eval lines
("step N: train loss X, val loss Y") become the curve. Without ../shared the script says so in
one line and exits non-zero.

nanoGPT's "val loss" is an estimate: the mean over eval_iters random batches (20 in the CPU
recipe), not the whole validation split that tinyllm's val/loss covers; the JSON says which.

--gpu-compare runs, one after the other on the same GPU, nanoGPT's GPU recipe
(config/train_shakespeare_char.py with its defaults, torch.compile on) and tinyllm's
`experiment=shakespeare_gpu` on the same 90/10 split (val/loss over the whole split, read from the
run's TensorBoard events), and reports each side's seconds since launch to the first validation
loss at or below 1.47 (nanoGPT's README: 1.4697 in ~3 min on an A100). --tinyllm adds Hydra
overrides to tinyllm's side, key=value arguments go to nanoGPT's. Measured on one H100
(benchmarks/RESULTS.md, gpu_compare.json); its flow is also checked on CPU with tiny models
(the hidden --dev-tiny flag).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from ast import literal_eval
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ANCHOR = SHARED / "anchors" / "nanoGPT"
CORPUS = SHARED / "data" / "tinyshakespeare.txt"
WORKDIR = ROOT / "outputs" / "bench" / "nanogpt"
TARGET = 1.47  # nanoGPT's README: val 1.4697 for its GPU recipe

CONFIG = "config/train_shakespeare_char.py"
# nanoGPT's README CPU recipe, verbatim
CPU_RECIPE = [
    CONFIG, "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
    "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
    "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
]  # fmt: skip
GPU_RECIPE = [CONFIG]
TINYLLM_GPU = ["experiment=shakespeare_gpu", "training.val_split=0.1", "data.max_val_windows=null"]

# --dev-tiny: the --gpu-compare flow on CPU in seconds, a check of the plumbing, not a measurement
DEV_NANOGPT = [
    "--device=cpu", "--compile=False", "--max_iters=20", "--lr_decay_iters=20",
    "--eval_interval=10", "--eval_iters=2", "--block_size=32", "--batch_size=4",
    "--n_layer=1", "--n_head=2", "--n_embd=16", "--dropout=0.0",
]  # fmt: skip
DEV_TINYLLM = [
    "trainer.accelerator=cpu", "trainer.precision=32-true", "model=tiny",
    "training.max_context=32", "training.batch_size=4", "training.warmup_steps=5",
    "trainer.max_steps=20", "training.val_interval=10", "training.sample_frequency=100",
    "data.max_val_windows=4", "data.num_workers=0", "data.pin_memory=false",
    "callbacks.progress_bar=null", "print_config=false",
]  # fmt: skip

# nanoGPT's prints (train.py at commit 3adf61e1)
EVAL = re.compile(r"^step (\d+): train loss (\S+), val loss (\S+)$")
ITER = re.compile(r"^iter (\d+): loss (\S+), time (\S+)ms, mfu (\S+)%$")
TOKENS = re.compile(r"^tokens per iteration will be: ([\d,]+)$")
# the config file it echoes (`key = value  # comment`) and its "Overriding: key = value" lines;
# read in order, the last one of a key is the value train.py ran with
SETTING = re.compile(r"^(?:Overriding: )?([a-z_]\w*) = (.+?)\s*(?:#.*)?$")


def literal(text: str):
    """A setting's value as Python would read it (nanoGPT's configurator uses literal_eval)."""
    try:
        return literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def parse(lines: Iterable[tuple[float, str]]) -> dict:
    """nanoGPT's stamped stdout as data: settings, eval points, iteration timings."""
    settings: dict = {}
    curve: list[dict] = []
    iterations: list[dict] = []
    tokens_per_iter = None
    for seconds, raw in lines:
        line = raw.strip()
        if m := EVAL.match(line):
            point = {"step": int(m[1]), "seconds": round(seconds, 3)}
            curve.append(point | {"train_loss": float(m[2]), "val_loss": float(m[3])})
        elif m := ITER.match(line):
            point = {"step": int(m[1]), "seconds": round(seconds, 3)}
            iterations.append(point | {"loss": float(m[2]), "ms": float(m[3])})
        elif m := TOKENS.match(line):
            tokens_per_iter = int(m[1].replace(",", ""))
        elif m := SETTING.match(line):
            settings[m[1]] = literal(m[2])
    return {
        "settings": settings,
        "tokens_per_iter": tokens_per_iter,
        "curve": curve,
        "iterations": iterations,
    }


def defaults(train_py: Path) -> list[str]:
    """train.py's block of default settings (`key = value` lines before `config_keys`)."""
    lines = train_py.read_text().splitlines()
    return lines[: next(i for i, line in enumerate(lines) if line.startswith("config_keys"))]


def merge(base: list[str], extra: Iterable[str]) -> list[str]:
    """`base` with `extra`'s key=value items replacing those of the same key (or appended)."""
    items = {item.split("=", 1)[0]: item for item in base}
    items.update({item.split("=", 1)[0]: item for item in extra})
    return list(items.values())


def as_flags(overrides: Iterable[str]) -> list[str]:
    """nanoGPT's --key=value form of `key=value` overrides (already --key=value ones kept)."""
    return [o if o.startswith("--") else f"--{o}" for o in overrides]


def first_at_or_below(curve: list[dict], target: float) -> dict | None:
    """The first eval point whose val_loss is at or below `target` (None: never reached)."""
    return next((p for p in curve if p["val_loss"] <= target), None)


@dataclass
class Stamped:
    lines: list[tuple[float, str]]
    seconds: float
    started: float  # epoch seconds at launch, for clocks kept elsewhere (TensorBoard events)
    returncode: int


def run_stamped(command: list[str], cwd: Path, log: Path, echo: str = "") -> Stamped:
    """Run `command`, stamping each stdout line with seconds since launch as it arrives.

    Every line goes to `log`; with `echo`, nanoGPT eval lines are also printed as progress.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines must arrive when printed, not at exit
    lines = []
    started, start = time.time(), time.perf_counter()
    with (
        open(log, "w") as out,
        subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        for line in proc.stdout:
            seconds = time.perf_counter() - start
            lines.append((seconds, line.rstrip("\n")))
            out.write(f"{seconds:10.3f} {line}")
            if echo and EVAL.match(line.strip()):
                print(f"[{seconds:8.1f} s] {echo}: {line.strip()}", flush=True)
    return Stamped(lines, time.perf_counter() - start, started, proc.returncode)


def require(anchor: Path, corpus: Path) -> None:
    """Stop with one line when nanoGPT's files or the corpus are not there."""
    if not (anchor / "train.py").is_file():
        sys.exit(f"nanoGPT is not there: no {anchor / 'train.py'} (pass --anchor)")
    if not corpus.is_file():
        sys.exit(f"tiny-shakespeare is not there: no {corpus} (pass --corpus)")


def check(run: Stamped, name: str, log: Path) -> None:
    """Stop with the run's last lines when it failed."""
    if run.returncode:
        tail = "\n".join(line for _, line in run.lines[-15:])
        sys.exit(f"{tail}\n{name} failed (exit {run.returncode}); full log: {log}")


def prepare(anchor: Path, corpus: Path, workdir: Path) -> Path:
    """A scratch copy of nanoGPT with tiny-shakespeare in place and its train/val .bin files."""
    copy = workdir / "nanoGPT"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(anchor, copy, ignore=shutil.ignore_patterns("out*", "__pycache__", "*.bin"))
    shutil.copyfile(corpus, copy / "data" / "shakespeare_char" / "input.txt")
    script = ["data/shakespeare_char/prepare.py"]  # no download: input.txt is there
    subprocess.run([sys.executable, *script], cwd=copy, check=True, capture_output=True)
    return copy


def run_nanogpt(anchor: Path, corpus: Path, workdir: Path, args: list[str]) -> dict:
    """nanoGPT's train.py with `args` in a fresh scratch copy: its curve and throughput."""
    copy = prepare(anchor, corpus, workdir)
    log = workdir / "nanogpt.log"
    run = run_stamped([sys.executable, "train.py", *args], copy, log, echo="nanoGPT")
    check(run, "nanoGPT's train.py", log)
    # train.py's defaults first, then what its output says the config file and flags changed
    parsed = parse([*((0.0, line) for line in defaults(copy / "train.py")), *run.lines])
    settings, per_iter = parsed["settings"], parsed["tokens_per_iter"]
    batches, batch = settings.get("eval_iters"), "{batch_size}x{block_size}".format(**settings)
    # the median iteration leaves out the iterations that include an eval or compilation
    ms = statistics.median(i["ms"] for i in parsed["iterations"]) if parsed["iterations"] else None
    done = parsed["iterations"][-1]["step"] + 1 if parsed["iterations"] else 0
    return {
        "recipe": "python train.py " + " ".join(args),
        "device": settings.get("device"),
        "compile": settings.get("compile"),
        "eval_iters": batches,
        "val_over": f"{batches} random batches",
        "val_loss_is": (
            f"nanoGPT's estimate: mean over eval_iters={batches} random batches of {batch} "
            "characters, not the whole split"
        ),
        "seconds_since": "launch of nanoGPT's train.py (start-up, data and compilation count)",
        "curve": parsed["curve"],
        "tokens_per_iter": per_iter,
        "tokens_per_s": round(per_iter / ms * 1000) if per_iter and ms else None,
        "tokens_per_s_note": (
            "tokens_per_s: tokens per iteration / median iteration time (training steps only); "
            "overall: every iteration's tokens / total seconds (start-up and evals included)"
        ),
        "tokens_per_s_overall": round(per_iter * done / run.seconds) if per_iter else None,
        "total_seconds": round(run.seconds, 2),
        "log": str(log),
    }


def run_tinyllm(corpus: Path, workdir: Path, overrides: list[str]) -> dict:
    """tinyllm's train.py with `overrides`: val/loss from its TensorBoard events vs launch time."""
    from benchmarks.plot import val_curve

    run_dir = workdir / "tinyllm"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # no stale event files in the curve
    hydra = [f"data.path={corpus.resolve()}", f"hydra.run.dir={run_dir}"]
    log = workdir / "tinyllm.log"
    run = run_stamped([sys.executable, "train.py", *overrides, *hydra], ROOT, log)
    check(run, "tinyllm's train.py", log)
    times, values = val_curve(run_dir, start=run.started)
    windows = dict(o.split("=", 1) for o in overrides if "=" in o).get("data.max_val_windows")
    return {
        "recipe": "python train.py " + " ".join(overrides),
        "val_over": "whole split" if windows == "null" else f"{windows} windows",
        "val_loss_is": f"tinyllm's val/loss, data.max_val_windows={windows} (90/10, file order)",
        "seconds_since": "launch of tinyllm's train.py (start-up, data and compilation count)",
        "curve": [
            {"seconds": round(t, 3), "val_loss": v} for t, v in zip(times, values, strict=True)
        ],
        "total_seconds": round(run.seconds, 2),
        "run_dir": str(run_dir),
        "log": str(log),
    }


def compare_table(sides: dict[str, dict], target: float) -> str:
    """One row per side: seconds to the target, best val loss, whole run, what the loss covers."""
    from tinyllm.sweep import markdown_table

    rows = []
    for name, side in sides.items():
        hit = first_at_or_below(side["curve"], target)
        best = min((p["val_loss"] for p in side["curve"]), default=float("nan"))
        seconds = f"{hit['seconds']:.1f}" if hit else "not reached"
        rows.append(
            [name, seconds, f"{best:.4f}", f"{side['total_seconds']:.1f}", side["val_over"]]
        )
    header = ["", f"s to val <= {target}", "best val", "run s", "val loss over"]
    return markdown_table(header, rows)


def write(path: Path, result: dict) -> None:
    """The result as JSON with the machine it ran on (common imports torch: only now)."""
    from benchmarks.common import machine

    result = {**result, "machine": machine()}
    try:
        import torch

        if torch.cuda.is_available():
            result["machine"]["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other --key=value options go to nanoGPT's train.py, as do key=value arguments.",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu-compare", action="store_true", help="nanoGPT and tinyllm on a GPU")
    parser.add_argument("--anchor", type=Path, default=ANCHOR, help="nanoGPT's files")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="scratch folder")
    parser.add_argument("--out", type=Path, help="JSON (default <workdir>/curve.json|compare.json)")
    parser.add_argument("--target", type=float, default=TARGET, help="val loss for --gpu-compare")
    parser.add_argument("--tinyllm", action="append", default=[], help="tinyllm Hydra override")
    parser.add_argument("--dev-tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="nanoGPT overrides, e.g. max_iters=500")
    args, unknown = parser.parse_known_args(argv)
    if stray := [u for u in unknown if not (u.startswith("--") and "=" in u)]:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.gpu_compare and args.device == "cpu" and not args.dev_tiny:
        parser.error("--gpu-compare runs the GPU recipes: pass --device cuda")
    require(args.anchor, args.corpus)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    extra = as_flags([*args.overrides, *unknown])

    if not args.gpu_compare:
        recipe = CPU_RECIPE if args.device == "cpu" else GPU_RECIPE
        result = run_nanogpt(args.anchor, args.corpus, workdir, merge(recipe, extra))
        write(args.out or workdir / "curve.json", result)
        return

    dev_nano, dev_tiny = (DEV_NANOGPT, DEV_TINYLLM) if args.dev_tiny else ([], [])
    nano_args = merge(GPU_RECIPE, [*dev_nano, *extra])
    sides = {"nanoGPT": run_nanogpt(args.anchor, args.corpus, workdir, nano_args)}
    sides["tinyllm"] = run_tinyllm(
        args.corpus, workdir, merge(TINYLLM_GPU, dev_tiny + args.tinyllm)
    )
    table = compare_table(sides, args.target)
    print(table)
    result = {"target": args.target, "dev_tiny": args.dev_tiny, **sides, "table": table}
    write(args.out or workdir / "compare.json", result)


if __name__ == "__main__":
    main()
