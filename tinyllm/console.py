"""The chat console behind `chat.py` and `tinyllm-chat`: commands, conversation, streaming
replies, Ctrl-C, and the command line (`main`).

    parse_command("/temp 0.5")  -> Command("temp", 0.5)        pure; any other text: CommandError
    ChatConsole(loaded, settings, ...)
        .handle(line)      one line of the interactive console (a prompt or a /command)
        .run()             the interactive loop (readline editing and history)
        .reply(prompt)     stream one continuation (used by every mode)
    main(argv)             `python chat.py [MODEL] [--prompt ...]`: terminal, one-shot or pipe

The console keeps the conversation so far (prompts and replies, as shown) and gives it to the
model as the context of the next reply; the model sees its last `context_length` characters.
Generation goes through `tinyllm.generation.stream_text`, the path every caller shares.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tinyllm.artifacts import ArtifactError, LoadedModel
from tinyllm.generation import (
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOKENS,
    MAX_TOP_K,
    SamplingSettings,
    split_unknown,
    stream_text,
)

# --- limits ----------------------------------------------------------------------------------

# the sampling limits live with SamplingSettings, their one validator
MAX_TOKENS_LIMIT = MAX_TOKENS
MAX_STOP_LENGTH = 200
_MAX_NUMBER_TEXT = 40  # longer "numbers" are refused before parsing

PROMPT = "> "
HISTORY_ENV = "TINYLLM_HISTORY"  # history file; empty: no history file
DEFAULT_HISTORY = "~/.tinyllm_history"

# --- the command parser -----------------------------------------------------------------------

# name: (argument shown in /help, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("", "show this help"),
    "temp": ("X", "temperature, 0 to 100 (0: always the most likely character)"),
    "topk": ("K", "sample from the K most likely characters (0 or off: all)"),
    "topp": ("P", "sample from the most likely characters holding P of the mass, 0 < P <= 1 "
                  "(1 or off: all)"),
    "max": ("N", f"at most N new characters per reply, 1 to {MAX_TOKENS_LIMIT}"),
    "seed": ("N|off", "seed every reply (same context and seed, same text); off: random"),
    "stop": ("TEXT|off", r"end a reply when the model writes TEXT (not shown); \n \t \\ "
                         r'understood (/stop \n\n: at a blank line); quote spaces: /stop " "'),
    "settings": ("", "show the current settings"),
    "reset": ("", "forget the conversation so far"),
    "load": ("PATH", "load another model: a run folder, its best/ folder or a .ckpt"),
    "quit": ("", "leave (Ctrl-D, or Ctrl-C at an empty prompt, too)"),
}  # fmt: skip
ALIASES = {
    "temperature": "temp",
    "top-k": "topk",
    "top_k": "topk",
    "top-p": "topp",
    "top_p": "topp",
    "max-tokens": "max",
    "max_tokens": "max",
    "exit": "quit",
    "q": "quit",
    "h": "help",
    "?": "help",
}
_OFF = ("off", "none")


class CommandError(ValueError):
    """A line that is not a valid command; the message says why and what would be."""


@dataclass(frozen=True)
class Command:
    name: str  # a key of COMMANDS
    value: Any = None  # the parsed argument; None for commands without one (and for "off")


def is_command(line: str) -> bool:
    """Lines starting with / are commands, except `//...`: a prompt starting with one `/`."""
    text = line.lstrip()
    return text.startswith("/") and not text.startswith("//")


def command_list() -> str:
    return ", ".join(f"/{name}" for name in COMMANDS)


def _show(text: str, limit: int = 30) -> str:
    """User text quoted for a message: cut short, control characters escaped."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_command(text: str) -> Command:
    """Parse one console command. Raises CommandError (and nothing else) for any bad text."""
    if not isinstance(text, str):
        raise CommandError("a command must be text")
    stripped = text.strip()
    if not stripped.startswith("/"):
        raise CommandError(f"commands start with /; the commands are {command_list()}")
    parts = stripped[1:].split(None, 1)
    if not parts:
        raise CommandError(f"no command after /; the commands are {command_list()}")
    word = parts[0].lower()
    argument = parts[1].strip() if len(parts) > 1 else ""
    name = ALIASES.get(word, word)
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{_show(word)[1:-1]}; the commands are "
                           f"{command_list()} (/help explains them)")  # fmt: skip
    usage = f"/{name} {COMMANDS[name][0]}".rstrip()
    if not COMMANDS[name][0]:
        if argument:
            raise CommandError(f"/{name} takes no value (got {_show(argument)})")
        return Command(name)
    if not argument:
        raise CommandError(f"/{name} needs a value: {usage}")
    return Command(name, _VALUE_PARSERS[name](argument, usage))


