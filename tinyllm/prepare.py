"""The token cache: a corpus encoded once into a flat file of token ids, memory-mapped after.

    data/prepared/<name>-<key>/ids.bin         token ids, uint8 / uint16 / uint32 (native order)
    data/prepared/<name>-<key>/manifest.json   what made them: sources, settings, tokenizer

The folder's key is a hash of what decides the ids apart from the sources' contents: the
sources' paths, the encoding, the cleaning flags and the tokenizer kind. The manifest records
each source's size and modification time; a cache whose sources have changed since, whose
manifest is unreadable or whose ids file has the wrong size is rebuilt, never used. A cache in
a newer format than this tinyllm reads is refused (a newer tinyllm made it and still uses it).

Preparation streams: the text is read, cleaned and encoded a chunk at a time with numpy (a
lookup table over code points), in two passes for characters (the vocabulary, then the ids) and
one for bytes, so its memory does not grow with the corpus. With cleaning flags, the first pass
keeps the cleaned text in a temporary file for the second, so the text is cleaned only once.
The ids go to a temporary file renamed into place, and the manifest is written last and
removed first, so a cache that a crash or a full disk interrupted is never taken for a complete
one. A lock file keeps two processes (sweep jobs, DDP ranks) from preparing the same cache at
once: the second waits, then maps it.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinyllm.corpus import CorpusError, clean_chunks, iter_corpus_text
from tinyllm.io import write_atomic
from tinyllm.tokenizer import (
    ByteTokenizer,
    CharacterTokenizer,
    Tokenizer,
    new_tokenizer,
    tokenizer_from_state,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent preparation is then unguarded
    fcntl = None

log = logging.getLogger(__name__)

FORMAT = "tinyllm.token_cache"
FORMAT_VERSION = 1
IDS_FILE = "ids.bin"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
CHUNK_BYTES = 4 * 2**20
_CODE_POINTS = 0x110000
_DTYPES = ("uint8", "uint16", "uint32")

Progress = Callable[[str, int, int], object]  # (phase, bytes read so far, bytes in all)


@dataclass(frozen=True)
class PrepareSettings:
    """Everything besides the sources that decides the token ids."""

    encoding: str = "utf-8"
    lowercase: bool = False
    normalize_whitespace: bool = False
    tokenizer: str = "chars"

    def identity(self) -> dict:
        """The settings as they decide the ids: an encoding by its canonical name, so that
        `utf8`, `UTF-8` and `utf-8` share one cache."""
        with contextlib.suppress(LookupError):
            return asdict(self) | {"encoding": codecs.lookup(self.encoding).name}
        return asdict(self)


@dataclass
class PreparedCorpus:
    ids: np.ndarray  # a read-only-in-practice memory map (copy-on-write), or in memory
    tokenizer: Tokenizer
    folder: Path | None  # None: prepared in memory (the cache folder was not writable)
    manifest: dict


def source_identity(files: list[Path]) -> list[dict]:
    """Path, size and modification time of each source: what tells a changed source."""
    identity = []
    for file in files:
        try:
            stat = file.stat()
        except OSError as err:
            raise CorpusError(
                f"cannot read corpus file {file}: {err.strerror or err} (check data.path)"
            ) from None
        identity.append(
            {"path": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    return identity


def cache_folder(cache_dir: str | Path, files: list[Path], settings: PrepareSettings) -> Path:
    """Where the cache of these sources with these settings lives (the same for every run)."""
    key = json.dumps(
        {"sources": [str(f.resolve()) for f in files], "settings": settings.identity()},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", files[0].stem)[:40] or "corpus"
    return Path(cache_dir) / "prepared" / f"{stem}-{digest}"


def _dtype_for(vocab_size: int) -> np.dtype:
    for name in _DTYPES:
        if vocab_size <= np.iinfo(name).max + 1:
            return np.dtype(name)
    raise CorpusError(f"vocabulary of {vocab_size:,} tokens is too large for the token cache")


# --- reading a cache ---------------------------------------------------------------------------


def load_prepared(
    folder: Path, files: list[Path], settings: PrepareSettings, quiet: bool = False
) -> PreparedCorpus | None:
    """The cache in `folder` memory-mapped, or None when it is missing, stale or damaged (said
    in the log unless `quiet`: a second look, once the lock is held, says it again)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        if not quiet:
            log.warning("token cache %s: manifest unreadable, preparing again", folder)
        return None
    reason = _stale_reason(manifest, folder, files, settings)
    if reason:
        if not quiet:
            log.info("token cache %s: %s, preparing again", folder, reason)
        return None
    ids = np.memmap(
        folder / IDS_FILE, dtype=manifest["dtype"], mode="c", shape=(manifest["num_tokens"],)
    )
    tokenizer = tokenizer_from_state(manifest["tokenizer_state"])
    return PreparedCorpus(ids, tokenizer, folder, manifest)


