"""`tinyllm-export` and `python -m tinyllm.export`: the command line."""

from __future__ import annotations

import sys
from pathlib import Path

from tinyllm.artifacts import ArtifactError
from tinyllm.export.architectures import ExportError, architecture
from tinyllm.export.check import checker
from tinyllm.export.folder import export
from tinyllm.io import OneLineParser


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="tinyllm-export",
        description="Write a model as a Hugging Face transformers folder (safetensors, config, "
        "tokenizer, generation defaults, model card).",
    )
    parser.add_argument("model", help="run folder, its best/ folder, or a .ckpt file")
    parser.add_argument("out_dir", help="folder to write (must not exist or be empty)")
    parser.add_argument(
        "--check", action="store_true",
        help="load the export with transformers and compare logits, greedy text and tokenizer "
        "with tinyllm before publishing it (needs the export extra)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument(
        "--text", type=Path, metavar="FILE",
        help="text for --check (default: the run's validation split, else every vocabulary "
        "character)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    model_path = Path(args.model).expanduser()
    check = None
    if args.check:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print(
                'error: --check needs transformers: pip install -e ".[export]" '
                "(writing the export does not)",
                file=sys.stderr,
            )
            return 2
        check = checker(model_path, args.text)
    try:
        loaded, report = export(model_path, args.out_dir, force=args.force, check=check)
    except (ExportError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temporary folder is already removed
        print(f"interrupted: {args.out_dir} was not written", file=sys.stderr)
        return 130
    name = architecture(loaded.model.config)
    if report is not None:
        print(report.summary())
        if not report.passed:
            print(
                f"check FAILED: the export does not compute what the model does; "
                f"{args.out_dir} was not written",
                file=sys.stderr,
            )
            return 1
    print(f"exported {loaded.path} as {name} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
