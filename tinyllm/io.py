"""What every command shares at its edges: crash-safe file writes (a kill at any moment leaves
the old file or the new one, never half), a quiet end when the reader of our output goes away,
the command's name as the user typed it, and a bad argument or a failure said in one line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    """The process umask (read from /proc where it can be, so no other thread sees it change)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    write_atomic_with(path, lambda tmp: tmp.write_bytes(data))


def write_atomic_with(path: Path, write: Callable[[Path], object]) -> None:
    """Let `write` fill a temporary sibling of `path`, fsync it, then rename it over `path`.

    The temporary file is created private (0600); before the rename it gets the mode a plain
    `open` would have given (0644 under umask 022), so colleagues on a shared filesystem can
    read runs, as they could any other file the user writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_marked_section(path: Path, marker: str, body: str) -> None:
    """Put `body` between `<!-- marker: begin -->` and `<!-- marker: end -->` in a Markdown file
    (appended when the markers are not there yet), leaving the rest of the file as it is."""
    path = Path(path)
    begin, end = f"<!-- {marker}: begin -->", f"<!-- {marker}: end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(path, text.encode("utf-8"))


def silence_stdout() -> int:
    """The reader of standard output went away (`| head`): send what is left nowhere, so the
    command stops quietly as command-line tools do (exit 0), not with a BrokenPipeError."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def command_name(installed: str, script: str) -> str:
    """What to tell the user to type for one of tinyllm's commands (usage lines, hints):
    `installed` (tinyllm-chat) when this process was started as an installed tinyllm-* command,
    else `script` (python chat.py)."""
    started_as = Path(sys.argv[0]).name if sys.argv else ""
    return installed if started_as.startswith("tinyllm-") else script


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose refusal is one line (`error: ... (see PROG --help)`, exit 2),
    not the whole usage before it."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: what a
    one-line report quotes of a library's (often multi-line) error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
