"""Learning per CPU-minute: drive the project's own `python train.py -m` over candidate recipes.

    python -m benchmarks.recipe --corpus ../shared/data/tinyshakespeare.txt --stage screen
    python -m benchmarks.recipe --corpus ../shared/data/tinyshakespeare.txt --stage final

`screen` compares candidates at a fixed number of steps (600, a full warmup and cosine each),
so that their losses do not depend on how loaded the machine is; their speed is measured apart
(`python -m benchmarks.switches`). `final` runs the default recipe as a user runs it
(`python train.py data.path=...`, its 10-minute time budget, two seeds) beside the previous
AdamW recipe and nanoGPT's hyper-parameters; `python eval.py <run>/best` then scores each over
the whole validation split. `steps` runs each candidate for the default's 10-minute step count on
the 2-core Xeon, so that a faster machine screens changes that cost nothing per CPU step
(`benchmarks/step_screen.sh` runs them all at once on one GPU). `proxy` and `ablation` are the
previous round's stages, kept to reproduce its table. Each multirun's folder lands under
`outputs/bench/<stage>/<name>` and `python -m benchmarks.plot` draws their curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Common to every run: the benchmark's split (90/10 in file order, nanoGPT's) and a quiet log.
COMMON = ["training.val_split=0.1", "print_config=false"]
# the previous round's stages also validated over the whole split during training
WHOLE_SPLIT = ["data.max_val_windows=null"]

# Screens: 600 steps each, fp32 (what a CPU without fast bf16 runs), validation over the whole
# split; each row changes one thing against `muon` (the default before the architecture options).
SCREEN_BASE = [
    *WHOLE_SPLIT,
    "training.time_budget=null",
    "trainer.max_steps=600",
    "trainer.precision=32-true",
    "callbacks.sample_text=null",
]
SCREEN = {
    "adamw": [*SCREEN_BASE, "training.optimizer=adamw"],
    "muon": [*SCREEN_BASE],
    "muon_qwen3_zero": [*SCREEN_BASE, "model.qk_norm=true", "model.mlp=swiglu",
                        "model.norm=rmsnorm", "model.bias=false", "model.zero_init=true"],
    "muon_relu2_zero": [*SCREEN_BASE, "model.mlp=relu2", "model.zero_init=true"],
}  # fmt: skip

# Proxies: ~4 minutes each on 2 cores. max_steps is sized from measured throughput so that the
# cosine schedule completes inside the budget (max_time is only a safety bound).
PROXY = {
    "c256_w128_b16": [
        "experiment=tinyshakespeare_cpu",
        "model.n_embd=128",
        "model.n_head=4",
        "training.batch_size=16",
        "trainer.max_steps=2000",
    ],
    "c256_w128_b32": [
        "experiment=tinyshakespeare_cpu",
        "model.n_embd=128",
        "model.n_head=4",
        "training.batch_size=32",
        "trainer.max_steps=1050",
    ],
    "c256_w192_b16": ["experiment=tinyshakespeare_cpu", "trainer.max_steps=1600"],
    "c256_w192_b16_lr": [
        "experiment=tinyshakespeare_cpu",
        "trainer.max_steps=1600",
        "training.learning_rate=3e-3",
    ],
    "c256_w256_b16": [
        "experiment=tinyshakespeare_cpu",
        "model.n_embd=256",
        "model.n_head=4",
        "trainer.max_steps=1100",
    ],
}
PROXY = {name: [*WHOLE_SPLIT, *overrides] for name, overrides in PROXY.items()}


def changed(base: list[str], *changes: str) -> list[str]:
    """`base`'s overrides with `changes` applied (one override per key: Hydra takes no repeats)."""
    merged = {override.split("=", 1)[0]: override for override in [*base, *changes]}
    return list(merged.values())


