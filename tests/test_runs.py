"""Where runs live: one configured place for every command, a folder of its own for each run,
and a lock that keeps a second live run out of a folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_OVERRIDES, compose_config

from tinyllm.artifacts import read_tokenizer
from tinyllm.runs import LOCK_FILE, RunFolderError, RunLock, unique_folder
from tinyllm.training import train

# a moved log dir (TINYLLM_OUTPUTS, paths.log_dir) used by train.py, resume=true and chat.py:
# tests/test_resume.py::test_sigkill_then_resume_true


@pytest.mark.slow
def test_two_runs_started_at_once_get_two_consistent_folders(tmp_path):
    corpora = []
    for n, alphabet in enumerate(("abc xyz\n", "mnop qrs\n")):
        path = tmp_path / f"corpus{n}.txt"
        path.write_text("".join(alphabet[i % len(alphabet)] for i in range(6000)))
        corpora.append(path)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *TINY_OVERRIDES,
                "trainer.max_steps=5",
                f"data.path={corpus}",
                f"seed={seed}",
                "paths.log_dir=out",
                "logger=none",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for seed, corpus in enumerate(corpora)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 2
    seeds = set()
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        seeds.add(config["seed"])
        vocab = set(Path(config["data"]["path"]).read_text())
        for tokenizer in (run / "tokenizer.json", run / "best" / "tokenizer.json"):
            assert set(read_tokenizer(tokenizer).vocab) == vocab
        assert not (run / LOCK_FILE).exists()  # released at the end
    assert seeds == {0, 1}


def test_a_taken_folder_name_gets_a_suffix(tmp_path):
    base = str(tmp_path / "runs" / "2026-01-01_00-00-00")
    os.makedirs(base)
    made = unique_folder(base)
    assert made == base + "_2" and Path(made).is_dir()
    assert unique_folder(base) == made  # the same process asking again: the same folder


def test_folders_made_for_nothing_are_removed_at_exit(tmp_path):
    """A run folder Hydra resolved but a later config replaced (debug= runs go to debug/) is
    left empty: the process removes it as it exits, and keeps the one its run wrote in."""
    code = (
        "import sys; from pathlib import Path; from tinyllm.runs import unique_folder\n"
        "unused = unique_folder(sys.argv[1]); used = unique_folder(sys.argv[2])\n"
        "(Path(used) / 'train.log').write_text('a run')\n"
        "assert Path(unused).is_dir()\n"
    )
    unused, used = tmp_path / "runs" / "t", tmp_path / "debug" / "t"
    subprocess.run([sys.executable, "-c", code, str(unused), str(used)], check=True)
    assert not unused.parent.exists() and (used / "train.log").read_text() == "a run"


def test_a_live_run_holds_its_folder(tmp_path, corpus_file):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": 0}
        (run / LOCK_FILE).write_text(json.dumps(lock))
        cfg = compose_config([*TINY_OVERRIDES, f"data.path={corpus_file}"], run)
        with pytest.raises(RunFolderError, match=f"is in use by process {holder.pid}"):
            train(cfg)
        assert not (run / "config.yaml").exists()  # refused before writing anything
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    with RunLock(run) as taken:
        assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    assert not (run / LOCK_FILE).exists()


def test_a_lock_from_another_host_is_reported(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(RunFolderError, match="on elsewhere .* delete"):
        RunLock(tmp_path).acquire()