def _number(text: str, kind: type, usage: str):
    what = "a whole number" if kind is int else "a number"
    if len(text) > _MAX_NUMBER_TEXT:
        raise CommandError(f"{_show(text)} is too long to be {what}: {usage}")
    try:
        value = kind(text)
    except (ValueError, TypeError, OverflowError):
        raise CommandError(f"{_show(text)} is not {what}: {usage}") from None
    if kind is float and not math.isfinite(value):
        raise CommandError(f"{_show(text)} is not a finite number: {usage}")
    return value


def _in_range(value, low, high, usage: str, *, low_open: bool = False):
    below = value <= low if low_open else value < low
    if below or value > high:
        low_text = f"above {low}" if low_open else f"at least {low}"
        raise CommandError(f"{value} is out of range: it must be {low_text} and at most "
                           f"{high} ({usage})")  # fmt: skip
    return value


def _temperature(text: str, usage: str) -> float:
    return _in_range(_number(text, float, usage), 0.0, MAX_TEMPERATURE, usage)


def _top_k(text: str, usage: str) -> int:
    if text.lower() in _OFF:
        return 0
    return _in_range(_number(text, int, usage), 0, MAX_TOP_K, usage)


def _top_p(text: str, usage: str) -> float:
    if text.lower() in _OFF:
        return 1.0
    return _in_range(_number(text, float, usage), 0.0, 1.0, usage, low_open=True)


def _max_tokens(text: str, usage: str) -> int:
    return _in_range(_number(text, int, usage), 1, MAX_TOKENS_LIMIT, usage)


def _seed(text: str, usage: str) -> int | None:
    if text.lower() in (*_OFF, "random"):
        return None
    return _in_range(_number(text, int, usage), 0, MAX_SEED, usage)


def _stop(text: str, usage: str) -> str | None:
    if text.lower() in _OFF:
        return None
    stop = decode_escapes(_unquote(text))
    if not stop:
        raise CommandError(f"the stop text is empty: {usage} (or /stop off)")
    if len(stop) > MAX_STOP_LENGTH:
        raise CommandError(f"the stop text is {len(stop)} characters; at most "
                           f"{MAX_STOP_LENGTH} please")  # fmt: skip
    return stop


def _path(text: str, usage: str) -> str:
    path = _unquote(text)
    if not path.strip() or "\0" in path:
        raise CommandError(f"{_show(text)} is not a path: {usage}")
    return path


_VALUE_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "temp": _temperature,
    "topk": _top_k,
    "topp": _top_p,
    "max": _max_tokens,
    "seed": _seed,
    "stop": _stop,
    "load": _path,
}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