# Every row below spells out the default it changed, so it re-runs what RESULTS.md measured after
# the default moves on. The default of the GPU step screen and of the 10-minute rows before it
# (dropout 0.1, weight decay 0.2, 5 Newton-Schulz iterations; the headline's 1.4601 / 1.4613):
SCREENED_DEFAULT = ["model.dropout=0.1", "training.weight_decay=0.2", "training.muon_ns_steps=5"]
# ... and the one before this round's first ablation: weight decay 0.1, Muon's momentum constant
PREVIOUS_DEFAULT = changed(
    SCREENED_DEFAULT, "training.weight_decay=0.1", "training.muon_momentum_warmup=0"
)

# the changes the GPU step screen combined (the first three are today's default)
LIGHT_DROPOUT, WD_04, NS_3 = (
    "model.dropout=0.05",
    "training.weight_decay=0.4",
    "training.muon_ns_steps=3",
)
HEADS_6 = "model.n_head=6"

FINAL = {
    # the default recipe exactly as a user runs it (its 10-minute time budget), two seeds
    "default": [],
    "default_seed2": ["seed=2"],
    # a deeper model, more dropout (2026-11-27, AMX Xeon: lower on tiny-shakespeare, higher on the
    # default corpus: not adopted), and that dropout alone
    "six_layers_d0.1": ["model.n_layer=6", "model.dropout=0.1"],
    "six_layers_d0.1_seed2": ["model.n_layer=6", "model.dropout=0.1", "seed=2"],
    "d0.1": ["model.dropout=0.1"],
    # the previous round's tuned recipe (AdamW), under the same 10-minute budget
    "tinyshakespeare_cpu": ["experiment=tinyshakespeare_cpu", "training.time_budget=10m"],
    # nanoGPT's README CPU recipe, as close as our pipeline gets: 4x4x128, context 64, batch 12,
    # 2000 iterations, lr 1e-3 decayed to 1e-4 over 2000 steps, no dropout, fp32.
    "nanogpt_cpu": ["experiment=nanogpt_cpu"],
    # one residual-dropout mask per sequence and channel (a fifth of the random numbers, 1.23x the
    # compiled step at dropout 0.1, where it tied), tried again on today's default
    "seqmask": ["model.dropout_mask=sequence"],
    "seqmask_seed2": ["model.dropout_mask=sequence", "seed=2"],
    # this round's first 10-minute ablation (RESULTS.md): one change each from the default before
    # it, run again as the control; the pair it adopted became `screened_default`
    "previous_default": PREVIOUS_DEFAULT,
    "ns3": changed(PREVIOUS_DEFAULT, "training.muon_ns_steps=3"),
    "wsd": changed(PREVIOUS_DEFAULT, "training.lr_schedule=wsd"),
    "wd0.2": changed(PREVIOUS_DEFAULT, "training.weight_decay=0.2"),
    "wd0.2_seed2": changed(PREVIOUS_DEFAULT, "training.weight_decay=0.2", "seed=2"),
    "momentum_warmup": changed(PREVIOUS_DEFAULT, "training.muon_momentum_warmup=300"),
    "screened_default": SCREENED_DEFAULT,
    "screened_default_seed2": [*SCREENED_DEFAULT, "seed=2"],
    **{
        name: changed(SCREENED_DEFAULT, *overrides)
        for name, overrides in {
            # width against depth (the default is 4 layers x 192, 3 heads of 64)
            "depth6": ["model.n_layer=6"],
            "width256": ["model.n_embd=256", "model.n_head=4"],
            # half the context, twice the windows: the same tokens a step, a quarter of
            # attention's cost
            "ctx128": ["training.max_context=128", "training.batch_size=32"],
            # the learning rate's floor: decay to zero (cosine, or linear from the end of warmup)
            "cosine_to_zero": ["training.min_lr_ratio=0"],
            "linear_to_zero": [
                "training.min_lr_ratio=0",
                "training.lr_schedule=wsd",
                "training.lr_cooldown=1.0",
            ],
            # no dropout (a 1.27x faster compiled step), stronger weight decay against overfitting
            "nodrop_wd0.4": ["model.dropout=0", "training.weight_decay=0.4"],
            # 1.5x the tokens per step: larger matmuls, Muon's fixed cost over more tokens
            "batch24": ["training.batch_size=24"],
            # validate and keep best/ with a moving average of the weights (~100 batches)
            "ema0.99": ["training.ema_decay=0.99"],
            # two thirds of the peak learning rate (Muon's and AdamW's)
            "lr2e-3": ["training.learning_rate=2e-3"],
            # the best of the GPU step screen: lighter dropout, stronger weight decay, 3
            # Newton-Schulz iterations (today's default)
            "d0.05_wd0.4_ns3": [LIGHT_DROPOUT, WD_04, NS_3],
            "d0.05_wd0.4_ns3_seed2": [LIGHT_DROPOUT, WD_04, NS_3, "seed=2"],
        }.items()
    },
}

