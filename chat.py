"""Talk to a trained model: `python chat.py [model]`.

`model` is a run folder, its best/ folder or a .ckpt file; without it, the best model of the
most recent run under outputs/ is used. Each line you enter is continued by the model.
"""

from __future__ import annotations

import argparse
import sys

from tinyllm.artifacts import ArtifactError, load_model
from tinyllm.generation import SamplingSettings, stream_text
from tinyllm.tokenizer import UnknownCharactersError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="run folder, best/ folder or .ckpt file")
    args = parser.parse_args(argv)
    try:
        loaded = load_model(args.model)
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    console = loaded.metadata.get("console", {})
    settings = SamplingSettings(
        max_tokens=console.get("max_tokens", 500),
        temperature=console.get("temperature", 0.8),
        top_k=console.get("top_k", 0),
    )
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"loaded {loaded.path} (val loss {loaded.metadata.get('val_loss')})")
        print("type a prompt and press Enter; Ctrl-D quits")
    while True:
        try:
            prompt = input("> " if interactive else "")
        except EOFError:
            return 0
        if not prompt:
            continue
        try:
            for piece in stream_text(loaded.model, loaded.tokenizer, prompt, settings):
                print(piece, end="", flush=True)
        except UnknownCharactersError as e:
            print(f"{e}; try again without them", file=sys.stderr)
            continue
        print()


if __name__ == "__main__":
    sys.exit(main())
