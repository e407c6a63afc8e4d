"""Framework overhead: training tokens/s of the real Lightning pipeline against a plain loop.

    python -m benchmarks.overhead --corpus ../shared/data/tinyshakespeare.txt [--quick]

The pipeline is what train.py builds from the configs (CharDataModule, LanguageModel with its
logging, every configured callback and the TensorBoard logger); the plain loop is a hand-written
PyTorch step over the same model object, the same data loader, the same optimizer class and
parameter groups, gradient clipping and LR schedule. Rounds alternate in one process so that the
machine's noise hits both alike; the ratio is of the medians. Run for the default recipe and for
nanoGPT's CPU hyper-parameters (target: the pipeline >= nanoGPT's ~16k tokens/s).

    python -m benchmarks.overhead --corpus ../shared/data/tinyshakespeare.txt --floor

`--floor` splits the nanoGPT recipe's overhead: the plain loop; Lightning's floor (a bare
LightningModule over the same model, optimizer, schedule and clipping, with no callback, logger,
progress bar or checkpointing: the least any Lightning training loop costs); the same with as many
callbacks that override no hook as the pipeline has (Lightning calls every hook on every
callback: the floor of a loop with that many); Lightning as it comes (a Trainer's own logger,
checkpointing and progress bar, the loss logged every step: the loop as Lightning's docs write
it); the pipeline without its configured callbacks and logger; the whole pipeline.

    python -m benchmarks.overhead --corpus ../shared/data/tinyshakespeare.txt --hooks

`--hooks` times each per-step hook of the whole pipeline where it runs, put down to its owner
(tinyllm's code or Lightning's, `self.log` included).
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks.common import (
    NANOGPT_CPU,
    QUICK,
    Pipeline,
    StepTimer,
    bench_parser,
    interleave,
    median,
    report,
)

CONFIGS = {"default": [], "nanogpt_cpu": NANOGPT_CPU}


def measure(corpus, overrides, rounds: int, steps: int, warm: int = 3) -> dict:
    pipeline = Pipeline(corpus, overrides)
    times = interleave(
        rounds,
        {
            "lightning": lambda: pipeline.lightning_round(steps, warm),
            "plain": lambda: pipeline.plain_round(steps, warm),
        },
    )
    lightning, plain = times["lightning"], times["plain"]
    tokens = pipeline.tokens_per_step
    result = {
        "model": pipeline.model_config.to_dict(),
        "batch_size": pipeline.cfg.training.batch_size,
        "precision": str(pipeline.cfg.trainer.precision),
        "lightning_tokens_per_s": tokens / median(lightning),
        "plain_tokens_per_s": tokens / median(plain),
        "rounds": rounds,
        "steps_per_round": steps,
    }
    result["ratio"] = result["lightning_tokens_per_s"] / result["plain_tokens_per_s"]
    return result


class BareModule(L.LightningModule):
    """The least a LightningModule does: the pipeline's model, optimizer and LR schedule, the
    loss returned, nothing logged."""

    def __init__(self, pipeline: Pipeline):
        super().__init__()
        self.model = pipeline.module.model
        self.optimizer_and_schedule = pipeline.optimizer_and_schedule

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        logits = self.model(inputs)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def configure_optimizers(self):
        optimizer, scheduler = self.optimizer_and_schedule(int(self.trainer.max_steps))
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


class LoggingModule(BareModule):
    """BareModule that logs its loss at every step to the progress bar and the logger, as a
    LightningModule is usually written."""

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True)
        return loss


def bare_round(
    pipeline: Pipeline,
    module: BareModule,
    steps: int,
    warm: int,
    idle_callbacks: int = 0,
    as_it_comes: bool = False,
) -> float:
    """Seconds per step of a bare Trainer (no callbacks, logger, progress bar, checkpoints), or
    with `idle_callbacks` callbacks that override no hook (what Lightning's dispatch alone
    costs), or `as_it_comes`: with the logger, checkpointing and progress bar a Trainer has
    unless told otherwise."""
    timer = StepTimer(warm, steps)
    parts = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    if as_it_comes:
        parts = {"default_root_dir": pipeline.workdir}
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=str(pipeline.cfg.trainer.precision),
        max_steps=warm + steps,
        gradient_clip_val=float(pipeline.cfg.training.gradient_clip) or None,
        callbacks=[timer, *(L.Callback() for _ in range(idle_callbacks))],
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **parts,
    )
    trainer.fit(module, train_dataloaders=pipeline.datamodule.train_dataloader())
    return timer.seconds / steps


def floor(corpus, overrides, rounds: int, steps: int, warm: int = 3) -> dict:
    """Milliseconds per step of each layer between the plain loop and the whole pipeline."""
    pipeline = Pipeline(corpus, overrides)
    bare, logging_module = BareModule(pipeline), LoggingModule(pipeline)
    # as many callbacks as the pipeline's Trainer holds (the timer is in both)
    idle = len(pipeline.trainer_callbacks()) - 1
    idle_row = f"bare Lightning, {idle} idle callbacks"
    rows = interleave(
        rounds,
        {
            "plain loop": lambda: pipeline.plain_round(steps, warm),
            "bare Lightning": lambda: bare_round(pipeline, bare, steps, warm),
            idle_row: lambda: bare_round(pipeline, bare, steps, warm, idle),
            AS_IT_COMES: lambda: bare_round(
                pipeline, logging_module, steps, warm, as_it_comes=True
            ),  # fmt: skip
            "pipeline, no callbacks or logger": lambda: pipeline.lightning_round(
                steps, warm, callbacks=False, logger=False
            ),
            "pipeline": lambda: pipeline.lightning_round(steps, warm),
        },
    )
    plain = median(rows["plain loop"])
    result = {}
    for name, times in rows.items():
        seconds = median(times)
        result[name] = {
            "ms_per_step": 1000 * seconds,
            "tokens_per_s": pipeline.tokens_per_step / seconds,
            "ratio": plain / seconds,
        }
        print(
            f"floor {name}: {1000 * seconds:.2f} ms/step, ratio to the plain loop "
            f"{plain / seconds:.3f}",
            flush=True,
        )
    return result


AS_IT_COMES = "Lightning as it comes, loss logged every step"

# the hooks a training step calls, on the callbacks and on the module
STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_before_backward",
              "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")  # fmt: skip


def hook_times(corpus, overrides, steps: int, warm: int = 3) -> dict:
    """Milliseconds per step inside each hook of the pipeline, timed where it runs (one round of
    the whole pipeline): what the callbacks and the module do per step, and whose code that is,
    tinyllm's or Lightning's (`self.log`, called by the module's hooks and its training step, is
    Lightning's: each hook's time is its own, without the timed calls inside it). The training
    step itself and Lightning's loop around the hooks are not in it."""
    pipeline = Pipeline(corpus, overrides)
    trainer, timer = pipeline._trainer(steps, warm)
    spent: dict[str, float] = {}
    nested: list[float] = []  # time in timed calls inside the one running: not its own

    def timed(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def hook(*args, **kwargs):
            start = time.perf_counter()
            nested.append(0.0)
            try:
                return inner(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                own = took - nested.pop()
                spent[label] = spent.get(label, 0.0) + own
                if nested:
                    nested[-1] += took

        setattr(owner, name, hook)

    for callback in trainer.callbacks:
        own = type(callback).__module__.startswith("tinyllm")
        for name in STEP_HOOKS:
            if callback is not timer and getattr(type(callback), name) is not getattr(
                L.Callback, name
            ):
                who = "tinyllm" if own else "lightning"
                timed(callback, name, f"{who}: {type(callback).__name__}.{name}")
    module = pipeline.module
    for name in STEP_HOOKS:
        if getattr(type(module), name) is not getattr(L.LightningModule, name):
            timed(module, name, f"tinyllm: {type(module).__name__}.{name}")
    timed(module, "log", "lightning: LightningModule.log (called by the module)")
    module.lr_plan = None
    trainer.fit(module, datamodule=pipeline.datamodule)
    per_step = {
        k: 1000 * v / (warm + steps) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
    }
    result = {"step_ms": 1000 * timer.seconds / steps, "hooks_ms": per_step}
    for owner in ("tinyllm", "lightning"):
        result[f"{owner}_ms"] = sum(v for k, v in per_step.items() if k.startswith(owner))
    for label, ms in per_step.items():
        print(f"hooks {ms:7.3f} ms/step  {label}", flush=True)
    print(
        f"hooks: step {result['step_ms']:.2f} ms; tinyllm's code in them "
        f"{result['tinyllm_ms']:.3f} ms, Lightning's {result['lightning_ms']:.3f} ms",
        flush=True,
    )
    return result


def run(corpus: str | None, quick: bool = False, configs=None, extra=()) -> dict:
    rounds, steps = (2, 3) if quick else (5, 30)
    results = {}
    for name in configs or CONFIGS:
        overrides = [*CONFIGS[name], *(QUICK if quick else []), *extra]
        results[name] = measure(corpus, overrides, rounds, steps)
        r = results[name]
        print(
            f"overhead {name}: lightning {r['lightning_tokens_per_s']:,.0f} tok/s, plain "
            f"{r['plain_tokens_per_s']:,.0f} tok/s, ratio {r['ratio']:.3f}",
            flush=True,
        )
    return results


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--configs", nargs="*", choices=sorted(CONFIGS))
    parser.add_argument("--floor", action="store_true", help="split the nanoGPT recipe's overhead")
    parser.add_argument("--rounds", type=int, help="--floor: interleaved rounds (default 7)")
    parser.add_argument("--steps", type=int, help="--floor: timed steps a round (default 40)")
    parser.add_argument("--hooks", action="store_true", help="time each per-step hook")
    args = parser.parse_args(argv)
    if args.hooks:
        overrides = [*NANOGPT_CPU, *(QUICK if args.quick else []), *args.overrides]
        report("overhead_hooks", hook_times(args.corpus, overrides, 3 if args.quick else 300))
        return
    if args.floor:
        rounds, steps = (2, 3) if args.quick else (args.rounds or 7, args.steps or 40)
        overrides = [*NANOGPT_CPU, *(QUICK if args.quick else []), *args.overrides]
        report("overhead_floor", floor(args.corpus, overrides, rounds, steps))
        return
    report("overhead", run(args.corpus, args.quick, args.configs, args.overrides))


if __name__ == "__main__":
    main()
