"""tinyllm: train a small character-level transformer with Lightning + Hydra, then chat with it."""

import tinyllm.config  # noqa: F401  (registers the config's ${tinyllm.precision:} resolver)
from tinyllm.artifacts import LoadedModel, load_model
from tinyllm.generation import SamplingSettings, generate_text, stream_text
from tinyllm.model import ModelConfig, Transformer
from tinyllm.tokenizer import ByteTokenizer, CharacterTokenizer

__version__ = "0.1.0"

__all__ = [
    "ByteTokenizer",
    "CharacterTokenizer",
    "LoadedModel",
    "ModelConfig",
    "SamplingSettings",
    "Transformer",
    "generate_text",
    "load_model",
    "stream_text",
]
