"""The console's command grammar: what `/temp 0.5` means, or why a line is not a command.

    parse_command("/temp 0.5")  -> Command("temp", 0.5)        pure; any other text: CommandError

Pure text in, values out: no model, no terminal. The value parsers also check chat.py's
options (VALUE_PARSERS), so a setting is refused with the same message in both places; the
sampling limits they quote are SamplingSettings' (tinyllm.generation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tinyllm.generation import MAX_SEED, MAX_TEMPERATURE, MAX_TOKENS, MAX_TOP_K

MAX_STOP_LENGTH = 200
_MAX_NUMBER_TEXT = 40  # longer "numbers" are refused before parsing

# name: (argument shown in /help, what it does); {unit} is what one token of the model is
COMMANDS: dict[str, tuple[str, str]] = {
    "help": ("", "show this help"),
    "temp": ("X", "temperature, 0 to 100 (0: always the most likely {unit})"),
    "topk": ("K", "sample from the K most likely {unit}s (0 or off: all)"),
    "topp": ("P", "sample from the most likely {unit}s holding P of the mass, 0 < P <= 1 "
                  "(1 or off: all)"),
    "max": ("N", f"at most N new {{unit}}s per reply, 1 to {MAX_TOKENS}"),
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
    return Command(name, VALUE_PARSERS[name](argument, usage))


def parse_number(text: str, kind: type, usage: str):
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


def check_range(value, low, high, usage: str, *, low_open: bool = False):
    below = value <= low if low_open else value < low
    if below or value > high:
        low_text = f"above {low}" if low_open else f"at least {low}"
        raise CommandError(f"{value} is out of range: it must be {low_text} and at most "
                           f"{high} ({usage})")  # fmt: skip
    return value


def _temperature(text: str, usage: str) -> float:
    return check_range(parse_number(text, float, usage), 0.0, MAX_TEMPERATURE, usage)


def _top_k(text: str, usage: str) -> int:
    if text.lower() in _OFF:
        return 0
    return check_range(parse_number(text, int, usage), 0, MAX_TOP_K, usage)


def _top_p(text: str, usage: str) -> float:
    if text.lower() in _OFF:
        return 1.0
    return check_range(parse_number(text, float, usage), 0.0, 1.0, usage, low_open=True)


def _max_tokens(text: str, usage: str) -> int:
    return check_range(parse_number(text, int, usage), 1, MAX_TOKENS, usage)


def _seed(text: str, usage: str) -> int | None:
    if text.lower() in (*_OFF, "random"):
        return None
    return check_range(parse_number(text, int, usage), 0, MAX_SEED, usage)


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


# command: the parser of its value, (text, usage) -> value or CommandError; chat.py's options
# use the same ones
VALUE_PARSERS: dict[str, Callable[[str, str], Any]] = {
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


def help_text(unit: str = "character") -> str:
    """What /help shows: every command, its argument and what it does, in the model's `unit`
    (its tokenizer's: character or byte)."""
    lines = ["commands:"]
    for name, (argument, text) in COMMANDS.items():
        lines.append(f"  /{name} {argument}".ljust(18) + text.replace("{unit}", unit))
    lines.append("  //TEXT".ljust(18) + "a prompt that starts with /")
    return "\n".join(lines)
