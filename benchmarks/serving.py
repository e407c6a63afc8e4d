"""Serving: aggregate characters/s and time to first character with 1, 4 and 16 concurrent
streaming clients of `tinyllm-serve` (continuous batching).

    python -m benchmarks.serving                      # default model, writes benchmarks/RESULTS.md
    python -m benchmarks.serving --model-dir outputs/runs/<run>/best
    python -m benchmarks.serving --quick --out none   # smoke test: a tiny model, printed only

The server runs as a user runs it (`python -m tinyllm.serve`, its own process, one torch thread
unless --threads) on a loopback port; the clients are one asyncio process streaming
`/v1/completions` (prompt "ROMEO:\\n", temperature 0.8), each client sending its requests one
after another. Throughput is all characters received over the wall time of the level; time to
first character is from sending a request to its first non-empty text chunk (p50, p95 over all
requests of the level). Speed does not depend on the weights, so the default model is freshly
initialised unless a trained model folder is given.

Targets (issue 15): 16 clients get at least 5x the aggregate throughput of one, and p95 time to
first character under 250 ms, on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinyllm.io import write_marked_section
from tinyllm.sweep import markdown_table

BEGIN, END = "<!-- serving: begin -->", "<!-- serving: end -->"
PROMPT = "ROMEO:\n"
# tiny-shakespeare's 65 characters: the vocabulary of a freshly initialised default model
VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MODEL_ID = "bench"


def save_fresh_model(directory: Path, quick: bool) -> Path:
    """The default model (or a tiny one) with random weights, saved as best/ artifacts."""
    from tinyllm.artifacts import save_artifacts
    from tinyllm.model import ModelConfig, Transformer
    from tinyllm.tokenizer import CharacterTokenizer

    tokenizer = CharacterTokenizer(VOCAB)
    if quick:
        config = ModelConfig(vocab_size=len(VOCAB), context_length=64, n_layer=1, n_head=2,
                             n_embd=32)  # fmt: skip
    else:
        from benchmarks.generation import default_model_config

        config = default_model_config(vocab_size=len(VOCAB))
    torch.manual_seed(0)
    return save_artifacts(directory / "best", Transformer(config), tokenizer, {})


def start_server(model_dir: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "tinyllm.serve", str(model_dir), "--port", "0",
               "--model-name", MODEL_ID, "--threads", str(threads), "--max-batch",
               str(max_batch), "--log-level", "warning"]  # fmt: skip
    env = os.environ | {"TINYLLM_API_KEY": ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    url = None
    for _ in range(3):
        line = process.stdout.readline()
        if line.startswith("serving at "):
            url = line.split()[2].rstrip("/")
    if url is None:
        process.kill()
        raise RuntimeError("the server did not start (see its messages above)")
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the server did not answer /health")
        time.sleep(0.1)


async def _stream_one(client, tokens: int, seed: int) -> tuple[int, float]:
    """Characters received and seconds to the first one, for one streaming request."""
    body = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8,
            "seed": seed, "stream": True}  # fmt: skip
    started = time.perf_counter()
    first, characters = math.nan, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text = json.loads(line[6:])["choices"][0]["text"]
            if text and math.isnan(first):
                first = time.perf_counter() - started
            characters += len(text)
    return characters, first


async def _level(url: str, clients: int, requests: int, tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await _stream_one(client, 8, 0)  # warm the connection and the server

        async def one_client(c: int):
            return [await _stream_one(client, tokens, c * 1000 + r) for r in range(requests)]

        started = time.perf_counter()
        results = await asyncio.gather(*(one_client(c) for c in range(clients)))
        seconds = time.perf_counter() - started
    done = [r for per_client in results for r in per_client]
    firsts = [f for _, f in done if not math.isnan(f)]
    return {
        "clients": clients,
        "requests": len(done),
        "characters": sum(c for c, _ in done),
        "seconds": round(seconds, 3),
        "chars_per_s": round(sum(c for c, _ in done) / seconds, 1),
        "ttfc_p50_ms": round(1000 * percentile(firsts, 50), 1),
        "ttfc_p95_ms": round(1000 * percentile(firsts, 95), 1),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run(model_dir: str | None = None, quick: bool = False, levels=(1, 4, 16),
        requests: int = 3, tokens: int = 300, threads: int = 1) -> dict:  # fmt: skip
    """Start a server, measure every level of concurrency, stop the server."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(model_dir) if model_dir else save_fresh_model(Path(tmp), quick)
        process, url = start_server(path, threads, max(levels))
        try:
            measured = [asyncio.run(_level(url, n, requests, tokens)) for n in levels]
        finally:
            process.terminate()
            process.wait(timeout=30)
    one = measured[0]["chars_per_s"]
    for level in measured:
        level["speedup"] = round(level["chars_per_s"] / one, 2)
    return {
        "model": str(model_dir)
        if model_dir
        else ("tiny (random)" if quick else "default (random)"),
        "server_threads": threads,
        "requests_per_client": requests,
        "tokens_per_request": tokens,
        "levels": measured,
    }


