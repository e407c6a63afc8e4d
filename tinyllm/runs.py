"""Where runs live: the folder under which they go, a fresh folder for each, a lock while one
trains in it, and finding the newest. Every command asks here, so moving the outputs
(`paths.log_dir=...` or the TINYLLM_OUTPUTS environment variable) moves them for all of them.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

OUTPUTS_ENV = "TINYLLM_OUTPUTS"
LOCK_FILE = ".lock"
RUN_CONFIG = "config.yaml"  # the resolved config train.py writes into each run folder
CHECKPOINT_DIR = "checkpoints"  # a run's Lightning checkpoints: <run>/checkpoints/*.ckpt
LAST_CHECKPOINT = "last.ckpt"  # the one `resume=` continues from


class RunFolderError(ValueError):
    """A run folder cannot be used; the message says why and what to do."""


class CheckpointError(RunFolderError):
    """A checkpoint cannot be resumed from; the message says which and what to do."""


def default_log_dir(root_dir: str | Path = ".") -> Path:
    """Where runs go when nothing else is said: $TINYLLM_OUTPUTS, else `<root_dir>/outputs`."""
    return Path(os.environ.get(OUTPUTS_ENV) or Path(root_dir) / "outputs")


def run_folders(log_dir: str | Path) -> Iterator[Path]:
    """The folders train.py makes under `log_dir` (runs/<time>/ and multiruns/<time>/<job>/),
    none reached through a link that leads out of `log_dir`."""
    log_dir = Path(log_dir)
    root = log_dir.resolve()
    for folder in (*log_dir.glob("runs/*"), *log_dir.glob("multiruns/*/*")):
        if folder.is_dir() and not folder.is_symlink() and root in folder.resolve().parents:
            yield folder


def newest_with(log_dir: str | Path, relative: str) -> Path | None:
    """The run folder whose file `relative` (e.g. checkpoints/last.ckpt) was written last."""
    found = [
        folder
        for folder in run_folders(log_dir)
        if (folder / relative).is_file() and not (folder / relative).is_symlink()
    ]
    return max(found, key=lambda f: (f / relative).stat().st_mtime) if found else None


def find_run_config(model_path: str | Path) -> Path | None:
    """The config.yaml of the run a model came from (run folder, best/ or checkpoints/x.ckpt)."""
    model_path = Path(model_path).resolve()
    folder = model_path.parent if model_path.is_file() else model_path
    for candidate in (folder, folder.parent):
        if (candidate / RUN_CONFIG).is_file():
            return (candidate / RUN_CONFIG).resolve()
    return None


def read_yaml(path: Path) -> object:
    """A run's YAML file (config.yaml, .hydra/*.yaml) as data, or None where it is missing or
    damaged: what a command takes from it is then left to the command line or a default."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def is_own_checkpoint(checkpoint: str | Path, run_dir: str | Path) -> bool:
    """Whether a run continues from a checkpoint of its own folder (resume=), rather than
    starting anew from another run's (ckpt_path=): a new run trains and scores on its own."""
    return Path(checkpoint).resolve().is_relative_to(Path(run_dir).resolve())


# --- a folder of its own for every run ------------------------------------------------------

_made: dict[str, str] = {}
_made_parents: list[Path] = []  # the folders above them that unique_folder made


def unique_folder(path: str) -> str:
    """`${tinyllm.unique:...}`: create `path`, or `path_2`, `path_3`, ... if it exists.

    Two runs started in the same second (a shell loop, a job array) name the same `<time>`
    folder; creating it exclusively gives each its own. The same process asking again gets the
    folder it made (Hydra resolves the run folder more than once). Hydra also resolves a run
    folder that a later config replaces (`debug=` puts runs under debug/): what this process
    made and left empty is removed when it exits.
    """
    if path in _made:
        return _made[path]
    if not _made:
        atexit.register(_remove_unused)
    parent = Path(path).parent
    _made_parents.extend(missing_folders(parent))
    parent.mkdir(parents=True, exist_ok=True)
    candidate, n = path, 1
    while True:
        try:
            os.mkdir(candidate)
            break
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"
    _made[path] = candidate
    return candidate


# what a new run writes before it trains: its settings, its log, its config and tokenizer
_START_FILES = {".hydra", "train.log", RUN_CONFIG, "tokenizer.json", LOCK_FILE}
_new_run_folders: list[Path] = []  # named by hydra.run.dir=, and not there before this run


def new_run_folder(folder: Path, parents: list[Path]) -> None:
    """`folder` (hydra.run.dir=) and `parents` above it do not exist yet: this run makes them,
    and may take them back."""
    _new_run_folders.append(folder)
    _made_parents.extend(parents)


def take_back(folder: str | Path) -> None:
    """A new run refused before training (a corpus or checkpoint it cannot use, said in one
    line) leaves no run folder, as one refused before Hydra started: only a folder this process
    made, and only while it holds nothing but what the start wrote."""
    folder = Path(folder).resolve()
    if folder not in {Path(made).resolve() for made in [*_made.values(), *_new_run_folders]}:
        return
    with contextlib.suppress(OSError):
        if not {p.name for p in folder.iterdir()} <= _START_FILES:
            return
        for path in folder.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        remove_empty([folder, *_made_parents])


def _remove_unused() -> None:
    remove_empty([*map(Path, _made.values()), *_made_parents])


def missing_folders(path: Path) -> list[Path]:
    """`path` and the folders above it that do not exist yet, deepest first: what a
    `mkdir(parents=True)` of it makes, for `remove_empty` to take back."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove each folder that is empty, in order; one that is not (a run wrote in it, another
    run made its folder there) or is gone stays as it is."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


# --- one live run per folder ----------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """`<run>/.lock` while a run trains there: a second run in the same folder is refused.

    The lock names its process and host; a lock left by a process of this host that no longer
    exists (killed, crashed) is stale and taken over. A lock from another host cannot be
    checked, so it is reported with how to remove it.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def acquire(self) -> RunLock:
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._check_holder()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            self.held = True
            return self
        raise RunFolderError(f"cannot lock {self.path.parent}: remove {self.path} and try again")

    def _check_holder(self) -> None:
        """Remove a stale lock; refuse a live one."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, socket.gethostname()  # torn: its writer died
        if host == socket.gethostname() and (pid < 0 or not _alive(pid)):
            self.path.unlink(missing_ok=True)
            return
        since = time.strftime("%H:%M:%S", time.localtime(holder.get("started", 0)))
        where = "" if host == socket.gethostname() else f" on {host}"
        raise RunFolderError(
            f"run folder {self.path.parent} is in use by process {pid}{where} (since {since}): "
            "wait for that run to end, or train in another folder (leave hydra.run.dir unset "
            f"for a new one); if it is no longer running, delete {self.path}"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