def _stale_reason(
    manifest: object, folder: Path, files: list[Path], settings: PrepareSettings
) -> str | None:
    """Why the cache must not be used (None: it is good). Raises for a newer format."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return "not a token cache manifest"
    version = manifest.get("version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CorpusError(
            f"token cache {folder} was written by a newer tinyllm (format {version}; this one "
            f"reads {FORMAT_VERSION}): upgrade tinyllm, or set data.cache_dir to another folder"
        )
    if version != FORMAT_VERSION:
        return f"format {version!r} is older than {FORMAT_VERSION}"
    if manifest.get("settings") != settings.identity():
        return "settings differ"
    if manifest.get("sources") != source_identity(files):
        return "the corpus changed since it was prepared"
    if manifest.get("byteorder") != sys.byteorder:
        return "written on a machine of the other byte order"
    dtype, count = manifest.get("dtype"), manifest.get("num_tokens")
    if dtype not in _DTYPES or not isinstance(count, int) or count < 1:
        return "manifest damaged"
    try:
        tokenizer = tokenizer_from_state(manifest.get("tokenizer_state"))
    except ValueError:
        return "tokenizer damaged"
    if _dtype_for(tokenizer.vocab_size) != np.dtype(dtype):
        return "manifest damaged"
    # a vocabulary cut short (by hand) would leave ids that index nothing; a manifest written
    # before the count was recorded has none to compare
    if manifest.get("vocab_size", tokenizer.vocab_size) != tokenizer.vocab_size:
        return "the vocabulary is not the one the ids were written in"
    try:
        size = (folder / IDS_FILE).stat().st_size
    except OSError:
        return "ids file missing"
    if size != count * np.dtype(dtype).itemsize:
        return f"ids file has {size:,} bytes, the manifest says {count:,} {dtype} ids"
    return None


# --- preparing ---------------------------------------------------------------------------------


def prepare_corpus(
    files: list[Path],
    settings: PrepareSettings,
    cache_dir: str | Path | None,
    *,
    source_name: str = "",
    chunk_bytes: int = CHUNK_BYTES,
    progress: Progress | None = None,
) -> PreparedCorpus:
    """The corpus's token ids: from the cache when it is good, else prepared (and cached).

    With `cache_dir=None`, or a cache folder that cannot be written (read-only file system, no
    permission), the ids are prepared in memory instead, with a warning. A full disk or a
    source that changes while it is read stops with a CorpusError; no cache is left behind.
    """
    new_tokenizer(settings.tokenizer)  # an unknown kind stops here, with its one-line message
    name = source_name or str(files[0])
    if cache_dir is None:
        return _prepare(files, settings, None, name, chunk_bytes, progress)
    folder = cache_folder(cache_dir, files, settings)
    prepared = load_prepared(folder, files, settings)
    if prepared is not None:
        return prepared
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        log.warning(
            "cannot write the token cache in %s (%s): preparing %s in memory, which takes as "
            "much memory as the corpus and is repeated by every run; set data.cache_dir to a "
            "writable folder to prepare it once",
            folder.parent,
            err.strerror or err,
            name,
        )
        return _prepare(files, settings, None, name, chunk_bytes, progress)
    with lock:
        if fcntl is not None:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another process may be preparing it
        prepared = load_prepared(folder, files, settings, quiet=True)
        if prepared is not None:
            return prepared
        if fcntl is not None:  # only the lock's holder writes here: these are a killed one's
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        try:
            _prepare(files, settings, folder, name, chunk_bytes, progress)
        except BaseException:  # an unusable corpus, a full disk, Ctrl-C: no folder of a lock
            if {p.name for p in folder.iterdir()} == {LOCK_FILE}:
                (folder / LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
    prepared = load_prepared(folder, files, settings)
    if prepared is None:  # the sources changed right after preparation
        raise _changed(name)
    return prepared


def _changed(name: str) -> CorpusError:
    return CorpusError(
        f"corpus {name} changed while it was being prepared: prepare it again once it is "
        "complete (tinyllm-prepare data.path=...)"
    )


def _cleaned(
    files: list[Path],
    settings: PrepareSettings,
    chunk_bytes: int,
    on_read: Callable[[int], object] | None,
) -> Iterator[str]:
    raw = iter_corpus_text(files, settings.encoding, chunk_bytes, on_read)
    return clean_chunks(
        raw,
        lowercase=settings.lowercase,
        normalize=settings.normalize_whitespace,
        max_hold=max(chunk_bytes, 64),
    )


def _code_points(text: str) -> np.ndarray:
    if text.isascii():  # the common case, and a copy instead of a conversion
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


class _ReadCounter:
    """Bytes read from the sources, reported to a progress callback per phase."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done, self.phase = progress, total, 0, ""

    def start(self, phase: str, total: int | None = None) -> Callable[[int], object]:
        self.phase, self.done = phase, 0
        self.total = self.total if total is None else total
        if self.progress is not None:
            self.progress(phase, 0, self.total)
        return self.add

    def add(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.phase, self.done, self.total)


