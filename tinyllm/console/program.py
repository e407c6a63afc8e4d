"""The `chat.py` / `tinyllm-chat` program: its options, and which mode a run is in.

    main(argv)             `python chat.py [MODEL] [--prompt ...]`: terminal, one-shot or pipe

It loads the model, settles the sampling settings (the run's defaults, then the options) and
hands the session to a ChatConsole; it owns the exit status and the process (threads, stream
encodings, Ctrl-C, a closed pipe).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from tinyllm.artifacts import ArtifactError
from tinyllm.console.commands import VALUE_PARSERS, CommandError, check_range, parse_number
from tinyllm.console.session import (
    ChatConsole,
    is_terminal,
    model_summary,
    settings_from_metadata,
    setup_readline,
)
from tinyllm.generation import MAX_TEMPERATURE, MAX_TOKENS
from tinyllm.io import OneLineParser, command_name, first_line, silence_stdout

DESCRIPTION = """\
Talk to a trained model: each line you type is continued by the model, with the conversation
so far as context."""

EPILOG = """\
MODEL is a run folder (its best/ is used), a best/ artifacts folder, or a Lightning .ckpt
(read with weights_only=True). Without MODEL, the most recently written model under ./outputs/
is used: the newest best/ (by its metadata.json, written last) among outputs/runs/*/ and
outputs/multiruns/*/*/ (the folders train.py writes), i.e. the best model of the latest run.
Which model was loaded, its val loss and step are printed.

Modes:
  terminal   an interactive console: /help lists its commands (/temp, /topk, /topp, /max,
             /seed, /stop, /settings, /reset, /load, /quit); Ctrl-C stops a reply, Ctrl-C at
             an empty prompt or Ctrl-D leaves. History in ~/.tinyllm_history (set
             TINYLLM_HISTORY to another file, or to nothing for none).
  --prompt   prints one continuation of the prompt and exits.
  pipe       `echo "JULIET:" | python chat.py MODEL`: each input line is continued on its own
             (no conversation), one continuation per line, each ended by a newline; blank lines
             are skipped; no prompts, banners or colour; notes go to stderr.

Sampling defaults come from the run's console settings (training.console_*); the options
override them. Prompts are continued as typed (no newline is added). Characters the model
does not know are named and dropped.

Exit status: 0 done; 2 no model at the path, a bad option, or nothing left of --prompt;
130 interrupted (--prompt and pipe modes).
"""

PROG = command_name("tinyllm-chat", "chat.py")  # the name the user typed
MAX_THREADS = 1024


def _threads(text: str, usage: str) -> int:
    return check_range(parse_number(text, int, usage), 1, MAX_THREADS, usage)


def _option(parse: Callable[[str, str], Any], name: str):
    """An argparse type for option --`name` from a value parser of the console's commands: the
    same checks and messages as the console."""

    def convert(text: str):
        try:
            return parse(text, f"--{name}")
        except CommandError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    # fmt: off
    add("model", nargs="?", metavar="MODEL",
        help="a run folder, its best/ folder or a .ckpt (default: the newest best model under "
             "--outputs)")
    add("--outputs", metavar="DIR",
        help="where runs live (default: $TINYLLM_OUTPUTS, else outputs/), as paths.log_dir")
    add("--prompt", "-p", metavar="TEXT", help="continue TEXT once, print it and exit")
    add("--max-tokens", "-n", type=_option(VALUE_PARSERS["max"], "max-tokens"), metavar="N",
        help=f"new tokens per reply, 1 to {MAX_TOKENS} (a token is a character, or a byte for "
             "a model with the bytes tokenizer)")
    add("--temperature", "-t", type=_option(VALUE_PARSERS["temp"], "temperature"), metavar="X",
        help=f"0 (greedy) to {MAX_TEMPERATURE:g}")
    add("--top-k", "-k", type=_option(VALUE_PARSERS["topk"], "top-k"), metavar="K",
        help="only the K most likely tokens (0 or off: all)")
    add("--top-p", type=_option(VALUE_PARSERS["topp"], "top-p"), metavar="P",
        help="only the most likely tokens holding P of the probability, 0 < P <= 1")
    add("--seed", "-s", type=_option(VALUE_PARSERS["seed"], "seed"), metavar="N",
        help="seed every reply: the same prompt and seed give the same text")
    add("--stop", type=_option(VALUE_PARSERS["stop"], "stop"), metavar="TEXT",
        help=r"end a reply when the model writes TEXT (not printed); \n, \t, \\ understood")
    add("--threads", type=_option(_threads, "threads"), metavar="N",
        help="CPU threads (default 1, or OMP_NUM_THREADS: one token at a time of a small "
             "model is fastest on one thread, and far faster than several on a busy machine)")
    # fmt: on
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python chat.py ...`; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while loading, or during a --prompt reply (the console's own
        # Ctrl-C ends a reply and stays): the line break ends a reply cut mid-line
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return silence_stdout()
    except OSError as e:  # a full disk, a closed stream
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(f"{PROG}: error: cannot write the reply ({e.strerror or e})", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    closed = [name for name in ("stdin", "stdout") if getattr(sys, name) is None]
    if closed and (args.prompt is None or "stdout" in closed):  # `<&-` or `>&-`
        print(f"{PROG}: error: {' and '.join(closed)} closed: give the console a terminal, "
              "a pipe or a file", file=sys.stderr)  # fmt: skip
        return 2
    import torch

    from tinyllm.artifacts import load_model

    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
    torch.set_num_threads(threads)
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # never die on an undecodable byte
    interactive = args.prompt is None and is_terminal(sys.stdin)

    try:
        loaded = load_model(args.model, outputs_dir=args.outputs)
    except (ArtifactError, OSError) as e:
        print(f"{PROG}: error: {first_line(e)}", file=sys.stderr)
        return 2

    settings, warning = settings_from_metadata(loaded.metadata)
    chosen = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
    settings = settings.updated(**{k: v for k, v in chosen.items() if v is not None})

    if interactive:
        console = ChatConsole(loaded, settings, interactive=True)
        if warning:
            console.say(warning, "yellow")
        setup_readline()
        return console.run()

    console = ChatConsole(loaded, settings, messages=sys.stderr, interactive=False)
    if warning:
        console.say(warning)
    if args.model is None:  # the model was chosen for the user: say which, on stderr
        console.say(f"model: {model_summary(loaded)}")
    if args.prompt is not None:
        return 0 if console.reply(args.prompt, remember=False) is not None else 2
    for line in sys.stdin:
        line = line.rstrip("\n").removesuffix("\r")
        if not line.strip():
            continue
        if console.reply(line, remember=False) is None:
            console.out.write("\n")  # keep one output line per input line
            console.out.flush()
    return 0
