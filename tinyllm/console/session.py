"""One chat session: a model, its sampling settings and the conversation so far, shown on a
terminal or written plainly for scripts and pipes.

    ChatConsole(loaded, settings, ...)
        .handle(line)      one line of the interactive console (a prompt or a /command)
        .run()             the interactive loop (readline editing and history)
        .reply(prompt)     stream one continuation (used by every mode)

The console keeps the conversation so far (prompts and replies, as shown) and gives it to the
model as the context of the next reply; the model sees its last `context_length` characters.
Generation goes through `tinyllm.generation.stream_text`, the path every caller shares.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

from tinyllm.artifacts import ArtifactError, LoadedModel
from tinyllm.console.commands import (
    COMMANDS,
    Command,
    CommandError,
    describe_stop,
    help_text,
    is_command,
    parse_command,
)
from tinyllm.generation import SamplingSettings, split_unknown, stream_text
from tinyllm.io import first_line

PROMPT = "> "
HISTORY_ENV = "TINYLLM_HISTORY"  # history file; empty: no history file
DEFAULT_HISTORY = "~/.tinyllm_history"

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
        f"{loaded.tokenizer.vocab_size} {loaded.tokenizer.vocab_unit})"
    )


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
        self._display = table if is_terminal(self.out) else {}
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
        self.say(help_text(self.loaded.tokenizer.unit))

    def show_settings(self) -> None:
        rows = settings_rows(self.settings) + [
            ("model", str(self.loaded.path)),
            ("conversation", f"{len(self.conversation)} characters "
                             f"(the model sees the last {self.context_length} "
                             f"{self.loaded.tokenizer.unit}s)"),
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
            self.error(f"cannot load {path}: {first_line(e)}; still using the current model")
            return
        self._use(loaded)
        self.say(f"loaded {model_summary(loaded)}; conversation reset, settings kept")

    # --- generation ---

    def clean_prompt(self, text: str) -> str:
        """`text` without characters outside the vocabulary, naming those it drops."""
        if not text:
            self.say("the prompt is empty; type some text", "yellow")
            return ""
        kept, dropped = split_unknown(self.loaded.tokenizer, text, lowercase=self.loaded.lowercase)
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


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal; False for streams without one (closed, StringIO)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _rich_console(stream: TextIO):
    """A Rich console for messages on a terminal (colour unless NO_COLOR), else None."""
    if not is_terminal(stream):
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