# Fixed steps at the screened default's 10-minute step count on the 2-core Xeon (1,430), so that
# a faster machine (a GPU: `benchmarks/step_screen.sh`) can screen changes that cost nothing per
# CPU step; fp32 as that CPU runs (TF32 matmuls on a GPU), no compilation, one change each
STEPS_BASE = [
    "training.time_budget=null",
    "trainer.max_steps=1430",
    "trainer.precision=32-true",
    "model.compile=false",
    "callbacks.sample_text=null",
    "callbacks.progress_bar=null",
]
STEPS = {
    name: [*STEPS_BASE, *changed(SCREENED_DEFAULT, *overrides)]
    for name, overrides in {
        "control": [],
        "dropout0.05": [LIGHT_DROPOUT],
        "wd0.4": [WD_04],
        "tied": ["model.tie_weights=true"],
        "lr4e-3": ["training.learning_rate=4e-3"],
        "beta2_0.95": ["training.betas=[0.9,0.95]"],
        "heads6": [HEADS_6],
        "noclip": ["training.gradient_clip=0"],
        # second round: the near-winners combined, stronger, and a few more
        "wd0.6": ["training.weight_decay=0.6"],
        "dropout0.05_wd0.4": [LIGHT_DROPOUT, WD_04],
        "heads6_wd0.4": [HEADS_6, WD_04],
        "heads6_dropout0.05_wd0.4": [HEADS_6, LIGHT_DROPOUT, WD_04],
        "muon_lr1.5": ["training.muon_lr_scale=1.5"],
        "warmup50": ["training.warmup_steps=50"],
        "ns3": [NS_3],
        "dropout0.15": ["model.dropout=0.15"],
        # third round: around the two best of the second
        "wd0.3": ["training.weight_decay=0.3"],
        "heads6_wd0.3": [HEADS_6, "training.weight_decay=0.3"],
        "wd0.4_ns3": [WD_04, NS_3],
        "heads6_wd0.4_ns3": [HEADS_6, WD_04, NS_3],
        "dropout0.05_wd0.4_ns3": [LIGHT_DROPOUT, WD_04, NS_3],
    }.items()
}

# What the recipe was chosen against: full-length runs that each change one thing. The first eight
# start from the recipe before rotary positions (learned positions, no dropout, 3,500 steps).
BASE = ["experiment=tinyshakespeare_cpu", "training.time_budget=null", *WHOLE_SPLIT]
LEARNED = [*BASE, "model.positional=learned"]
ABLATION = {
    "learned_positions": [*LEARNED, "model.dropout=0.0", "trainer.max_steps=3500"],
    "learned_adam": [*LEARNED, "model.dropout=0.0", "trainer.max_steps=3500",
                     "training.optimizer=adam", "training.weight_decay=0.0"],
    "learned_wd0.2": [*LEARNED, "model.dropout=0.0", "trainer.max_steps=3500",
                      "training.weight_decay=0.2"],
    "learned_4000steps": [*LEARNED, "model.dropout=0.0", "trainer.max_steps=4000"],
    "learned_dropout0.1": [*LEARNED, "model.dropout=0.1", "model.attn_dropout=true",
                           "trainer.max_steps=3500"],
    "learned_resid_dropout0.1": [*LEARNED, "model.dropout=0.1", "trainer.max_steps=3000"],
    "learned_3x4x256": [*LEARNED, "model.dropout=0.0", "trainer.max_steps=3500", "model.n_layer=3",
                        "model.n_head=4", "model.n_embd=256"],
    "learned_batch8": [*LEARNED, "model.dropout=0.0", "trainer.max_steps=7000",
                       "training.batch_size=8", "training.learning_rate=2e-3",
                       "training.val_interval=500"],
    "rotary_3500steps": [*BASE, "model.dropout=0.0", "trainer.max_steps=3500"],
    "rotary_2750steps": [*BASE, "model.dropout=0.0", "trainer.max_steps=2750"],
    "rotary_resid_dropout0.1_3000steps": [*BASE, "trainer.max_steps=3000"],
    # the adopted recipe again with another seed: how much of the margin is luck
    "tinyshakespeare_cpu_seed2": [*BASE, "seed=2"],
}  # fmt: skip

