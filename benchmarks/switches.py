"""Speed switches: each config switch against its alternative, in the real Lightning pipeline.

    python -m benchmarks.switches --corpus ../shared/data/tinyshakespeare.txt [--quick]

Groups, each measured in alternating rounds in one process (training tokens/s, median):
  precision   trainer.precision=32-true | bf16-mixed
  compile     model.compile=false | true (plus the one-off compile time of the first steps)
  optimizer   training.optimizer_impl=auto | foreach | fused | loop (gradient clipping off)
  threads     training.num_threads=1 | 2 (torch.set_num_threads)
  muon        training.optimizer=adamw | muon (5 Newton-Schulz steps) | muon with 3 (the default)
  heads       model.n_head=3 (heads of 64, the default) | 6 (heads of 32)
  block       the model's block as GPT-NeoX (layernorm, gelu) | Qwen3 (rmsnorm, swiglu, qk_norm,
              no biases) | Nemotron (layernorm, relu2)
Every variant starts from the configured default recipe with only that switch changed.
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks.common import QUICK, Pipeline, bench_parser, median, report

GROUPS = {
    "precision": {
        "32-true": ["trainer.precision=32-true"],
        "bf16-mixed": ["trainer.precision=bf16-mixed"],
    },
    "compile": {"eager": ["model.compile=false"], "compiled": ["model.compile=true"]},
    # clipping off for every variant: under bf16-mixed Lightning cannot clip a fused optimizer
    "optimizer": {
        impl: [f"training.optimizer_impl={impl}", "training.gradient_clip=0"]
        for impl in ("auto", "foreach", "fused", "loop")
    },
    "muon": {
        "adamw": ["training.optimizer=adamw"],
        "muon": ["training.optimizer=muon", "training.muon_ns_steps=5"],
        "muon, 3 NS steps": ["training.optimizer=muon", "training.muon_ns_steps=3"],
    },
    "block": {
        "gpt-neox": ["model.norm=layernorm", "model.mlp=gelu", "model.qk_norm=false"],
        "qwen3": [
            *("model.norm=rmsnorm", "model.mlp=swiglu", "model.qk_norm=true", "model.bias=false")
        ],
        "nemotron": ["model.norm=layernorm", "model.mlp=relu2", "model.qk_norm=false"],
    },
    "heads": {"3 heads of 64": ["model.n_head=3"], "6 heads of 32": ["model.n_head=6"]},
    "threads": {
        f"{n} thread{'s' if n > 1 else ''}": [f"training.num_threads={n}"]
        for n in sorted({1, os.cpu_count() or 1})
    },
}


def measure_group(corpus, variants: dict, base: list[str], rounds: int, steps: int) -> dict:
    default_threads = torch.get_num_threads()
    pipelines, first = {}, {}
    for name, overrides in variants.items():
        pipelines[name] = pipeline = Pipeline(corpus, [*base, *overrides])
        threads = pipeline.cfg.training.get("num_threads") or default_threads
        torch.set_num_threads(threads)
        start = time.perf_counter()
        pipeline.lightning_round(1, warm=2)  # the first steps: compilation happens here
        first[name] = time.perf_counter() - start
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, pipeline in pipelines.items():
            torch.set_num_threads(pipeline.cfg.training.get("num_threads") or default_threads)
            times[name].append(pipeline.lightning_round(steps, warm=1))
    torch.set_num_threads(default_threads)
    result = {}
    for name, pipeline in pipelines.items():
        result[name] = {
            "tokens_per_s": pipeline.tokens_per_step / median(times[name]),
            "first_steps_s": first[name],
        }
    baseline = next(iter(result.values()))["tokens_per_s"]
    for r in result.values():
        r["speedup"] = r["tokens_per_s"] / baseline
    return result


def run(corpus: str | None, quick: bool = False, groups=None, extra=()) -> dict:
    rounds, steps = (1, 2) if quick else (3, 25)
    base = [*(QUICK if quick else []), *extra]
    results = {}
    for group in groups or GROUPS:
        variants = GROUPS[group]
        if quick and group == "compile":
            variants = {"eager": variants["eager"]}  # compiling takes too long for a smoke test
        results[group] = measure_group(corpus, variants, base, rounds, steps)
        line = ", ".join(
            f"{name} {r['tokens_per_s']:,.0f} tok/s ({r['speedup']:.2f}x)"
            for name, r in results[group].items()
        )
        print(f"switch {group}: {line}", flush=True)
    if "compile" in results and "compiled" in results["compile"]:
        c = results["compile"]
        c["compiled"]["compile_time_s"] = (
            c["compiled"]["first_steps_s"] - c["eager"]["first_steps_s"]
        )
    return results


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--groups", nargs="*", choices=sorted(GROUPS))
    args = parser.parse_args(argv)
    report("switches", run(args.corpus, args.quick, args.groups, args.overrides))


if __name__ == "__main__":
    main()
