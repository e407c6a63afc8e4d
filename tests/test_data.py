"""CharDataModule: encoding, the train/val split, and the windows each side of it.

Most tests train on a "positional" corpus: N distinct characters in increasing code-point
order, so that (ids being sorted characters) the id of every token IS its position in the
corpus. A window's ids then say exactly where in the corpus it was cut from.
"""

from __future__ import annotations

import tempfile
from itertools import pairwise
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import make_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.corpus import CorpusError
from tinyllm.data import CharDataModule, RandomOffsetSampler, WindowDataset
from tinyllm.module import LanguageModel

FIRST_CHARACTER = 0x4E00  # CJK ideographs: 20,000 consecutive characters without case


def positional_text(n: int) -> str:
    return "".join(chr(FIRST_CHARACTER + i) for i in range(n))


def datamodule(path: Path, **kwargs) -> CharDataModule:
    kwargs = {"max_context": 16, "batch_size": 8, "val_split": 0.2, "seed": 0} | kwargs
    dm = CharDataModule(path=str(path), cache_dir=str(path.parent), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def positional_file(tmp_path) -> Path:
    path = tmp_path / "positions.txt"
    path.write_text(positional_text(1000), encoding="utf-8")
    return path


def all_batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_positional_corpus_ids_are_positions(positional_file):
    dm = datamodule(positional_file)
    assert dm.tokenizer.encode(positional_text(1000)) == list(range(1000))


def test_window_targets_are_inputs_shifted_by_one():
    ids = torch.tensor([5, 3, 9, 1, 4, 7, 2], dtype=torch.uint8)
    dataset = WindowDataset(ids, context=3)
    assert len(dataset) == 4  # windows of 4 tokens start at 0..3
    x, y = dataset[2]
    assert x.tolist() == [9, 1, 4] and y.tolist() == [1, 4, 7]
    assert x.dtype == torch.long and y.dtype == torch.long  # ready for embedding / loss
    for start in range(len(dataset)):
        x, y = dataset[start]
        assert torch.equal(x[1:], y[:-1])
        assert x.tolist() + y[-1:].tolist() == ids[start : start + 4].tolist()
    with pytest.raises(ValueError, match="need at least 4 tokens"):
        WindowDataset(ids[:3], context=3)


def test_split_is_contiguous_and_no_window_crosses_it(positional_file):
    dm = datamodule(positional_file, max_context=16, val_split=0.2, max_val_windows=None)
    n_val = int(1000 * 0.2)
    n_train = 1000 - n_val
    assert dm.train_ids.tolist() == list(range(n_train))
    assert dm.val_ids.tolist() == list(range(n_train, 1000))

    train = all_batches(dm.train_dataloader())
    assert train
    for x, y in train:
        assert x.shape == y.shape == (8, 16)
        assert torch.equal(y, x + 1)  # consecutive positions, targets one ahead
        assert int(x.min()) >= 0 and int(y.max()) <= n_train - 1

    val = all_batches(dm.val_dataloader())
    starts = [int(s) for x, _ in val for s in x[:, 0]]
    for x, y in val:
        assert torch.equal(y, x + 1)
        assert torch.equal(x, x[:, :1] + torch.arange(16))
        assert int(x.min()) >= n_train and int(y.max()) <= 999
    # every non-overlapping validation window, in order
    assert starts == list(range(n_train, n_train + (n_val - 1) // 16 * 16, 16))


def test_max_val_windows_thins_evenly(positional_file):
    dm = datamodule(positional_file, max_context=4, val_split=0.2, max_val_windows=5)
    starts = [int(s) for x, _ in dm.val_dataloader() for s in x[:, 0]]
    assert len(starts) == 5
    gaps = {b - a for a, b in pairwise(starts)}
    assert min(gaps) >= 4 and max(gaps) - min(gaps) <= 4  # spread out, not bunched at the start
    assert starts[0] == 800 and starts[-1] > 800 + 150


def test_validation_windows_are_fixed(positional_file):
    first = datamodule(positional_file, seed=0)
    other_seed = datamodule(positional_file, seed=99)
    a = all_batches(first.val_dataloader())
    b = all_batches(first.val_dataloader())
    c = all_batches(other_seed.val_dataloader())
    assert len(a) == len(b) == len(c) > 0
    for (xa, ya), (xb, yb), (xc, yc) in zip(a, b, c, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)


def test_training_offsets_change_per_epoch_and_repeat_with_the_seed(positional_file):
    dm = datamodule(positional_file, seed=7)
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, RandomOffsetSampler)
    # default: as many windows as cover the train split once
    assert len(sampler) == len(dm.train_ids) // 16
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler)
    assert all(0 <= o <= len(dm.train_ids) - 17 for o in epoch0)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0

    again = datamodule(positional_file, seed=7).train_dataloader()
    assert list(again.sampler) == epoch0
    first_batch = next(iter(again))[0]
    assert first_batch[:, 0].tolist() == epoch0[:8]  # offsets are positions in this corpus
    other = datamodule(positional_file, seed=8).train_dataloader()
    assert list(other.sampler) != epoch0


def test_trainer_draws_new_windows_each_epoch(positional_file):
    """Lightning calls the sampler's set_epoch: epoch 2 trains on other windows."""
    dm = datamodule(positional_file, train_windows_per_epoch=16, batch_size=8)
    seen: dict[int, list[list[int]]] = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).extend(batch[0][:, 0].tolist())

    module = LanguageModel(
        {
            "vocab_size": dm.tokenizer.vocab_size,
            "context_length": 16,
            "n_layer": 1,
            "n_head": 1,
            "n_embd": 8,
        },
        warmup_steps=1,
    )
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[Record()],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert sorted(seen) == [0, 1]
    assert len(seen[0]) == len(seen[1]) == 16
    assert seen[0] != seen[1]
    # the inputs start at the sampler's offsets for that epoch (ids are positions here)
    assert seen[0] == _offsets(dm, epoch=0) and seen[1] == _offsets(dm, epoch=1)


