"""Validation loss against training time, from the TensorBoard event files of runs.

    python -m benchmarks.plot outputs/bench/final/*/0 --out benchmarks/val_loss_vs_time.png
    python -m benchmarks.plot outputs/bench/final/*/0 --nanogpt outputs/bench/nanogpt/curve.json

Time zero is the event file's first event (the logger starts with the fit); each point is a
`val/loss` event at its wall time. --nanogpt adds curve files written by benchmarks/nanogpt.py
(timed from the launch of nanoGPT's train.py; its val loss is an estimate over a few random
batches, which the label says). Needs matplotlib (a benchmark-only extra).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from collections.abc import Sequence
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def val_curve(
    run_dir: str | Path, tag: str = "val/loss", start: float | None = None
) -> tuple[list[float], list[float]]:
    """(seconds since the run's first event, value) of every `tag` event under `run_dir`.

    `start` (epoch seconds, e.g. the process launch) replaces the first event as time zero, for
    comparisons with runs timed from their launch (benchmarks/nanogpt.py).
    """
    times, values = [], []
    # glob's ** follows linked folders (a run linked into a plot folder); Path.rglob does not
    pattern = str(Path(glob.escape(str(run_dir))) / "**" / "events.out.tfevents.*")
    for events in sorted(glob.glob(pattern, recursive=True)):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag not in acc.Tags().get("scalars", []):
            continue
        zero = acc.FirstEventTimestamp() if start is None else start
        for event in acc.Scalars(tag):
            times.append(event.wall_time - zero)
            values.append(event.value)
    return times, values


def label_of(run_dir: Path) -> str:
    """A run's name: its multirun folder (and job number when there are several)."""
    run_dir = Path(run_dir)
    if run_dir.name.isdigit():
        jobs = [p for p in run_dir.parent.iterdir() if p.name.isdigit()]
        return run_dir.parent.name if len(jobs) == 1 else f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def nanogpt_curve(path: str | Path) -> tuple[str, list[float], list[float]]:
    """(label, seconds, val loss) of a benchmarks/nanogpt.py curve file."""
    result = json.loads(Path(path).read_text())
    device = str(result.get("device") or "?").upper()
    # its iterations (the last --max_iters of the command): a run longer than the recipe's own
    # 2,000 is told apart from it
    iters = re.findall(r"--max_iters=(\d+)", str(result.get("recipe", "")))
    length = f", {int(iters[-1]):,} iterations" if iters else ""
    label = f"nanoGPT {device} recipe{length} ({result.get('eval_iters')}-batch estimate)"
    curve = result["curve"]
    return label, [p["seconds"] for p in curve], [p["val_loss"] for p in curve]


def plot(
    run_dirs: list[str],
    out: str,
    target: float | None = 1.5,
    title: str = "",
    nanogpt: Sequence[str] = (),
) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    finals = {}
    curves = [(label_of(Path(d)), *val_curve(d)) for d in run_dirs]
    curves += [nanogpt_curve(path) for path in nanogpt]
    for label, times, values in curves:
        if not values:
            continue
        finals[label] = {"best": min(values), "seconds": times[-1]}
        ax.plot([t / 60 for t in times], values, marker=".", label=f"{label} ({min(values):.3f})")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel("training time (minutes)")
    # what each curve's validation covers is the run's setting (data.max_val_windows); nanoGPT's
    # curves say their estimate in their labels
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(title or "validation loss vs time, 2-core CPU")
    ax.set_ylim(top=2.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return finals


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders (each holding a tensorboard/ folder)")
    parser.add_argument(
        "--nanogpt", action="append", default=[], help="a curve.json of benchmarks/nanogpt.py"
    )
    parser.add_argument("--out", default="benchmarks/val_loss_vs_time.png")
    parser.add_argument("--title", default="")
    parser.add_argument("--target", type=float, default=1.5)
    args = parser.parse_args(argv)
    if not args.runs and not args.nanogpt:
        parser.error("give run folders, --nanogpt curve files, or both")
    for label, r in plot(args.runs, args.out, args.target, args.title, args.nanogpt).items():
        print(f"{label}: best val/loss {r['best']:.4f}, last at {r['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
