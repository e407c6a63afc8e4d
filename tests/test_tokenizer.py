"""CharacterTokenizer: ids, round trips, errors, and its JSON state file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.artifacts import ArtifactError, read_tokenizer
from tinyllm.tokenizer import FORMAT, VERSION, CharacterTokenizer, UnknownCharactersError

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler — in the mind?\n"


def test_round_trip():
    tokenizer = CharacterTokenizer().fit(TEXT)
    ids = tokenizer.encode(TEXT)
    assert len(ids) == len(TEXT)
    assert tokenizer.decode(ids) == TEXT


def test_ids_are_sorted_characters_and_deterministic():
    tokenizer = CharacterTokenizer().fit("banana\n")
    assert tokenizer.vocab == ["\n", "a", "b", "n"]
    assert tokenizer.vocab_size == 4
    assert tokenizer.encode("banana") == [2, 1, 3, 1, 3, 1]
    # the ids depend on the set of characters only, not on their order or counts
    shuffled = CharacterTokenizer().fit("nab\nnnnaaab")
    assert shuffled.vocab == tokenizer.vocab
    assert shuffled.encode("nab") == tokenizer.encode("nab")


def test_fit_on_empty_text_raises():
    with pytest.raises(ValueError, match="empty"):
        CharacterTokenizer().fit("")


def test_unknown_characters_are_named():
    tokenizer = CharacterTokenizer().fit("abc")
    with pytest.raises(UnknownCharactersError) as info:
        tokenizer.encode("abzcé!z")
    assert info.value.characters == ["!", "z", "é"]
    message = str(info.value)
    for character in ("'!'", "'z'", "'é'"):
        assert character in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [-1, 3, 1000])
def test_decode_out_of_range_raises(bad):
    tokenizer = CharacterTokenizer().fit("abc")
    with pytest.raises(ValueError, match=rf"out of range \[0, 3\).*{bad}"):
        tokenizer.decode([0, bad, 1])


def test_state_file_is_versioned_readable_json_and_round_trips(tmp_path):
    tokenizer = CharacterTokenizer().fit(TEXT)
    path = tmp_path / "sub" / "tokenizer.json"
    tokenizer.save_state(path)
    raw = path.read_text(encoding="utf-8")
    state = json.loads(raw)
    assert state == {"format": FORMAT, "version": VERSION, "vocab": tokenizer.vocab}
    assert state["format"] == "tinyllm.char_tokenizer" and state["version"] == 1
    # human-readable: indented over many lines, characters written as themselves
    assert raw.count("\n") > tokenizer.vocab_size
    assert '"—"' in raw and "\\u" not in raw

    loaded = read_tokenizer(path)  # the one reader of saved tokenizers (tinyllm.artifacts)
    assert isinstance(loaded, CharacterTokenizer) and loaded.vocab == tokenizer.vocab
    assert loaded.decode(loaded.encode(TEXT)) == TEXT


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"format": FORMAT, "version": 2, "vocab": ["a"]}, "version 2 is not supported"),
        ({"format": "something else", "version": 1, "vocab": ["a"]}, "not a tinyllm tokenizer"),
        ({"format": FORMAT, "version": 1, "vocab": []}, "no vocabulary"),
        ({"format": FORMAT, "version": 1, "vocab": ["a", "a"]}, "duplicate"),
        ({"format": FORMAT, "version": 1, "vocab": ["ab"]}, "single characters"),
    ],
)
def test_load_rejects_bad_state(tmp_path, state, match):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ArtifactError, match=f"{path} is invalid: .*{match}"):
        read_tokenizer(path)


def test_load_rejects_invalid_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"format": ', encoding="utf-8")
    with pytest.raises(ArtifactError, match="not valid JSON .*: the file is damaged"):
        read_tokenizer(path)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1))
def test_any_fitted_text_round_trips(text):
    tokenizer = CharacterTokenizer().fit(text)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.vocab == sorted(set(text))
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tokenizer.json"
        tokenizer.save_state(path)
        restored = read_tokenizer(path)
    assert restored.vocab == tokenizer.vocab
    assert restored.encode(text) == ids
