"""Property-based tests (hypothesis) that the other test files do not already hold: the resumable
sampler continues exactly where it stopped, and arbitrary JSON in a model folder gives
ArtifactError, never another exception.

(Tokenizer round-trip: tests/test_tokenizer.py; cleaning idempotence: tests/test_corpus.py;
windowing: tests/test_data.py; the console's command parser: tests/test_console.py.)"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from tinyllm.artifacts import ArtifactError, load_model, save_artifacts
from tinyllm.data import RandomOffsetSampler, ResumableDataLoader, WindowDataset
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import CharacterTokenizer

# --- resuming the training data mid-epoch ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.integers(1, 40),
    batch_size=st.integers(1, 6),
    epoch=st.integers(0, 5),
    seed=st.integers(0, 2**31),
    rank=st.sampled_from([None, 0, 1]),
    data=st.data(),
)
def test_resumed_loader_yields_the_rest_of_the_epoch(
    num_samples, batch_size, epoch, seed, rank, data
):
    """`rank`: None for one process, else that rank of 2 under DDP (the sampler wrapped as
    Lightning wraps it, without the `skip` our sampler has)."""
    dataset = WindowDataset(torch.arange(60), 4)

    def loader():
        sampler = RandomOffsetSampler(len(dataset), num_samples, seed)
        if rank is not None:
            sampler = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, seed=seed)
        return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler)

    whole = loader()
    whole.sampler.set_epoch(epoch)
    batches = list(whole)
    stop = data.draw(st.integers(0, len(batches)))

    first = loader()
    first.sampler.set_epoch(epoch)
    iterator = iter(first)
    for _ in range(stop):
        next(iterator)
    state = first.state_dict()
    assert state["batches"] == stop and state["epoch"] == epoch

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(epoch)  # as Lightning does before iterating
    rest = list(resumed)
    expected = batches[stop:] if stop < len(batches) else batches  # a finished epoch: anew
    assert len(rest) == len(expected)
    for (x, y), (ex, ey) in zip(rest, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    if stop < len(batches):
        assert resumed.state_dict()["batches"] == len(batches)


# --- any JSON in a model folder: ArtifactError or a model, nothing else ------------------------

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = {
    "model_config.json": ["vocab_size", "context_length", "n_layer", "n_head", "n_embd",
                          "dropout", "attn_dropout", "bias", "positional", "tie_weights"],
    "metadata.json": ["val_loss", "step", "console", "data_source", "version"],
    "tokenizer.json": ["format", "version", "vocab"],
}  # fmt: skip


@pytest.fixture(scope="module")
def model_folder():
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CharacterTokenizer().fit("abcdefg \n")
        config = ModelConfig(vocab_size=9, context_length=8, n_layer=1, n_head=2, n_embd=8)
        yield save_artifacts(Path(folder) / "best", Transformer(config), tokenizer, {})


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(sorted(KEYS)), data=st.data())
def test_any_json_gives_a_model_or_artifact_error(model_folder, name, data):
    path = model_folder / name
    original = path.read_text(encoding="utf-8")
    content = json.loads(original)
    if data.draw(st.booleans()):
        content = data.draw(JSON)  # anything at all
    else:
        content[data.draw(st.sampled_from(KEYS[name]))] = data.draw(JSON)  # one value changed
    try:
        path.write_text(json.dumps(content), encoding="utf-8")
        try:
            load_model(model_folder)
        except ArtifactError as e:
            assert str(e) and "\n" not in str(e)
    finally:
        path.write_text(original, encoding="utf-8")