def render(results: dict, about: dict) -> str:
    rows = [[r["clients"], r["requests"], f"{r['chars_per_s']:,.0f}", f"{r['speedup']:.2f}x",
             f"{r['ttfc_p50_ms']:.0f}", f"{r['ttfc_p95_ms']:.0f}"]
            for r in results["levels"]]  # fmt: skip
    last = results["levels"][-1]
    verdict = (f"{last['clients']} clients: {last['speedup']:.1f}x the throughput of one "
               f"(target >= 5x: {'met' if last['speedup'] >= 5 else 'missed'}); p95 time to "
               f"first character {last['ttfc_p95_ms']:.0f} ms (target < 250 ms: "
               f"{'met' if last['ttfc_p95_ms'] < 250 else 'missed'})")  # fmt: skip
    return "\n".join([
        "### Serving (`python -m benchmarks.serving`)",
        "",
        f"Model {results['model']}; the server with {results['server_threads']} torch thread(s); "
        f"each client streams {results['requests_per_client']} requests of "
        f"{results['tokens_per_request']} characters one after another. Measured "
        f"{about['started']} on {about['machine']['cpu']} ({about['machine']['cores']} cores, "
        f"load {about['machine']['load']}).",
        "",
        markdown_table(["clients", "requests", "characters/s (all clients)", "vs 1 client",
                        "first character p50 (ms)", "p95 (ms)"], rows),  # fmt: skip
        "",
        verdict,
    ])  # fmt: skip


def write_section(out: Path, body: str) -> None:
    write_marked_section(out, "serving", body)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a trained model (default: the default model, random)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and short requests")
    parser.add_argument("--clients", type=int, nargs="+", default=None, help="default: 1 4 16")
    parser.add_argument("--requests", type=int, default=None, help="per client (default 3)")
    parser.add_argument("--tokens", type=int, default=None, help="per request (default 300)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--out", default="benchmarks/RESULTS.md", help="'none': print only")
    args = parser.parse_args(argv)
    quick = args.quick
    started = time.strftime("%Y-%m-%d %H:%M")
    results = run(args.model_dir, quick, tuple(args.clients or ((1, 4) if quick else (1, 4, 16))),
                  args.requests or (1 if quick else 3), args.tokens or (20 if quick else 300),
                  args.threads)  # fmt: skip
    from benchmarks.common import machine  # (imports Lightning: only for the report's header)

    about = {"started": started, "machine": machine()}
    print(json.dumps(about | {"serving": results}, indent=2))
    body = render(results, about)
    print(body)
    if args.out != "none":
        write_section(Path(args.out), body)
        Path(args.out).with_name("serving.json").write_text(
            json.dumps(about | {"serving": results}, indent=2) + "\n"
        )
        print(f"wrote {args.out} (section {BEGIN}) and {Path(args.out).with_name('serving.json')}")


if __name__ == "__main__":
    main()
