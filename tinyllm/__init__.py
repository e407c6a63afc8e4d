"""tinyllm: train a small character-level transformer with Lightning + Hydra, then chat with it.

The names below load on first use (PEP 562): `import tinyllm` stays cheap, and a command's
start-up (torch takes seconds to import) happens inside its own Ctrl-C handling.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_HOMES = {
    "ByteTokenizer": "tinyllm.tokenizer",
    "CharacterTokenizer": "tinyllm.tokenizer",
    "LoadedModel": "tinyllm.artifacts",
    "ModelConfig": "tinyllm.model",
    "SamplingSettings": "tinyllm.generation",
    "Transformer": "tinyllm.model",
    "generate_text": "tinyllm.generation",
    "load_model": "tinyllm.artifacts",
    "stream_text": "tinyllm.generation",
}

__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from tinyllm.artifacts import LoadedModel, load_model  # noqa: F401
    from tinyllm.generation import SamplingSettings, generate_text, stream_text  # noqa: F401
    from tinyllm.model import ModelConfig, Transformer  # noqa: F401
    from tinyllm.tokenizer import ByteTokenizer, CharacterTokenizer  # noqa: F401


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'tinyllm' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
