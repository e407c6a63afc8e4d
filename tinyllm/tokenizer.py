"""Tokenizers: characters (the default) or the 256 byte values of UTF-8.

`CharacterTokenizer`: one id per distinct character, ids in sorted character order. Sorting
makes the ids a pure function of the character set, so two runs on the same corpus agree and a
saved model can be paired with its tokenizer by content alone.

`ByteTokenizer`: ids are the bytes of the text's UTF-8 encoding, so any text can be encoded and
nothing is ever unknown; a character may take several ids, and a stream of ids can stop in the
middle of one. Both give an incremental decoder that returns only completed characters.

The saved state names its format, so `tokenizer_from_state` rebuilds the right class
(files are read by `tinyllm.artifacts.read_tokenizer`, with the other saved files' checks).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path

from tinyllm.io import write_atomic

FORMAT = "tinyllm.char_tokenizer"
VERSION = 1


def _check_state(state: object, expected_format: str, version: int, what: str) -> None:
    """A saved tokenizer state of the expected kind and a version this tinyllm reads."""
    if not isinstance(state, dict) or state.get("format") != expected_format:
        raise ValueError(f"not a tinyllm {what} state (expected format {expected_format!r})")
    if state.get("version") != version:
        raise ValueError(
            f"{what} state version {state.get('version')!r} is not supported "
            f"(this tinyllm reads version {version})"
        )


class UnknownCharactersError(ValueError):
    """Text holds characters the tokenizer was never fitted on."""

    def __init__(self, characters: Iterable[str]):
        self.characters = sorted(set(characters))
        shown = ", ".join(repr(c) for c in self.characters[:20])
        more = f" and {len(self.characters) - 20} more" if len(self.characters) > 20 else ""
        super().__init__(f"characters not in the vocabulary: {shown}{more}")


class CharacterDecoder:
    """Streaming decoder of a CharacterTokenizer: every id is a whole character."""

    def __init__(self, tokenizer: CharacterTokenizer):
        self._tokenizer = tokenizer

    def decode(self, ids: Iterable[int], final: bool = False) -> str:
        return self._tokenizer.decode(ids)


class CharacterTokenizer:
    kind = "chars"
    unit = "character"  # what one token is, as reports name it
    vocab_unit = "characters"  # what the vocabulary counts

    def __init__(self, vocab: Iterable[str] = ()):
        self._set_vocab(list(vocab))

    def _set_vocab(self, vocab: list[str]) -> None:
        if any(not isinstance(c, str) or len(c) != 1 for c in vocab):
            raise ValueError("tokenizer vocabulary must be single characters")
        if len(set(vocab)) != len(vocab):
            raise ValueError("tokenizer vocabulary has duplicate characters")
        self.vocab: list[str] = vocab
        self._ids = {c: i for i, c in enumerate(vocab)}

    def fit(self, text: str) -> CharacterTokenizer:
        if not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        self._set_vocab(sorted(set(text)))
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unknown_characters(self, text: str) -> list[str]:
        return sorted(set(text) - self._ids.keys())

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            raise UnknownCharactersError(self.unknown_characters(text)) from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.vocab)]
        if bad:
            shown = sorted(set(bad))[:10]
            raise ValueError(f"token ids out of range [0, {len(self.vocab)}): {shown}")
        return "".join(self.vocab[i] for i in ids)

    def incremental_decoder(self) -> CharacterDecoder:
        return CharacterDecoder(self)

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "vocab": list(self.vocab)}

    @classmethod
    def from_state_dict(cls, state: object) -> CharacterTokenizer:
        _check_state(state, FORMAT, VERSION, "tokenizer")
        vocab = state.get("vocab")
        if not isinstance(vocab, list) or not vocab:
            raise ValueError("tokenizer state has no vocabulary")
        return cls(vocab)

    def save_state(self, path: str | Path) -> None:
        text = json.dumps(self.state_dict(), ensure_ascii=False, indent=1)
        write_atomic(Path(path), (text + "\n").encode("utf-8"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharacterTokenizer) and other.vocab == self.vocab

    def __hash__(self) -> int:
        return hash(tuple(self.vocab))

    def __repr__(self) -> str:
        return f"CharacterTokenizer(vocab_size={self.vocab_size})"


BYTE_FORMAT = "tinyllm.byte_tokenizer"
BYTE_VERSION = 1


class ByteDecoder:
    """Streaming decoder of a ByteTokenizer: holds the bytes of a character until it is whole.

    `decode(ids)` returns the characters completed so far; `final=True` also flushes bytes that
    never formed a character (as U+FFFD), as the end of a stream must.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, ids: Iterable[int], final: bool = False) -> str:
        return self._decoder.decode(ByteTokenizer.to_bytes(ids), final)


class ByteTokenizer:
    """The 256 byte values of UTF-8 as the vocabulary: any text is encodable."""

    kind = "bytes"
    unit = "byte"
    vocab_unit = "byte values"
    vocab_size = 256

    def fit(self, text: str) -> ByteTokenizer:
        return self  # nothing to learn: the vocabulary is fixed

    def unknown_characters(self, text: str) -> list[str]:
        return []

    def encode(self, text: str) -> list[int]:
        # surrogates cannot be UTF-8 encoded; replace them rather than fail on odd input
        return list(text.encode("utf-8", errors="replace"))

    @staticmethod
    def to_bytes(ids: Iterable[int]) -> bytes:
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"token ids out of range [0, 256): {sorted(set(bad))[:10]}")
        return bytes(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to text; bytes that do not form a character (a cut sequence) become U+FFFD."""
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> ByteDecoder:
        return ByteDecoder()

    def state_dict(self) -> dict:
        return {"format": BYTE_FORMAT, "version": BYTE_VERSION}

    @classmethod
    def from_state_dict(cls, state: object) -> ByteTokenizer:
        _check_state(state, BYTE_FORMAT, BYTE_VERSION, "byte tokenizer")
        return cls()

    def save_state(self, path: str | Path) -> None:
        write_atomic(Path(path), (json.dumps(self.state_dict(), indent=1) + "\n").encode())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(BYTE_FORMAT)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


Tokenizer = CharacterTokenizer | ByteTokenizer
TOKENIZER_KINDS = {"chars": CharacterTokenizer, "bytes": ByteTokenizer}


def new_tokenizer(kind: str) -> Tokenizer:
    """An unfitted tokenizer of a `data.tokenizer` kind."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(
            f"data.tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {kind!r} "
            "(e.g. data.tokenizer=bytes)"
        )
    return TOKENIZER_KINDS[kind]()


def tokenizer_from_state(state: object) -> Tokenizer:
    """The tokenizer a saved state describes, of whichever class wrote it."""
    if isinstance(state, dict) and state.get("format") == BYTE_FORMAT:
        return ByteTokenizer.from_state_dict(state)
    return CharacterTokenizer.from_state_dict(state)
