"""Framework overhead: training tokens/s of the real Lightning pipeline against a plain loop.

    python -m benchmarks.overhead --corpus ../shared/data/tinyshakespeare.txt [--quick]

The pipeline is what train.py builds from the configs (CharDataModule, LanguageModel with its
logging, every configured callback and the TensorBoard logger); the plain loop is a hand-written
PyTorch step over the same model object, the same data loader, the same optimizer class and
parameter groups, gradient clipping and LR schedule. Rounds alternate in one process so that the
machine's noise hits both alike; the ratio is of the medians. Run for the default recipe and for
nanoGPT's CPU hyper-parameters (target: the pipeline >= nanoGPT's ~16k tokens/s).
"""

from __future__ import annotations

from benchmarks.common import NANOGPT_CPU, QUICK, Pipeline, bench_parser, median, report

CONFIGS = {"default": [], "nanogpt_cpu": NANOGPT_CPU}


def measure(corpus, overrides, rounds: int, steps: int, warm: int = 3) -> dict:
    pipeline = Pipeline(corpus, overrides)
    lightning, plain = [], []
    for _ in range(rounds):
        lightning.append(pipeline.lightning_round(steps, warm))
        plain.append(pipeline.plain_round(steps, warm))
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
    args = parser.parse_args(argv)
    report("overhead", run(args.corpus, args.quick, args.configs, args.overrides))


if __name__ == "__main__":
    main()
