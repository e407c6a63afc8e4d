"""Data pipeline: batches/s from the datamodule alone against training steps/s.

    python -m benchmarks.data_pipeline --corpus ../shared/data/tinyshakespeare.txt [--quick]

The loader is `CharDataModule.train_dataloader()` exactly as training uses it (random offsets,
window slicing, collation, `num_workers` from the config); the training step is the plain loop
of benchmarks.common on the default model, so the ratio is loader speed over the fastest the
model can consume. Target: >= 20x (the loader is never the bottleneck).
"""

from __future__ import annotations

import time

from benchmarks.common import QUICK, Pipeline, bench_parser, median, report


def loader_round(pipeline: Pipeline, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        pipeline.next_batch()
    return (time.perf_counter() - start) / batches


def run(corpus: str | None, quick: bool = False, extra=()) -> dict:
    rounds, steps, batches = (2, 2, 20) if quick else (5, 20, 400)
    pipeline = Pipeline(corpus, [*(QUICK if quick else []), *extra])
    pipeline.plain_setup()
    loader, train = [], []
    for _ in range(rounds):
        loader.append(loader_round(pipeline, batches))
        train.append(pipeline.plain_round(steps, warm=1))
    result = {
        "batch_size": pipeline.cfg.training.batch_size,
        "context": pipeline.cfg.training.max_context,
        "num_workers": pipeline.cfg.data.num_workers,
        "loader_batches_per_s": 1 / median(loader),
        "train_steps_per_s": 1 / median(train),
    }
    result["ratio"] = result["loader_batches_per_s"] / result["train_steps_per_s"]
    print(
        f"data: loader {result['loader_batches_per_s']:,.0f} batches/s, training "
        f"{result['train_steps_per_s']:,.1f} steps/s, ratio {result['ratio']:,.0f}x",
        flush=True,
    )
    return result


def main(argv=None) -> None:
    args = bench_parser(__doc__).parse_args(argv)
    report("data", run(args.corpus, args.quick, args.overrides))


if __name__ == "__main__":
    main()
