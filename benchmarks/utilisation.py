"""Utilisation: model FLOPs/s while training against a matmul peak measured in the same run.

    python -m benchmarks.utilisation --corpus ../shared/data/tinyshakespeare.txt [--quick]

Model FLOPs per token (the PaLM / nanoGPT `estimate_mfu` count): 6 * N for the weight matmuls
(N = parameters of every nn.Linear, i.e. without the embedding lookups), plus 12 * layers *
context * width for attention scores and the weighted sum (forward and backward; causal masking
not discounted, as in nanoGPT). The peak is a square matmul in the training precision, with the
same thread count, measured between training rounds. A short profile of one training step names
what the rest of the time goes to.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import QUICK, Pipeline, bench_parser, median, report


def flops_per_token(model: torch.nn.Module, config) -> float:
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * config.n_layer * config.context_length * config.n_embd
    return 6 * matmul_params + attention


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def profile_step(pipeline: Pipeline, top: int = 8) -> list[list]:
    """The operators that take the most CPU time in a few training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            pipeline.plain_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [[e.key, f"{100 * e.self_cpu_time_total / total:.1f}%"] for e in events[:top]]


def run(corpus: str | None, quick: bool = False, extra=()) -> dict:
    rounds, steps, peak_seconds, size = (1, 2, 0.1, 256) if quick else (4, 30, 1.0, 2048)
    pipeline = Pipeline(corpus, [*(QUICK if quick else []), *extra])
    dtype = torch.bfloat16 if pipeline.bf16 else torch.float32
    per_token = flops_per_token(pipeline.module.model, pipeline.model_config)
    train, peak = [], []
    for _ in range(rounds):
        peak.append(matmul_peak(dtype, size, peak_seconds))
        train.append(pipeline.lightning_round(steps, warm=2))
    model_flops = per_token * pipeline.tokens_per_step / median(train)
    result = {
        "precision": str(pipeline.cfg.trainer.precision),
        "flops_per_token": per_token,
        "tokens_per_s": pipeline.tokens_per_step / median(train),
        "model_flops_per_s": model_flops,
        "matmul_peak_flops_per_s": median(peak),
        "fp32_matmul_peak_flops_per_s": matmul_peak(torch.float32, size, peak_seconds),
        "utilisation": model_flops / median(peak),
        "profile": profile_step(pipeline),
    }
    print(
        f"utilisation: {model_flops / 1e9:,.1f} GFLOP/s of a {median(peak) / 1e9:,.0f} GFLOP/s "
        f"{dtype} matmul peak = {100 * result['utilisation']:.1f}%",
        flush=True,
    )
    return result


def main(argv=None) -> None:
    args = bench_parser(__doc__).parse_args(argv)
    report("utilisation", run(args.corpus, args.quick, args.overrides))


if __name__ == "__main__":
    main()
