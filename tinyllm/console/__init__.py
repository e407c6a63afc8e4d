"""The chat console behind `chat.py` and `tinyllm-chat`.

One job a module:
    commands.py   the command grammar: /commands, their values, escapes (pure text)
    session.py    ChatConsole: one conversation with a model, on a terminal or a pipe
    program.py    the program: options, modes, exit status (main)
"""

from tinyllm.console.commands import (
    COMMANDS,
    Command,
    CommandError,
    decode_escapes,
    is_command,
    parse_command,
)
from tinyllm.console.program import main
from tinyllm.console.session import ChatConsole, model_summary, settings_from_metadata

__all__ = [
    "COMMANDS",
    "ChatConsole",
    "Command",
    "CommandError",
    "decode_escapes",
    "is_command",
    "main",
    "model_summary",
    "parse_command",
    "settings_from_metadata",
]