_HEX = "0123456789abcdefABCDEF"
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def decode_escapes(text: str) -> str:
    r"""`\n`, `\t`, `\r`, `\\`, `\"`, `\'`, `\0`, `\xHH` and `\uHHHH` as in Python strings.

    Raises CommandError for any other backslash sequence, so a typo is not taken literally.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        if i + 1 == len(text):
            raise CommandError(r"a lone \ ends the text: write \\ for a backslash")
        code = text[i + 1]
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
            i += 2
            continue
        width = {"x": 2, "u": 4}.get(code)
        digits = text[i + 2 : i + 2 + width] if width else ""
        if not width or len(digits) != width or not all(d in _HEX for d in digits):
            raise CommandError(
                f"unknown escape {_show(text[i : i + 2 + (width or 0)])}: use \\n, \\t, \\r, "
                r"\\, \xHH or \uHHHH"
            )
        out.append(chr(int(digits, 16)))
        i += 2 + width
    return "".join(out)


def describe_stop(stop: str | None) -> str:
    return "off" if not stop else repr(stop)


# --- the console ------------------------------------------------------------------------------


# command: (SamplingSettings field, its label in /settings)
_SETTING_OF = {
    "temp": ("temperature", "temperature"),
    "topk": ("top_k", "top-k"),
    "topp": ("top_p", "top-p"),
    "max": ("max_tokens", "max tokens"),
    "seed": ("seed", "seed"),
    "stop": ("stop", "stop"),
}


def settings_rows(settings: SamplingSettings) -> list[tuple[str, str]]:
    """(label, value) for each sampling setting, as /settings shows them."""
    greedy = " (greedy)" if settings.temperature == 0 else ""
    return [
        ("temperature", f"{settings.temperature:g}{greedy}"),
        ("top-k", str(settings.top_k) + (" (off)" if settings.top_k == 0 else "")),
        ("top-p", f"{settings.top_p:g}" + (" (off)" if settings.top_p >= 1 else "")),
        ("max tokens", str(settings.max_tokens)),
        ("seed", "off (random)" if settings.seed is None else str(settings.seed)),
        ("stop", describe_stop(settings.stop)),
    ]


def model_summary(loaded: LoadedModel) -> str:
    meta = loaded.metadata or {}
    loss = meta.get("val_loss")
    loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "n/a"
    step = meta.get("step")
    config = loaded.model.config
    return (
        f"{loaded.path} (val loss {loss_text}, step {step if step is not None else 'n/a'}; "
        f"{loaded.model.num_parameters():,} parameters, context {config.context_length}, "
        f"{loaded.tokenizer.vocab_size} {_token_unit(loaded.tokenizer)})"
    )


def _token_unit(tokenizer) -> str:
    return "byte values" if getattr(tokenizer, "kind", "chars") == "bytes" else "characters"


def settings_from_metadata(metadata: dict | None) -> tuple[SamplingSettings, str | None]:
    """The run's console defaults (metadata `console` block), or the library's with a warning."""
    block = (metadata or {}).get("console") or {}
    if not isinstance(block, dict):
        return SamplingSettings(), "the model's console settings are not a mapping; using defaults"
    known = {k: block[k] for k in ("max_tokens", "temperature", "top_k") if k in block}
    try:
        return SamplingSettings(**known), None
    except (TypeError, ValueError) as e:
        return SamplingSettings(), f"the model's console settings are invalid ({e}); using defaults"


def _control_character_table(vocab: Iterable[str]) -> dict[int, str]:
    """Show control characters of the vocabulary (other than newline and tab) escaped, so a
    model cannot send terminal escape sequences."""
    return {
        ord(c): repr(c)[1:-1]
        for c in vocab
        if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
    }


class _AnyControlCharacter(dict):
    """`_control_character_table` for a tokenizer that can write any character (bytes): filled
    as characters show up, so `str.translate` escapes every control character."""

    def __init__(self) -> None:
        super().__init__(_control_character_table(chr(code) for code in range(128)))

    def __missing__(self, code: int) -> str:
        shown = _control_character_table([chr(code)]).get(code)
        if shown is None:
            raise LookupError(code)  # str.translate: leave the character as it is
        self[code] = shown
        return shown


class ChatConsole:
    """One chat session: a model, sampling settings and the conversation so far.

    `out` gets the generated text (and, when `messages` is not given, every message too);
    `messages` gets notes and errors. `interactive` enables the banner and commands' output.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: SamplingSettings,
        *,
        out: TextIO | None = None,
        messages: TextIO | None = None,
        interactive: bool = True,
        load: Callable[[str], LoadedModel] | None = None,
    ):
        self.out = out or sys.stdout
        self.messages = messages or self.out
        self.interactive = interactive
        self.settings = settings
        self.conversation = ""
        self._load = load
        self._interrupted = False
        self._rich = _rich_console(self.messages) if interactive else None  # plain for scripts
        self._use(loaded)

    # --- state ---

    def _use(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.context_length = loaded.model.config.context_length
        vocab = getattr(loaded.tokenizer, "vocab", None)  # a byte tokenizer has none
        table = _AnyControlCharacter() if vocab is None else _control_character_table(vocab)
        self._display = table if _isatty(self.out) else {}
        self.conversation = ""

    def reset(self) -> None:
        self.conversation = ""

    # --- output ---

    def say(self, text: str, style: str | None = None) -> None:
        if self._rich is not None:
            from rich.text import Text

            self._rich.print(Text(text, style=style or ""), soft_wrap=True)
        else:
            self.messages.write(text + "\n")
            self.messages.flush()

    def error(self, text: str) -> None:
        self.say(text, "bold red")

    def banner(self) -> None:
        self.say(f"tinyllm chat · model {model_summary(self.loaded)}", "bold")
        self.say(
            "Type a prompt and press Enter: the model continues it, with the conversation so "
            "far as context. /help lists the commands; Ctrl-C stops a reply; Ctrl-D leaves.",
            "dim",
        )

    def show_help(self) -> None:
        lines = ["commands:"]
        for name, (argument, text) in COMMANDS.items():
            lines.append(f"  /{name} {argument}".ljust(18) + text)
        lines.append("  //TEXT".ljust(18) + "a prompt that starts with /")
        self.say("\n".join(lines))

    def show_settings(self) -> None:
        rows = settings_rows(self.settings) + [
            ("model", str(self.loaded.path)),
            ("conversation", f"{len(self.conversation)} characters "
                             f"(the model sees the last {self.context_length})"),
        ]  # fmt: skip
        if self._rich is not None and self._rich.is_terminal:
            from rich.table import Table

            table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for key, value in rows:
                table.add_row(key, value)
            self._rich.print(table)
        else:
            self.say("\n".join(f"{key:<13} {value}" for key, value in rows))

    # --- one line of the interactive console ---

    def handle(self, line: str) -> bool:
        """Act on one line; False when the session should end."""
        if is_command(line):
            try:
                command = parse_command(line)
            except CommandError as e:
                self.error(str(e))
                return True
            return self.execute(command)
        text = line.lstrip()[1:] if line.lstrip().startswith("//") else line
        if text.strip():
            self.reply(text)
        return True

    def execute(self, command: Command) -> bool:
        name, value = command.name, command.value
        if name == "quit":
            return False
        if name == "help":
            self.show_help()
        elif name == "settings":
            self.show_settings()
        elif name == "reset":
            count = len(self.conversation)
            self.reset()
            self.say(f"conversation forgotten ({count} characters); the next prompt starts afresh")
        elif name == "load":
            self.load(value)
        else:
            field, label = _SETTING_OF[name]
            self.settings = self.settings.updated(**{field: value})
            self.say(f"{label} set to {dict(settings_rows(self.settings))[label]}")
            if name == "stop" and value:
                missing = self.loaded.tokenizer.unknown_characters(value)
                if missing:
                    shown = ", ".join(repr(c) for c in missing)
                    self.say(f"note: the model never writes {shown}, so this stop text "
                             "cannot occur", "yellow")  # fmt: skip
        return True

    def load(self, path: str) -> None:
        if self._load is None:
            from tinyllm.artifacts import load_model as loader
        else:
            loader = self._load
        try:
            loaded = loader(path)
        except (ArtifactError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.error(f"cannot load {path}: {reason}; still using the current model")
            return
        self._use(loaded)
        self.say(f"loaded {model_summary(loaded)}; conversation reset, settings kept")

    # --- generation ---

    def clean_prompt(self, text: str) -> str:
        """`text` without characters outside the vocabulary, naming those it drops."""
        if not text:
            self.say("the prompt is empty; type some text", "yellow")
            return ""
        kept, dropped = split_unknown(self.loaded.tokenizer, text)
        if dropped:
            shown = ", ".join(repr(c) for c in dropped[:20])
            more = f" and {len(dropped) - 20} more" if len(dropped) > 20 else ""
            self.say(f"dropped characters the model does not know: {shown}{more}", "yellow")
            if not kept:
                self.say("nothing is left of the prompt; type another one", "yellow")
        return kept

    def _join(self, prompt: str) -> str:
        """The conversation so far followed by `prompt`, on a new line as on the screen."""
        if not self.conversation or self.conversation.endswith("\n"):
            return self.conversation + prompt
        separator = "" if self.loaded.tokenizer.unknown_characters("\n") else "\n"
        return self.conversation + separator + prompt

    def reply(self, prompt: str, *, remember: bool = True) -> str | None:
        """Stream the continuation of (the conversation and) `prompt` to `out`, ended by a
        newline. Returns the text shown, or None when nothing was left of the prompt."""
        prompt = self.clean_prompt(prompt)
        if not prompt:
            return None
        context = self._join(prompt) if remember else prompt
        context = context[-self.context_length :] if remember else context
        text, interrupted = self._stream(context)
        if not text.endswith("\n"):
            self.out.write("\n")
            self.out.flush()
        if interrupted:
            self.say(f"[stopped after {len(text)} characters]", "dim")
        if remember:
            self.conversation = (context + text)[-self.context_length :]
        return text

    def _stream(self, context: str) -> tuple[str, bool]:
        shown: list[str] = []
        pieces = stream_text(self.loaded.model, self.loaded.tokenizer, context, self.settings)
        interrupted = False
        try:
            with self._interrupt_flag():
                for piece in pieces:
                    if self._interrupted:
                        interrupted = True
                        break
                    self.out.write(piece.translate(self._display) if self._display else piece)
                    self.out.flush()
                    shown.append(piece)
        except KeyboardInterrupt:
            if not self.interactive:
                raise  # a script's Ctrl-C ends the program
            interrupted = True  # the flag could not be installed (not the main thread)
        finally:
            pieces.close()
        return "".join(shown), interrupted

    @contextmanager
    def _interrupt_flag(self):
        """While generating, Ctrl-C sets a flag checked between characters, so it always stops
        the reply cleanly, never half-way through writing one."""
        self._interrupted = False
        if not self.interactive or threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum, frame):
            self._interrupted = True

        previous = signal.signal(signal.SIGINT, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # --- the interactive loop ---

    def run(self, read: Callable[[str], str] = input) -> int:
        """Prompt, read and answer until /quit, Ctrl-D or Ctrl-C at an empty prompt: 0."""
        self.banner()
        while True:
            try:
                line = read(PROMPT)
            except EOFError:
                self.out.write("\n")
                self.out.flush()
                return 0
            except KeyboardInterrupt:
                self.out.write("\n")
                self.out.flush()
                if _line_buffer():
                    continue  # Ctrl-C with text typed: drop the line, ask again
                return 0
            try:
                if not self.handle(line):
                    return 0
            except KeyboardInterrupt:  # e.g. while /load reads a file
                self.out.write("\n")
                self.error("interrupted")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich_console(stream: TextIO):
    """A Rich console for messages on a terminal (colour unless NO_COLOR), else None."""
    if not _isatty(stream):
        return None
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich is a dependency
        return None
    return Console(file=stream, highlight=False, emoji=False, markup=False)


def _line_buffer() -> str:
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        return ""
    return readline.get_line_buffer()


def setup_readline(history: str | None = None) -> None:
    """Line editing, /command completion and a history file (silently skipped if unusable)."""
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        return
    names = [f"/{name}" for name in COMMANDS]

    def complete(text: str, state: int) -> str | None:
        if readline.get_begidx() != 0:
            return None
        matches = [n + " " for n in names if n.startswith(text)]
        return matches[state] if state < len(matches) else None

    readline.set_completer_delims(" \t\n")
    readline.set_completer(complete)
    if "libedit" in (readline.__doc__ or ""):  # macOS's readline
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    if history is None:
        history = os.environ.get(HISTORY_ENV, DEFAULT_HISTORY)
    if not history:
        return
    path = Path(history).expanduser()
    with suppress(OSError, ValueError):
        readline.read_history_file(path)
    readline.set_history_length(1000)

    import atexit

    def save() -> None:
        with suppress(OSError, ValueError):
            readline.write_history_file(path)

    atexit.register(save)


# --- the command line -------------------------------------------------------------------------

DESCRIPTION = """\
Talk to a trained model: each line you type is continued by the model, with the conversation
so far as context."""

EPILOG = """\
MODEL is a run folder (its best/ is used), a best/ artifacts folder, or a Lightning .ckpt
(read with weights_only=True). Without MODEL, the most recently written model under ./outputs/
is used: the newest best/model.safetensors among outputs/runs/*/ and outputs/multiruns/*/*/
(the folders train.py writes) by modification time, i.e. the best model of the latest run.
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


def _option(parse: Callable[[str, str], Any], name: str):
    """An argparse type from a command's value parser: the same checks and messages."""

    def convert(text: str):
        try:
            return parse(text, f"--{name}")
        except CommandError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{value} is out of range: 1 to 1024")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat.py",
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
    add("--max-tokens", "-n", type=_option(_max_tokens, "max-tokens"), metavar="N",
        help=f"new characters per reply, 1 to {MAX_TOKENS_LIMIT}")
    add("--temperature", "-t", type=_option(_temperature, "temperature"), metavar="X",
        help=f"0 (greedy) to {MAX_TEMPERATURE:g}")
    add("--top-k", "-k", type=_option(_top_k, "top-k"), metavar="K",
        help="only the K most likely characters (0 or off: all)")
    add("--top-p", type=_option(_top_p, "top-p"), metavar="P",
        help="only the most likely characters holding P of the probability, 0 < P <= 1")
    add("--seed", "-s", type=_option(_seed, "seed"), metavar="N",
        help="seed every reply: the same prompt and seed give the same text")
    add("--stop", type=_option(_stop, "stop"), metavar="TEXT",
        help=r"end a reply when the model writes TEXT (not printed); \n, \t, \\ understood")
    add("--threads", type=_threads, metavar="N",
        help="CPU threads (default 1, or OMP_NUM_THREADS: one character at a time of a small "
             "model is fastest on one thread, and far faster than several on a busy machine)")
    # fmt: on
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python chat.py ...`; returns the exit status."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as command-line tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from tinyllm.artifacts import load_model

    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
    torch.set_num_threads(threads)
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # never die on an undecodable byte
    interactive = args.prompt is None and _isatty(sys.stdin)

    try:
        loaded = load_model(args.model, outputs_dir=args.outputs)
    except (ArtifactError, OSError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"chat.py: error: {text}", file=sys.stderr)
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