STAGES = {
    "screen": SCREEN,
    "final": FINAL,
    "steps": STEPS,
    "proxy": PROXY,
    "ablation": ABLATION,
}
# stages scored over the whole validation split by eval.py after training
SCORED = ("final", "steps")


def final_run_dirs(out: str = "outputs/bench") -> list[Path]:
    """The job folders of the final stage's runs (one per multirun job)."""
    return [p.parent for p in (ROOT / out / "final").glob("*/*/train.log")]


def multirun(name: str, overrides: list[str], corpus: str, out: Path, extra: list[str]) -> int:
    command = [sys.executable, "train.py", "-m", f"data.path={corpus}", *COMMON, *overrides]
    command += [f"hydra.sweep.dir={out / name}", *extra]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT)


def score(runs: Path) -> None:
    """Each run's best/ over the whole validation split, as a user scores it (eval.json beside)."""
    for best in sorted(runs.glob("*/best")):
        command = [sys.executable, "eval.py", str(best), "--json", "--output"]
        subprocess.call([*command, str(best.parent / "eval.json")], cwd=ROOT)


def screen_table(out: Path) -> str:
    """The step screen's whole-split losses under `out` (one `seed<N>/` folder per seed, as
    benchmarks/step_screen.sh writes them), with each run's mean difference from the control
    over the seeds both have."""
    from tinyllm.sweep import markdown_table

    losses: dict[str, dict[str, float]] = {}
    seeds = sorted((p.name.removeprefix("seed") for p in out.glob("seed*")), key=int)
    for seed in seeds:
        for scored in sorted((out / f"seed{seed}" / "steps").glob("*/*/eval.json")):
            name = scored.parent.parent.name
            losses.setdefault(name, {})[seed] = json.loads(scored.read_text())["loss"]
    control = losses.get("control", {})
    rows = []
    for name, by_seed in losses.items():
        paired = [by_seed[s] - control[s] for s in by_seed if s in control]
        rows.append(
            [name, *(f"{by_seed[s]:.4f}" if s in by_seed else "-" for s in seeds),
             f"{statistics.mean(by_seed.values()):.4f}",
             f"{statistics.mean(paired):+.4f}" if paired else ""]
        )  # fmt: skip
    header = ["run", *(f"seed {s}" for s in seeds), "mean", "against control"]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="e.g. ../shared/data/tinyshakespeare.txt")
    parser.add_argument("--table", metavar="DIR", help="print the step screen's table of DIR")
    parser.add_argument("--stage", choices=sorted(STAGES), default="screen")
    parser.add_argument("--only", nargs="*", help="run only these names of the stage")
    parser.add_argument("--out", default="outputs/bench", help="folder for the runs")
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args(argv)
    if args.table:
        print(screen_table(Path(args.table)))
        return
    if not args.corpus:
        parser.error("--corpus is required to train")
    corpus = str(Path(args.corpus).resolve())
    out = (ROOT / args.out / args.stage).resolve()
    for name, overrides in STAGES[args.stage].items():
        if args.only and name not in args.only:
            continue
        multirun(name, overrides, corpus, out, args.extra)
        if args.stage in SCORED:
            score(out / name)


if __name__ == "__main__":
    main()
