"""tokenizer.json and tokenizer_config.json: our tokenizers as `tokenizers` models, same ids."""

from __future__ import annotations

from collections.abc import Callable

from tinyllm.export.architectures import ExportError
from tinyllm.tokenizer import ByteTokenizer, CharacterTokenizer

# every character (newlines included: [\s\S], not '.') is its own piece
EACH_CHARACTER = {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated",
                  "invert": False}  # fmt: skip


def _word_level_json(vocab: dict[str, int], pre_tokenizer: dict, decoder: dict) -> dict:
    """A `tokenizers` WordLevel tokenizer: `pre_tokenizer` cuts the text into pieces, each piece
    is a token of `vocab`, `decoder` joins them back into text."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        # no Unicode normalisation: the text reaches the model as written (lowercased for a
        # model of a lowercased corpus: tokenizer_files)
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        # not in the vocabulary: a character the model never saw is an error, as in tinyllm
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def _character_tokenizer_json(tokenizer: CharacterTokenizer) -> dict:
    """One token per character, our ids; the pieces are joined without spaces (Fuse)."""
    vocab = {character: i for i, character in enumerate(tokenizer.vocab)}
    return _word_level_json(vocab, EACH_CHARACTER, {"type": "Fuse"})


def byte_symbols() -> list[str]:
    """The printable character `tokenizers`' ByteLevel stands each byte value for (GPT-2's
    scheme): visible Latin-1 bytes are themselves, the others (controls, space, soft hyphen)
    take the code points from 256 on, in byte order."""
    visible = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = (b for b in range(256) if b not in visible)
    symbols = {b: chr(b) for b in visible} | {b: chr(256 + n) for n, b in enumerate(others)}
    return [symbols[b] for b in range(256)]


def _byte_tokenizer_json(tokenizer: ByteTokenizer) -> dict:
    """UTF-8 bytes as tokens, id = byte value: ByteLevel maps text to one symbol per byte, each
    symbol is a token, and the ByteLevel decoder turns the symbols back into bytes and text."""
    byte_level = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    pieces = [{"type": "ByteLevel", **byte_level}, EACH_CHARACTER]
    pre_tokenizer = {"type": "Sequence", "pretokenizers": pieces}
    vocab = {symbol: i for i, symbol in enumerate(byte_symbols())}
    return _word_level_json(vocab, pre_tokenizer, {"type": "ByteLevel", **byte_level})


# One writer per tokenizer kind.
TOKENIZER_WRITERS: dict[type, Callable[[object], dict]] = {
    CharacterTokenizer: _character_tokenizer_json,
    ByteTokenizer: _byte_tokenizer_json,
}


def tokenizer_characters(tokenizer) -> str:
    """Characters the round-trip check covers: the whole vocabulary of a character tokenizer;
    for bytes, ASCII and multi-byte characters of several scripts."""
    if isinstance(tokenizer, ByteTokenizer):
        return "".join(chr(c) for c in range(32, 127)) + "\n\t\r é ü — “ ” 中文 😀"
    return "".join(tokenizer.vocab)


def tokenizer_files(
    tokenizer: object, context_length: int, lowercase: bool = False
) -> dict[str, dict]:
    """tokenizer.json (for PreTrainedTokenizerFast) and tokenizer_config.json. `lowercase`:
    the model's corpus was lowercased, so its prompts are too (as tinyllm's chat and server do)."""
    writer = TOKENIZER_WRITERS.get(type(tokenizer))
    if writer is None:
        raise ExportError(
            f"the tokenizer {type(tokenizer).__name__} cannot be exported yet "
            f"(supported: {', '.join(t.__name__ for t in TOKENIZER_WRITERS)})"
        )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": context_length,
        # the default cleanup would turn "a ." into "a." when decoding: keep the text exact
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    files = {"tokenizer.json": writer(tokenizer), "tokenizer_config.json": config}
    if lowercase:
        files["tokenizer.json"]["normalizer"] = {"type": "Lowercase"}
    return files
