"""Character-level tokenizer: one id per distinct character, ids in sorted character order.

Sorting makes the ids a pure function of the character set, so two runs on the same corpus
agree and a saved model can be paired with its tokenizer by content alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tinyllm.io import write_atomic

FORMAT = "tinyllm.char_tokenizer"
VERSION = 1


class UnknownCharactersError(ValueError):
    """Text holds characters the tokenizer was never fitted on."""

    def __init__(self, characters: Iterable[str]):
        self.characters = sorted(set(characters))
        shown = ", ".join(repr(c) for c in self.characters[:20])
        more = f" and {len(self.characters) - 20} more" if len(self.characters) > 20 else ""
        super().__init__(f"characters not in the vocabulary: {shown}{more}")


class CharacterTokenizer:
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

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "vocab": list(self.vocab)}

    @classmethod
    def from_state_dict(cls, state: object) -> CharacterTokenizer:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"not a tinyllm tokenizer state (expected format {FORMAT!r})")
        if state.get("version") != VERSION:
            raise ValueError(
                f"tokenizer state version {state.get('version')!r} is not supported "
                f"(this tinyllm reads version {VERSION})"
            )
        vocab = state.get("vocab")
        if not isinstance(vocab, list) or not vocab:
            raise ValueError("tokenizer state has no vocabulary")
        return cls(vocab)

    def save_state(self, path: str | Path) -> None:
        text = json.dumps(self.state_dict(), ensure_ascii=False, indent=1)
        write_atomic(Path(path), (text + "\n").encode("utf-8"))

    def load_state(self, path: str | Path) -> CharacterTokenizer:
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"tokenizer file {path} is not valid JSON ({e.msg})") from None
        self._set_vocab(self.from_state_dict(state).vocab)
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> CharacterTokenizer:
        return cls().load_state(path)

    def __repr__(self) -> str:
        return f"CharacterTokenizer(vocab_size={self.vocab_size})"
