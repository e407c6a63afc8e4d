"""Generation: characters/s of KV-cache generation against full re-computation per token.

    python -m benchmarks.generation [--quick] [--model-dir outputs/runs/<run>/best]

The re-computation loop is nanoGPT's `generate`: every new token runs the model over the whole
sequence cropped to the last `context_length` tokens. The KV-cache path is
`Transformer.stream(..., use_cache=True)`, the one every caller of this project uses. Both make
500 new characters from a short prompt with temperature 0.8 and top-k 200 (nanoGPT's sample.py
settings), in alternating rounds; the default model and a model of nanoGPT's CPU size.
Speed does not depend on the weights, so the models are freshly initialised unless a trained
model folder is given.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from benchmarks.common import compose_config, median, report
from tinyllm.model import ModelConfig, Transformer
from tinyllm.training import build_model_config

PROMPT = [0, 1, 2, 3]  # a short prompt (4 characters); ids are arbitrary for speed
TEMPERATURE, TOP_K = 0.8, 200
NANOGPT_CPU = {"n_layer": 4, "n_head": 4, "n_embd": 128, "context_length": 64, "dropout": 0.0}


def default_model_config(vocab_size: int = 65) -> ModelConfig:
    """The model of `python train.py` as the configs define it."""
    cfg = compose_config(None, [], "/tmp")
    return build_model_config(cfg.model, vocab_size=vocab_size)


@torch.no_grad()
def recompute(model: Transformer, prompt: list[int], new_tokens: int, generator) -> list[int]:
    """nanoGPT's generate: re-run the (cropped) sequence for every new token."""
    block = model.config.context_length
    idx = torch.tensor([prompt])
    for _ in range(new_tokens):
        cond = idx if idx.size(1) <= block else idx[:, -block:]
        logits = model(cond)[:, -1, :] / TEMPERATURE
        values, _ = torch.topk(logits, min(TOP_K, logits.size(-1)))
        logits[logits < values[:, [-1]]] = -float("inf")
        probs = F.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    return idx[0, len(prompt) :].tolist()


def cached(model: Transformer, prompt: list[int], new_tokens: int, generator) -> list[int]:
    return list(
        model.stream(prompt, new_tokens, TEMPERATURE, TOP_K, generator=generator, use_cache=True)
    )


def measure(model: Transformer, new_tokens: int, rounds: int) -> dict:
    model.eval()
    generator = torch.Generator().manual_seed(0)
    cached(model, PROMPT, 8, generator)  # warm up both paths
    recompute(model, PROMPT, 8, generator)
    times = {"cache": [], "recompute": []}
    for _ in range(rounds):
        for name, fn in (("cache", cached), ("recompute", recompute)):
            start = time.perf_counter()
            out = fn(model, PROMPT, new_tokens, generator)
            times[name].append(time.perf_counter() - start)
            assert len(out) == new_tokens
    cache_cps = new_tokens / median(times["cache"])
    recompute_cps = new_tokens / median(times["recompute"])
    return {
        "model": model.config.to_dict(),
        "parameters": model.num_parameters(),
        "new_tokens": new_tokens,
        "cache_chars_per_s": cache_cps,
        "recompute_chars_per_s": recompute_cps,
        "speedup": cache_cps / recompute_cps,
    }


def run(quick: bool = False, model_dir: str | None = None) -> dict:
    new_tokens, rounds = (20, 1) if quick else (500, 5)
    torch.manual_seed(0)
    if model_dir:
        from tinyllm.artifacts import load_model

        default = load_model(model_dir)
        default = getattr(default, "model", default)
    else:
        config = default_model_config()
        if quick:
            config = ModelConfig(vocab_size=65, context_length=32, n_layer=1, n_head=2, n_embd=32)
        default = Transformer(config)
    nanogpt = Transformer(ModelConfig(vocab_size=65, **NANOGPT_CPU))
    results = {"default": measure(default, new_tokens, rounds)}
    results["nanogpt_cpu"] = measure(nanogpt, new_tokens, rounds)
    # chat.py decodes on one thread (small matrix-vector products gain nothing from two)
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
        try:
            results["default, 1 thread (as chat.py)"] = measure(default, new_tokens, rounds)
        finally:
            torch.set_num_threads(threads)
    for name, r in results.items():
        print(
            f"generation {name}: cache {r['cache_chars_per_s']:,.0f} chars/s, recompute "
            f"{r['recompute_chars_per_s']:,.0f} chars/s, {r['speedup']:.1f}x",
            flush=True,
        )
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few tokens (smoke test)")
    parser.add_argument("--model-dir", help="a trained best/ folder instead of a fresh model")
    args = parser.parse_args(argv)
    report("generation", run(args.quick, args.model_dir))


if __name__ == "__main__":
    main()
