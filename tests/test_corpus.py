"""Tests for tinyllm.corpus: file reading, whitespace cleanup, and the Shakespeare conversion."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyllm import shakespeare
from tinyllm.corpus import CorpusError, clean_text, normalize_whitespace, read_text_file
from tinyllm.shakespeare import (
    convert_play,
    load_shakespeare,
    play_files,
    plays_markdown_dir,
    shakespeare_text,
)

# --------------------------------------------------------------------------------------------
# Conversion of hand-written Markdown in the iambic style
# --------------------------------------------------------------------------------------------

SPEAKER_LINE = re.compile(r"^[^\n]+:$")

# "$" at the end of a line stands for the two trailing spaces of a Markdown line break.
SNIPPET = """\
# Othello

## ACT I

### SCENE I. Venice. A street.

_Enter RODERIGO and IAGO_

**RODERIGO**$
Tush! never tell me; I take it much unkindly$
That thou, Iago, who hast had my purse$
As if the strings were thine. _\\[Aside]_

**IAGO**$
_\\[To RODERIGO]_$
'Sblood, but you will not hear me:$
If ever I did dream of such a matter,\\--

_Exit RODERIGO_

Abhor me.

**First Senator**$
[Within]_$
What, ho!

_Enter BRABANTIO, above, at a
window_

*Exeunt.*
""".replace("$\n", "  \n")

SNIPPET_PLAIN = """\
RODERIGO:
Tush! never tell me; I take it much unkindly
That thou, Iago, who hast had my purse
As if the strings were thine.

IAGO:
'Sblood, but you will not hear me:
If ever I did dream of such a matter,--
Abhor me.

FIRST SENATOR:
What, ho!
"""

SNIPPET_WITH_DIRECTIONS = """\
Enter RODERIGO and IAGO

RODERIGO:
Tush! never tell me; I take it much unkindly
That thou, Iago, who hast had my purse
As if the strings were thine.
[Aside]

IAGO:
[To RODERIGO]
'Sblood, but you will not hear me:
If ever I did dream of such a matter,--

Exit RODERIGO

IAGO:
Abhor me.

FIRST SENATOR:
[Within]
What, ho!

Enter BRABANTIO, above, at a window

Exeunt.
"""


def test_convert_snippet_without_stage_directions():
    assert convert_play(SNIPPET) == SNIPPET_PLAIN


def test_convert_snippet_with_stage_directions():
    assert convert_play(SNIPPET, keep_stage_directions=True) == SNIPPET_WITH_DIRECTIONS


def test_convert_handles_quirks_of_the_real_files():
    # Shapes copied from the plays: a heading wrapped onto a second paragraph line, a speaker
    # name split over a paragraph break, a plain-text label, a running page title, bold used
    # for words of a speech, a scene title set in bold, and an HTML entity.
    markdown = """\
# Cymbeline

### SCENE III. A field of battle between Towton and Saxton, in
Yorkshire.

**WARWICK**$
Forspent with toil, as runners with a race,$
I lay me down a little while to breathe;

_Exit_

BISHOP

**OF WINCHESTER**$
Each hath his place and function to attend:$
&amp; c.

CYMBELINE

**Scene III**$
An ante-chamber.

SONG.

**ANGELO**$
Yet may he live awhile; and, it may be,

