"""Everything that hooks into the Trainer, one callback a file.

Chosen in configs/callbacks/ (switch one off with `~callbacks.<name>`):
    SampleTextCallback    sample_text.py         text samples in the log and TensorBoard
    BestArtifactsCallback best_artifacts.py      best/ as safetensors + JSON on every improvement
    TensorBoardExtras     tensorboard_extras.py  Custom Scalars layout, HPARAMS tab
    ProgressBar           progress_bar.py        Rich bar with short metric names

Always on (tinyllm/training.py adds them: they are promises of every run):
    TimeBudget            time_budget.py         plan the steps and the LR decay into the budget
    ValidateAtEnd         validate_at_end.py     every run ends with a validation
    FaultGuard            fault_guard.py         Ctrl-C/SIGTERM: validate, save, say how to resume
    TrainingStateCallback training_state.py      RNG states in every checkpoint
"""

from tinyllm.callbacks.best_artifacts import BestArtifactsCallback, best_score
from tinyllm.callbacks.fault_guard import (
    FaultGuard,
    NonFiniteLossError,
    StoppedAtOnce,
    TrainingInterrupted,
)
from tinyllm.callbacks.progress_bar import ProgressBar
from tinyllm.callbacks.sample_text import SampleTextCallback
from tinyllm.callbacks.tensorboard_extras import TensorBoardExtras
from tinyllm.callbacks.time_budget import TimeBudget
from tinyllm.callbacks.training_state import TrainingStateCallback
from tinyllm.callbacks.validate_at_end import ValidateAtEnd

__all__ = [
    "BestArtifactsCallback",
    "FaultGuard",
    "NonFiniteLossError",
    "ProgressBar",
    "SampleTextCallback",
    "StoppedAtOnce",
    "TensorBoardExtras",
    "TimeBudget",
    "TrainingInterrupted",
    "TrainingStateCallback",
    "ValidateAtEnd",
    "best_score",
]
