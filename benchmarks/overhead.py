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
callback: the floor of a loop with that many); the pipeline without its configured callbacks and
logger; the whole pipeline.
"""

from __future__ import annotations

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


def bare_round(
    pipeline: Pipeline, module: BareModule, steps: int, warm: int, idle_callbacks: int = 0
) -> float:
    """Seconds per step of a bare Trainer (no callbacks, logger, progress bar, checkpoints), or
    with `idle_callbacks` callbacks that override no hook: what Lightning's dispatch alone costs."""
    timer = StepTimer(warm, steps)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=str(pipeline.cfg.trainer.precision),
        max_steps=warm + steps,
        gradient_clip_val=float(pipeline.cfg.training.gradient_clip) or None,
        callbacks=[timer, *(L.Callback() for _ in range(idle_callbacks))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=pipeline.datamodule.train_dataloader())
    return timer.seconds / steps


def floor(corpus, overrides, rounds: int, steps: int, warm: int = 3) -> dict:
    """Milliseconds per step of each layer between the plain loop and the whole pipeline."""
    pipeline = Pipeline(corpus, overrides)
    bare = BareModule(pipeline)
    # as many callbacks as the pipeline's Trainer holds (the timer is in both)
    idle = len(pipeline.trainer_callbacks()) - 1
    idle_row = f"bare Lightning, {idle} idle callbacks"
    rows = interleave(
        rounds,
        {
            "plain loop": lambda: pipeline.plain_round(steps, warm),
            "bare Lightning": lambda: bare_round(pipeline, bare, steps, warm),
            idle_row: lambda: bare_round(pipeline, bare, steps, warm, idle),
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
    args = parser.parse_args(argv)
    if args.floor:
        rounds, steps = (2, 3) if args.quick else (args.rounds or 7, args.steps or 40)
        overrides = [*NANOGPT_CPU, *(QUICK if args.quick else []), *args.overrides]
        report("overhead_floor", floor(args.corpus, overrides, rounds, steps))
        return
    report("overhead", run(args.corpus, args.quick, args.configs, args.overrides))


if __name__ == "__main__":
    main()