**As long as you or I**$
yet he must die.
""".replace("$\n", "  \n")
    assert convert_play(markdown) == (
        "WARWICK:\n"
        "Forspent with toil, as runners with a race,\n"
        "I lay me down a little while to breathe;\n"
        "\n"
        "BISHOP OF WINCHESTER:\n"
        "Each hath his place and function to attend:\n"
        "& c.\n"
        "\n"
        "ANGELO:\n"
        "Yet may he live awhile; and, it may be,\n"
        "As long as you or I\n"
        "yet he must die.\n"
    )


def test_convert_empty_markdown_gives_empty_text():
    assert convert_play("") == ""
    assert convert_play("# Title\n\n## ACT I\n\n_Exeunt_\n") == ""


MARKDOWN_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            ["", "# T", "## ACT I", "**ROMEO**  ", "**Nurse**", "_Exit_", "*Exeunt.*", "[Aside]_"]
        ),
        st.text(alphabet="aZ :_*#\\[]&;\t-", max_size=12),
    ),
    max_size=25,
)


@given(MARKDOWN_LINES, st.booleans())
def test_convert_play_output_is_always_well_formed(lines, keep):
    text = convert_play("\n".join(lines), keep_stage_directions=keep)
    assert text == "" or (text.endswith("\n") and not text.endswith("\n\n"))
    assert "\n\n\n" not in text and not text.startswith("\n")
    assert "*" not in text and "_" not in text
    if text and not keep:
        for block in text[:-1].split("\n\n"):
            first, *rest = block.split("\n")
            assert SPEAKER_LINE.match(first) and first == first.upper()
            assert rest and all(line == line.strip() and line for line in rest)


# --------------------------------------------------------------------------------------------
# The real corpus
# --------------------------------------------------------------------------------------------

MARKDOWN_MARK = re.compile(r"\*|_|\\|^#|&\w+;", re.MULTILINE)


@pytest.fixture(scope="module")
def plain_corpus() -> str:
    return shakespeare_text()


@pytest.fixture(scope="module")
def directions_corpus() -> str:
    return shakespeare_text(keep_stage_directions=True)


def test_play_files_are_the_38_plays_in_stable_order():
    files = play_files()
    root = plays_markdown_dir()
    relative = [f.relative_to(root).as_posix() for f in files]
    assert len(files) == 38
    assert relative == sorted(relative)
    assert "tragedies/othello.md" in relative
    assert all(f.is_file() and f.suffix == ".md" for f in files)


def _check_structure(text: str, *, directions: bool) -> None:
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert not text.startswith("\n")
    assert "\n\n\n" not in text
    assert MARKDOWN_MARK.search(text) is None
    for block in text[:-1].split("\n\n"):
        first, *rest = block.split("\n")
        if directions and not SPEAKER_LINE.match(first):
            continue  # a stage direction standing between speeches
        assert SPEAKER_LINE.match(first), block[:200]
        assert first == first.upper(), first
        assert rest, f"speaker without speech: {first}"
        for line in rest:
            assert line == line.strip() and line, block[:200]


def test_real_corpus_has_speaker_structure_and_no_markdown(plain_corpus):
    _check_structure(plain_corpus, directions=False)
    assert len(plain_corpus) > 3_000_000
    # Directions are gone: no block consists of a bare "Exeunt"/"Enter ..." line.
    assert "\nExeunt\n" not in plain_corpus
    assert "\nEnter RODERIGO and IAGO\n" not in plain_corpus
    assert plain_corpus.startswith(convert_play(play_files()[0].read_text(encoding="utf-8")))


def test_real_corpus_with_directions_keeps_them_as_plain_lines(plain_corpus, directions_corpus):
    _check_structure(directions_corpus, directions=True)
    assert len(directions_corpus) > len(plain_corpus)
    assert "\n\nEnter RODERIGO and IAGO\n\nRODERIGO:\n" in directions_corpus
    assert "\n[Aside]\n" in directions_corpus


def test_othello_opens_like_tiny_shakespeare():
    othello = next(f for f in play_files() if f.name == "othello.md")
    text = convert_play(othello.read_text(encoding="utf-8"))
    assert text.startswith(
        "RODERIGO:\n"
        "Tush! never tell me; I take it much unkindly\n"
        "That thou, Iago, who hast had my purse\n"
        "As if the strings were thine, shouldst know of this.\n"
        "\n"
        "IAGO:\n"
        "'Sblood, but you will not hear me:\n"
    )


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_shakespeare_converts_once_and_caches(tmp_path, monkeypatch, plain_corpus):
    cache_dir = tmp_path / "nested" / "cache"
    path = load_shakespeare(cache_dir)
    assert path == cache_dir / "shakespeare.txt"
    assert path.read_text(encoding="utf-8") == plain_corpus
    # no temp files; the stamp names the converter and iambic versions
    names = sorted(p.name for p in cache_dir.iterdir())
    assert names == ["shakespeare.txt", "shakespeare.txt.json"]
    assert path.stat().st_mode & 0o044 == 0o044 & ~_umask()  # not mkstemp's private 0600
    mtime = path.stat().st_mtime_ns

    def must_not_convert(**kwargs):
        raise AssertionError("the cached corpus was converted again")

    monkeypatch.setattr(shakespeare, "shakespeare_text", must_not_convert)
    assert load_shakespeare(str(cache_dir)) == path
    assert path.stat().st_mtime_ns == mtime
    assert path.read_text(encoding="utf-8") == plain_corpus


def test_load_shakespeare_with_directions_uses_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setattr(shakespeare, "shakespeare_text", lambda **kw: f"X:\n{kw}\n")
    path = load_shakespeare(tmp_path, keep_stage_directions=True)
    assert path == tmp_path / "shakespeare_with_directions.txt"
    assert path.read_text(encoding="utf-8") == "X:\n{'keep_stage_directions': True}\n"
    assert not (tmp_path / "shakespeare.txt").exists()


def test_load_shakespeare_leaves_nothing_behind_when_writing_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(shakespeare, "shakespeare_text", lambda **kw: "X:\ntext\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", failing_replace)
    with pytest.raises(CorpusError, match="disk full.*data.cache_dir"):
        load_shakespeare(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_shakespeare_converts_again_when_converter_or_iambic_changes(tmp_path, monkeypatch):
    """Issue 11, item 8: a cache made by another converter or iambic version is not reused."""
    calls = []

    def convert(**kwargs):
        calls.append(kwargs)
        return f"X:\nconversion {len(calls)}\n"

    monkeypatch.setattr(shakespeare, "shakespeare_text", convert)
    # a corpus cached by an older tinyllm, which wrote no stamp
    (tmp_path / "shakespeare.txt").write_text("OLD:\nconverted by a buggy converter\n")
    path = load_shakespeare(tmp_path)
    assert path.read_text(encoding="utf-8") == "X:\nconversion 1\n"
    assert load_shakespeare(tmp_path).read_text(encoding="utf-8") == "X:\nconversion 1\n"
    assert len(calls) == 1  # the same versions: reused

    monkeypatch.setattr(shakespeare, "CONVERTER_VERSION", shakespeare.CONVERTER_VERSION + 1)
    assert load_shakespeare(tmp_path).read_text(encoding="utf-8") == "X:\nconversion 2\n"
    monkeypatch.setattr(shakespeare, "iambic_version", lambda: "99.0")
    assert load_shakespeare(tmp_path).read_text(encoding="utf-8") == "X:\nconversion 3\n"
    assert load_shakespeare(tmp_path).read_text(encoding="utf-8") == "X:\nconversion 3\n"
    stamp = json.loads((tmp_path / "shakespeare.txt.json").read_text(encoding="utf-8"))
    assert stamp["iambic_version"] == "99.0"
    assert stamp["converter_version"] == shakespeare.CONVERTER_VERSION
    assert len(calls) == 3


# --------------------------------------------------------------------------------------------
# read_text_file
# --------------------------------------------------------------------------------------------


def _error_for(path: Path | str, **kwargs) -> str:
    with pytest.raises(CorpusError) as info:
        read_text_file(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


def test_read_text_file_reads_utf8(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_bytes("héllo\nwörld\n".encode())
    assert read_text_file(path) == "héllo\nwörld\n"
    assert read_text_file(str(path)) == "héllo\nwörld\n"


def test_read_text_file_missing(tmp_path):
    message = _error_for(tmp_path / "nope.txt")
    assert "not found" in message and "data.path" in message


def test_read_text_file_directory(tmp_path):
    assert "directory" in _error_for(tmp_path)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  \n"])
def test_read_text_file_empty_or_whitespace(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    assert "empty" in _error_for(path)


def test_read_text_file_binary(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04\x00\x00binary\x00data")
    message = _error_for(path)
    assert "not utf-8 text" in message and "data.encoding=" in message
    # latin-1 decodes any byte, so NUL characters must still be caught after decoding.
    assert "not latin-1 text" in _error_for(path, encoding="latin-1")


def test_read_text_file_utf16_is_text_despite_nul_bytes(tmp_path):
    path = tmp_path / "utf16.txt"
    path.write_bytes("ROMEO:\nO!\n".encode("utf-16"))
    assert b"\x00" in path.read_bytes()
    assert read_text_file(path, encoding="utf-16") == "ROMEO:\nO!\n"


def test_read_text_file_invalid_utf8_and_latin1_fallback(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    message = _error_for(path)
    assert "not utf-8 text" in message and "data.encoding=latin-1" in message
    assert read_text_file(path, encoding="latin-1") == "caf\u00e9 cr\u00e8me\n"


def test_read_text_file_unknown_encoding(tmp_path):
    path = tmp_path / "ok.txt"
    path.write_text("hello\n", encoding="utf-8")
    assert "unknown text encoding" in _error_for(path, encoding="no-such-codec")
    assert "unknown text encoding" in _error_for(path, encoding="base64")
    assert read_text_file(path, encoding="UTF8") == "hello\n"


def test_read_text_file_message_stays_one_line_for_odd_names(tmp_path):
    with pytest.raises(CorpusError) as info:
        read_text_file(tmp_path / "two\nlines.txt")
    assert "\n" not in str(info.value)
    assert "two\\nlines.txt" in str(info.value)


# --------------------------------------------------------------------------------------------
# normalize_whitespace / clean_text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\r\nb\rc\n", "a\nb\nc\n"),
        ("a\t\tb  \t c\n", "a b c\n"),
        ("trailing   \nspaces\t\n", "trailing\nspaces\n"),
        ("a\n\n\nb\n", "a\n\nb\n"),
        ("a\n\n\n\nb\n", "a\n\nb\n"),
        ("a\n\nb\n", "a\n\nb\n"),
        ("a\n \n\t\n\nb", "a\n\nb\n"),
        ("\n\n\nstart\n\n\n", "start\n"),
        ("  indented\n", " indented\n"),
        ("", ""),
        (" \n\t\r\n", ""),
        ("ROMEO:\nO!\n\nJULIET:\nAy.", "ROMEO:\nO!\n\nJULIET:\nAy.\n"),
    ],
)
def test_normalize_whitespace_examples(text, expected):
    assert normalize_whitespace(text) == expected


# Mostly layout characters, so runs of blanks, CRLFs and tabs actually occur.
LAYOUT_TEXT = st.one_of(st.text(), st.text(alphabet=" \t\r\n\x0bab\u2028"))


@given(LAYOUT_TEXT)
def test_normalize_whitespace_is_idempotent_and_canonical(text):
    once = normalize_whitespace(text)
    assert normalize_whitespace(once) == once
    assert "\r" not in once and "\t" not in once and "  " not in once
    assert " \n" not in once and "\n\n\n" not in once
    assert not once.startswith("\n")
    assert once == "" or (once.endswith("\n") and not once.endswith("\n\n"))
    # Only whitespace changes: the other characters survive in order.
    assert re.sub(r"[ \t\r\n]", "", once) == re.sub(r"[ \t\r\n]", "", text)


@given(LAYOUT_TEXT, st.booleans(), st.booleans())
def test_clean_text_is_idempotent(text, lowercase, normalize):
    once = clean_text(text, lowercase=lowercase, normalize=normalize)
    assert clean_text(once, lowercase=lowercase, normalize=normalize) == once


@given(st.text())
def test_clean_text_lowercase_only_is_str_lower(text):
    assert clean_text(text, lowercase=True) == text.lower()
    assert clean_text(text) == text
    assert clean_text(text, normalize=True) == normalize_whitespace(text)


def test_clean_text_examples():
    assert clean_text("ROMEO:\r\nO  Juliet!  \n\n\n", lowercase=True, normalize=True) == (
        "romeo:\no juliet!\n"
    )