def _prepare(
    files: list[Path],
    settings: PrepareSettings,
    folder: Path | None,
    name: str,
    chunk_bytes: int,
    progress: Progress | None,
) -> PreparedCorpus:
    """Encode the corpus; into `folder` (then returns the result unmapped) or into memory."""
    before = source_identity(files)
    counter = _ReadCounter(progress, sum(s["size"] for s in before))
    # Cleaning costs more than encoding: the first pass keeps the cleaned text in a temporary
    # file that the second pass reads, rather than cleaning everything twice.
    cleaned: Path | None = None
    if (
        settings.tokenizer == "chars"
        and folder is not None
        and (settings.lowercase or settings.normalize_whitespace)
    ):
        cleaned = folder / f".cleaned.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        return _prepare_passes(files, settings, folder, name, chunk_bytes, before, counter, cleaned)
    finally:
        if cleaned is not None:
            with contextlib.suppress(OSError):
                cleaned.unlink(missing_ok=True)


def _read_utf8(path: Path, chunk_bytes: int, on_read: Callable[[int], object]) -> Iterator[str]:
    """Text we wrote ourselves (the cleaned corpus): no checks, just decoding."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogatepass")
    with open(path, "rb") as file:
        while raw := file.read(chunk_bytes):
            on_read(len(raw))
            if text := decoder.decode(raw):
                yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


def _prepare_passes(
    files: list[Path],
    settings: PrepareSettings,
    folder: Path | None,
    name: str,
    chunk_bytes: int,
    before: list[dict],
    counter: _ReadCounter,
    cleaned: Path | None,
) -> PreparedCorpus:
    tokenizer: Tokenizer
    lookup: np.ndarray | None = None
    ascii_table: bytes | None = None
    expected: int | None = None
    if settings.tokenizer == "chars":
        seen = np.zeros(_CODE_POINTS, dtype=bool)
        expected = 0
        keep = open(cleaned, "xb") if cleaned is not None else None  # noqa: SIM115 - closed below
        try:
            for chunk in _cleaned(files, settings, chunk_bytes, counter.start("vocabulary")):
                codes = _code_points(chunk)
                seen[codes] = True
                expected += len(codes)
                if keep is not None:
                    keep.write(chunk.encode("utf-8", errors="surrogatepass"))
        except OSError as err:  # reading errors are CorpusErrors already: this is the disk
            raise _write_error(folder, err) from None
        finally:
            if keep is not None:
                keep.close()
        if cleaned is not None and source_identity(files) != before:
            raise _changed(name)
        vocab_codes = np.flatnonzero(seen)
        tokenizer = CharacterTokenizer([chr(c) for c in vocab_codes.tolist()])
        dtype = _dtype_for(tokenizer.vocab_size)
        lookup = np.zeros(_CODE_POINTS, dtype=dtype)
        lookup[vocab_codes] = np.arange(len(vocab_codes), dtype=dtype)
        # ASCII text with a vocabulary of at most 256: bytes.translate is the lookup, in C
        ascii_table = bytes(lookup[:256]) if dtype == np.uint8 else None
        if folder is not None:
            _check_free_space(folder, expected * dtype.itemsize)
    else:
        tokenizer = ByteTokenizer()
        dtype = np.dtype(np.uint8)

    def encoded() -> Iterator[np.ndarray]:
        if cleaned is None:
            chunks = _cleaned(files, settings, chunk_bytes, counter.start("encoding"))
        else:
            on_read = counter.start("encoding", cleaned.stat().st_size)
            chunks = _read_utf8(cleaned, chunk_bytes, on_read)
        for chunk in chunks:
            if lookup is None:
                yield np.frombuffer(chunk.encode("utf-8", errors="replace"), dtype=np.uint8)
            elif ascii_table is not None and chunk.isascii():
                yield np.frombuffer(chunk.encode("ascii").translate(ascii_table), dtype=np.uint8)
            else:
                yield lookup[_code_points(chunk)]

    if folder is None:
        parts = list(encoded())
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        count = len(ids)
    else:
        count = _write_ids(folder, encoded())
        ids = None
    if count == 0 or (settings.tokenizer == "chars" and tokenizer.vocab_size == 0):
        raise CorpusError(f"corpus {name} is empty after cleaning")
    if (expected is not None and count != expected) or source_identity(files) != before:
        if folder is not None:
            (folder / IDS_FILE).unlink(missing_ok=True)
        raise _changed(name)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "sources": before,
        "settings": settings.identity(),
        "tokenizer_state": tokenizer.state_dict(),
        "vocab_size": tokenizer.vocab_size,  # every id is below it
        "dtype": dtype.name,
        "byteorder": sys.byteorder,  # the ids are written in this machine's byte order
        "num_tokens": count,
    }
    if folder is None:
        return PreparedCorpus(ids, tokenizer, None, manifest)
    data = (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    try:
        write_atomic(folder / MANIFEST_FILE, data)
    except OSError as err:
        raise _write_error(folder, err) from None
    log.info("prepared %s: %s tokens in %s", name, f"{count:,}", folder)
    return PreparedCorpus(np.zeros(0, dtype=dtype), tokenizer, folder, manifest)


def _check_free_space(folder: Path, needed: int) -> None:
    import shutil

    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CorpusError(
            f"the token cache needs {needed / 2**20:,.1f} MiB but only {free / 2**20:,.1f} MiB "
            f"are free in {folder.parent}: free some space or set data.cache_dir elsewhere"
        )


def _write_error(folder: Path, err: OSError) -> CorpusError:
    reason = "the disk is full" if err.errno == errno.ENOSPC else err.strerror or str(err)
    return CorpusError(
        f"cannot write the token cache in {folder} ({reason}): free some space or set "
        "data.cache_dir to another folder; no partial cache was kept"
    )


def _write_ids(folder: Path, parts: Iterator[np.ndarray]) -> int:
    """Stream the ids to a temporary file and rename it into place; returns their count.

    The manifest goes first, so until a new one is written the folder holds no usable cache.
    """
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    tmp = folder / f".{IDS_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    count = 0
    try:
        with open(tmp, "xb") as out:
            for part in parts:
                out.write(part.tobytes())
                count += len(part)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / IDS_FILE)
    except OSError as err:
        raise _write_error(folder, err) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return count
