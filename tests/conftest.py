"""Shared fixtures: a small synthetic corpus and one tiny model trained by the real train.py."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny models on a small shared CPU: one intra-op thread per process is fastest, and keeps the
# threads of parallel processes from spinning against each other (a 20-step fit went from 4.7 s
# to 0.1 s with another job running). train.py subprocesses inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads when it loads)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _outside_the_repository(tmp_path_factory):
    """Every test runs in a folder of its own (per worker): what a run leaves with the default
    paths (outputs/, converted corpora, token caches under data/) goes there, not into the
    repository's folders."""
    os.chdir(tmp_path_factory.mktemp("cwd"))


# A tiny run of the real pipeline: small model, short context, a few dozen steps.
TINY_OVERRIDES = [
    "model=tiny",
    "training.max_context=32",
    "training.batch_size=8",
    "training.val_interval=10",
    "training.sample_frequency=10",
    "training.sample_tokens=30",
    "training.warmup_steps=5",
    "trainer.max_steps=30",
    "training.time_budget=null",
    # the same arithmetic on every machine (the default picks bf16 where the CPU runs it natively)
    "trainer.precision=32-true",
    "data.max_val_windows=20",
    "callbacks.progress_bar=null",
    "print_config=false",
]


def without(overrides: list[str], *keys: str) -> list[str]:
    """`overrides` less those that set one of `keys` (to set them anew)."""
    return [o for o in overrides if o.split("=", 1)[0] not in keys]


def make_corpus(n_speeches: int = 300, seed: int = 0) -> str:
    """Tiny-shakespeare-shaped text (SPEAKER: line, speech, blank line) from a few words."""
    rng = random.Random(seed)
    speakers = ["ROMEO", "JULIET", "KING HENRY", "FIRST CITIZEN"]
    words = "the king queen love death night day sword crown heart blood sweet fair lord".split()  # noqa: SIM905
    blocks = []
    for _ in range(n_speeches):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize() + "."]
        blocks.append(f"{rng.choice(speakers)}:\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


def run_train(
    *overrides: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python train.py OVERRIDES` as a user would run it; output captured."""
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"} | (env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_chat(
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess:
    """`python chat.py ARGS` as a user would run it; output captured, stdin `stdin` or none."""
    return subprocess.run(
        [sys.executable, str(ROOT / "chat.py"), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        cwd=cwd,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_ckpt(path: Path) -> dict:
    """A .ckpt file's contents, read as tinyllm reads them (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class _Payload:
    """Unpickling this creates the marker file: it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_unsafe_checkpoint(ckpt: Path, marker: Path) -> Path:
    """A run's last.ckpt that looks like Lightning's but carries code: loading it unsafely
    creates `marker`."""
    ckpt.parent.mkdir(parents=True)
    payload = _Payload(marker)
    torch.save({"state_dict": {}, "global_step": 5, "loops": {}, "payload": payload}, ckpt)
    return ckpt


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file) -> Path:
    """Folder of one finished tiny training run (best/, checkpoints/, tensorboard/, train.log)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_train(*TINY_OVERRIDES, f"data.path={corpus_file}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


# --- in-process Hydra composition (shared by config, module and seed tests) -----------------

CONFIG_DIR = ROOT / "configs"


def compose_config(overrides=(), output_dir: Path | str | None = None):
    """The composed train config, as `python train.py OVERRIDES` would see it.

    Hydra's runtime config is registered (so `${hydra:runtime.output_dir}` resolves, to
    `output_dir`) and the `hydra` node is then removed from the returned config, as Hydra does
    before calling the task function. Resolve values before composing another config: the
    `${hydra:...}` resolver reads whichever runtime config was registered last.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def read_events(log_dir: Path):
    """A TensorBoard EventAccumulator over `log_dir`, every scalar and tensor event kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator
