"""Validation loss against training time, from the TensorBoard event files of runs.

    python -m benchmarks.plot outputs/bench/final/*/0 --out benchmarks/val_loss_vs_time.png

Time zero is the event file's first event (the logger starts with the fit); each point is a
`val/loss` event at its wall time. Needs matplotlib (a benchmark-only extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def val_curve(run_dir: str | Path, tag: str = "val/loss") -> tuple[list[float], list[float]]:
    """(seconds since the run's first event, value) of every `tag` event under `run_dir`."""
    times, values = [], []
    for events in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag not in acc.Tags().get("scalars", []):
            continue
        start = acc.FirstEventTimestamp()
        for event in acc.Scalars(tag):
            times.append(event.wall_time - start)
            values.append(event.value)
    return times, values


def label_of(run_dir: Path) -> str:
    """A run's name: its multirun folder (and job number when there are several)."""
    run_dir = Path(run_dir)
    if run_dir.name.isdigit():
        jobs = [p for p in run_dir.parent.iterdir() if p.name.isdigit()]
        return run_dir.parent.name if len(jobs) == 1 else f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def plot(run_dirs: list[str], out: str, target: float | None = 1.5, title: str = "") -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    finals = {}
    for run_dir in run_dirs:
        times, values = val_curve(run_dir)
        if not values:
            continue
        label = label_of(Path(run_dir))
        finals[label] = {"best": min(values), "seconds": times[-1]}
        ax.plot([t / 60 for t in times], values, marker=".", label=f"{label} ({min(values):.3f})")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("validation loss (nats/char, whole split)")
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
    parser.add_argument("runs", nargs="+", help="run folders (each holding a tensorboard/ folder)")
    parser.add_argument("--out", default="benchmarks/val_loss_vs_time.png")
    parser.add_argument("--title", default="")
    parser.add_argument("--target", type=float, default=1.5)
    args = parser.parse_args(argv)
    for label, r in plot(args.runs, args.out, args.target, args.title).items():
        print(f"{label}: best val/loss {r['best']:.4f}, last at {r['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
