"""Ctrl-C and SIGTERM before training starts: the imports, the checks, Hydra's set-up and the
corpus's preparation, before the FaultGuard callback takes both signals over (it then finishes
the step, validates, saves and says how to resume). Free of Lightning: `train_main` (cli.py)
watches from its first line, before the training code loads (seconds of imports). Also the
Ctrl-C of the commands that do not train (RememberedCtrlC, eval.py).
"""

from __future__ import annotations

import contextlib
import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal
_SAID = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

_state: dict = {"signal": None, "training": False, "hook": sys.unraisablehook}


class InterruptedBeforeTraining(BaseException):
    """A signal before training started: nothing was saved; train.py says so in one line and
    exits 128 + the signal. A BaseException, so no `except Exception` on its way swallows it; not
    a KeyboardInterrupt, which Lightning (2.6) turns into `sys.exit(1)`."""

    def __init__(self, signum: int):
        self.exit_code = EXIT_CODES[signum]
        super().__init__(
            f"interrupted ({_SAID[signum]}) before training started: nothing was saved"
        )


def watch_until_training() -> None:
    """From now until `training_starts`, Ctrl-C and SIGTERM raise InterruptedBeforeTraining
    (SIGTERM would otherwise end the process without a word). Each is also remembered: Python
    drops an exception raised inside a destructor (it prints "Exception ignored in ..." and goes
    on), and a signal dropped so is taken up when training starts."""
    _state.update(signal=None, training=False)
    for signum in EXIT_CODES:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signum, _before_training)
    if sys.unraisablehook is not _unraisable:
        _state["hook"] = sys.unraisablehook
        sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
    """Python's report of an exception it dropped, except ours: no traceback for a signal that
    training will act on anyway."""
    if not isinstance(unraisable.exc_value, InterruptedBeforeTraining):
        _state["hook"](unraisable)


def _before_training(signum: int, frame) -> None:
    if _state["training"]:  # put back by Lightning's teardown once training is over
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(EXIT_CODES[signum])
    _state["signal"] = signum
    raise InterruptedBeforeTraining(signum)


def interrupted_line() -> str:
    """What a Ctrl-C that reached the entry point (a KeyboardInterrupt) interrupted."""
    if _state["training"]:  # after FaultGuard's part: the checkpoints and best/ are written
        return "interrupted (Ctrl-C) after training ended: what the run saved is kept"
    return str(InterruptedBeforeTraining(signal.SIGINT))


def training_starts() -> int | None:
    """Training starts (FaultGuard handles the signals from here): the signal that arrived
    before and was dropped on its way, if any, for FaultGuard to act on as if it came now."""
    _state["training"] = True
    dropped, _state["signal"] = _state["signal"], None
    return dropped


class RememberedCtrlC:
    """From now on, Ctrl-C (and the other `signals` given) raises KeyboardInterrupt as usual and
    is remembered, so an error a library makes of it (OmegaConf, interrupted half-way through a
    merge, reports a broken config), or one it swallows, is still taken for the interruption it
    was."""

    def __init__(self, *signals: int) -> None:
        self.pressed = False
        for signum in signals or (signal.SIGINT,):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                signal.signal(signum, self._pressed)

    def _pressed(self, signum, frame) -> None:
        self.pressed = True
        raise KeyboardInterrupt