def _offsets(dm: CharDataModule, epoch: int) -> list[int]:
    sampler = dm.train_dataloader().sampler
    sampler.set_epoch(epoch)
    return list(sampler)


def test_compact_dtype(tmp_path, positional_file):
    small = tmp_path / "small.txt"
    small.write_text(make_corpus(100), encoding="utf-8")
    dm = datamodule(small)
    assert dm.tokenizer.vocab_size <= 256
    assert dm.train_ids.dtype == torch.uint8 and dm.val_ids.dtype == torch.uint8
    text = small.read_text(encoding="utf-8")
    assert dm.tokenizer.decode(torch.cat([dm.train_ids, dm.val_ids]).tolist()) == text

    large = datamodule(positional_file)  # 1000 distinct characters do not fit in a byte
    assert large.tokenizer.vocab_size == 1000
    assert large.train_ids.dtype == torch.uint16  # the token cache's next size up
    assert int(large.val_ids.long().max()) == 999


def test_min_characters_is_enough_and_shorter_corpus_fails_clearly(tmp_path):
    dm = CharDataModule(path="unused", max_context=64, val_split=0.1)
    needed = dm.min_characters()
    assert needed >= 65 / 0.1

    enough = tmp_path / "enough.txt"
    enough.write_text(positional_text(needed), encoding="utf-8")
    ok = datamodule(enough, max_context=64, val_split=0.1, batch_size=2)
    assert len(next(iter(ok.train_dataloader()))[0][0]) == 64
    assert len(list(ok.val_dataloader())) >= 1

    short = tmp_path / "short.txt"
    short.write_text(positional_text(50), encoding="utf-8")  # shorter than one window
    with pytest.raises(CorpusError) as info:
        datamodule(short, max_context=64, val_split=0.1)
    message = str(info.value)
    assert "\n" not in message
    assert "50 characters" in message and "max_context=64" in message
    assert f"at least {needed:,}" in message


@pytest.mark.parametrize("split", [0.0, 1.0, -0.1, 1.5])
def test_val_split_out_of_range_is_refused(split):
    with pytest.raises(ValueError, match="val_split"):
        CharDataModule(path="unused", val_split=split)


def test_tokenizer_travels_in_the_state_dict(tmp_path, positional_file):
    dm = datamodule(positional_file)
    fresh = CharDataModule(path=str(positional_file))
    fresh.load_state_dict(dm.state_dict())
    assert fresh.tokenizer is not None and fresh.tokenizer.vocab == dm.tokenizer.vocab

    other = tmp_path / "other.txt"
    other.write_text("abcdefghij" * 100, encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer differs"):
        datamodule(other).load_state_dict(dm.state_dict())


def test_cleaning_flags_reach_the_tokenizer(tmp_path):
    path = tmp_path / "messy.txt"
    path.write_text("ROMEO:\r\nHello   There\t\tfriend  \r\n\r\n\r\n\r\n" * 60, encoding="utf-8")
    raw = datamodule(path, max_context=8)
    assert {"\r", "\t", "R"} <= set(raw.tokenizer.vocab)
    clean = datamodule(path, max_context=8, lowercase=True, normalize_whitespace=True)
    assert not {"\r", "\t", "R", "H"} & set(clean.tokenizer.vocab)
    text = clean.tokenizer.decode(torch.cat([clean.train_ids, clean.val_ids]).tolist())
    assert text.startswith("romeo:\nhello there friend\n\nromeo:\n")


@settings(max_examples=100, deadline=None)
@given(
    context=st.integers(1, 24),
    val_split=st.floats(0.05, 0.6),
    extra=st.integers(0, 300),
    seed=st.integers(0, 2**31),
)
def test_windowing_property(context, val_split, extra, seed):
    """For any context, split and corpus length (at least min_characters): every window is
    inside its split, and targets are the inputs shifted by one."""
    needed = CharDataModule(path="unused", max_context=context, val_split=val_split)
    n = needed.min_characters() + extra
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        path.write_text(positional_text(n), encoding="utf-8")
        dm = datamodule(path, max_context=context, val_split=val_split, batch_size=4, seed=seed)
    n_train = len(dm.train_ids)
    assert n_train + len(dm.val_ids) == n
    assert len(dm.val_ids) == int(n * val_split)

    sampler = dm.train_dataloader().sampler
    offsets = list(sampler)
    assert offsets and all(o >= 0 and o + context + 1 <= n_train for o in offsets)
    for x, y in dm.train_dataloader():
        assert x.shape[1] == context
        assert torch.equal(y, x + 1)
        assert int(y.max()) < n_train
    val = list(dm.val_dataloader())
    assert val
    for x, y in val:
        assert torch.equal(y, x + 1)
        assert int(x.min()) >= n_train and int(y.max()) < n
