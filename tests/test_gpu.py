"""On a CUDA GPU: training with trainer=gpu, sampling during training, and generation from the
export. Skipped where there is none (CI); run on a lent GPU before a GPU figure is reported.
The first GPU run found the sampler building its settings' tensors on the CPU."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, run_train, without
from tinyllm.artifacts import load_artifacts
from tinyllm.generation import BatchDecoder, SamplingSettings, generate_text
from tinyllm.model import sample_next_tokens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sampler_on_gpu_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 65, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(7)
    draw = [[0.0, 0.8, 1.0], [0, 5, 0], [1.0, 1.0, 0.9]]
    tokens = sample_next_tokens(logits, *draw, [None, generator, None])
    assert tokens[0] == int(logits[0].argmax())
    assert int(tokens[1]) in logits[1].topk(5).indices.tolist()
    assert all(0 <= t < 65 for t in tokens)
    again = sample_next_tokens(logits, *draw, [None, torch.Generator("cuda").manual_seed(7), None])
    assert again[1] == tokens[1]


def test_train_sample_and_generate_on_gpu(tmp_path, corpus_file):
    run_dir = tmp_path / "run"
    # trainer=gpu's own precision (bf16-mixed); the sample callback fires at step 10
    overrides = without(TINY_OVERRIDES, "trainer.precision")
    result = run_train(
        *overrides, "trainer=gpu", f"data.path={corpus_file}", f"hydra.run.dir={run_dir}"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "GPU available: True (cuda), used: True" in result.stdout + result.stderr

    loaded = load_artifacts(run_dir / "best", device="cuda")
    assert loaded.model.token_embedding.weight.is_cuda
    settings = SamplingSettings(max_tokens=40, temperature=0.8, top_k=10, top_p=0.9, seed=3)
    text = generate_text(loaded.model, loaded.tokenizer, "ROMEO:", settings)
    assert len(text) == 40
    assert generate_text(loaded.model, loaded.tokenizer, "ROMEO:", settings) == text

    decoder = BatchDecoder(loaded.model, slots=2)
    for seed in (3, 4):
        decoder.add(loaded.tokenizer.encode("ROMEO:"), settings.updated(seed=seed))
    assert len(decoder.step()) == 2
