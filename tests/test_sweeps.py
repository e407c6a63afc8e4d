"""Sweeps: the summary table of a `-m` grid, failed jobs in it, and a tiny Optuna search."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import TINY_OVERRIDES, read_events, run_train
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tinyllm.module import LRPlan
from tinyllm.sweep import (
    RESULT_FILE,
    SweepSummary,
    print_summary,
    read_results,
    write_summary,
)

FAST = [o for o in TINY_OVERRIDES if o.split("=")[0] not in ("trainer.max_steps",)]
FAST += ["trainer.max_steps=10", "training.val_interval=5", "training.sample_frequency=100"]


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_a_stopped_sweep_lists_the_jobs_it_never_ran(tmp_path):
    """The basic sweeper's plan is kept at the start (the sweep's params from its config first,
    then the command line's, as Hydra orders them); jobs without a result are `not run` rows,
    after the ones that ran. A sweep whose jobs all ran has no such row (the grid test)."""
    config = OmegaConf.create({"hydra": {
        "sweep": {"dir": str(tmp_path)},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": {"seed": "1,2"}},
        "overrides": {"task": ["model.n_layer=1,2", "model=tiny"]},
    }})  # fmt: skip
    SweepSummary().on_multirun_start(config)
    (tmp_path / "0").mkdir()
    result = {"job": 0, "overrides": {"seed": "1", "model.n_layer": "1", "model": "tiny"},
              "status": "interrupted", "val_loss": 2.5, "error": None}  # fmt: skip
    (tmp_path / "0" / RESULT_FILE).write_text(json.dumps(result))
    write_summary(tmp_path)
    rows = read_csv(tmp_path / "summary.csv")
    assert [(r["job"], r["seed"], r["model.n_layer"], r["status"]) for r in rows] == [
        ("0", "1", "1", "interrupted"), ("1", "1", "2", "not run"),
        ("2", "2", "1", "not run"), ("3", "2", "2", "not run"),
    ]  # fmt: skip
    assert all(r["model"] == "tiny" for r in rows)


@pytest.mark.slow
def test_grid_sweep_writes_a_summary_best_first(tmp_path, corpus_file):
    """One folder per job, each with its own config, artifacts, log and events; the summary."""
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m", "model.n_layer=1,2", "training.learning_rate=1e-3,3e-3", *FAST,
        f"data.path={corpus_file}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1", "2", "3"]

    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 4
    losses = [float(r["val/loss"]) for r in rows]
    assert losses == sorted(losses)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert {(r["model.n_layer"], r["training.learning_rate"]) for r in rows} == {
        ("1", "0.001"), ("1", "0.003"), ("2", "0.001"), ("2", "0.003"),
    }  # fmt: skip
    weights = {}
    for row in rows:  # each row is its job's own best val/loss (as in best/metadata.json)
        job_dir = sweep / row["job"]
        metadata = json.loads((job_dir / "best" / "metadata.json").read_text())
        assert float(row["val/loss"]) == pytest.approx(metadata["val_loss"], abs=1e-4)
        assert row["status"] == "ok"
        job_result = json.loads((job_dir / RESULT_FILE).read_text())
        assert job_result["val_loss"] == metadata["val_loss"]
        assert job_result["overrides"]["model.n_layer"] == row["model.n_layer"]

        # the job's own folder: its config, artifacts, log and events
        cfg = OmegaConf.load(job_dir / "config.yaml")
        rate = float(row["training.learning_rate"])
        assert cfg.training.learning_rate == rate
        assert cfg.model.n_layer == int(row["model.n_layer"])
        assert cfg.paths.output_dir == str(job_dir)
        for name in ("model.safetensors", "model_config.json", "tokenizer.json", "metadata.json"):
            assert (job_dir / "best" / name).is_file()
        assert len(list((job_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
        assert (job_dir / "train.log").is_file()
        (lr,) = read_events(job_dir / "tensorboard").Scalars("lr")  # one log every 10 steps
        plan = LRPlan(cfg.training.warmup_steps, 10, cfg.training.min_lr_ratio)
        schedule = plan.multiplier(lr.step)
        assert lr.value == pytest.approx(rate * schedule, rel=1e-5)
        weights[row["model.n_layer"], row["training.learning_rate"]] = load_file(
            job_dir / "best" / "model.safetensors"
        )
    for n_layer in ("1", "2"):  # another learning rate, another model
        a, b = weights[n_layer, "0.001"], weights[n_layer, "0.003"]
        assert any(not (a[k] == b[k]).all() for k in a)

    markdown = (sweep / "summary.md").read_text(encoding="utf-8").splitlines()
    assert markdown[0] == (
        "| rank | job | model.n_layer | training.learning_rate | val/loss | status |"
    )  # only the overrides that vary between jobs
    assert len(markdown) == 2 + 4
    assert markdown[2].startswith(f"| 1 | {rows[0]['job']} | {rows[0]['model.n_layer']} |")
    # printed at the end too
    assert "best val/loss first" in result.stdout
    assert result.stdout.index("best val/loss first") > result.stdout.rindex("Trainer.fit")


def fake_job(sweep: Path, num: int, overrides: list[str], status, value):
    config = OmegaConf.create(
        {
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "overrides": {"task": overrides},
                "job": {"num": num},
                "runtime": {"output_dir": str(sweep / str(num))},
                "sweep": {"dir": str(sweep)},
            }
        }
    )
    (sweep / str(num)).mkdir(parents=True)
    job_return = JobReturn(status=status, _return_value=value)
    SweepSummary().on_job_end(config=config, job_return=job_return)
    return config


def test_failed_and_nan_jobs_go_last_and_do_not_break_the_summary(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["training.learning_rate=1"], JobStatus.FAILED, RuntimeError("boom\nx"))
    fake_job(sweep, 1, ["training.learning_rate=2"], JobStatus.COMPLETED, 2.5)
    fake_job(sweep, 2, ["training.learning_rate=3"], JobStatus.COMPLETED, float("nan"))
    fake_job(sweep, 3, ["training.learning_rate=4"], JobStatus.COMPLETED, None)
    config = fake_job(sweep, 4, ["training.learning_rate=5"], JobStatus.COMPLETED, 1.5)

    results = read_results(sweep)
    assert [r["job"] for r in results] == [4, 1, 0, 2, 3]
    assert [r["status"] for r in results] == ["ok", "ok", "failed", "no val/loss", "no val/loss"]
    assert results[2]["error"] == "boom"
    assert all(r["val_loss"] is None for r in results[2:])

    rows = read_csv(sweep / "summary.csv")  # written after every job, before the sweep ends
    assert [r["job"] for r in rows] == ["4", "1", "0", "2", "3"]
    assert [r["error"] for r in rows] == ["", "", "boom", "", ""]  # the failed row says why
    assert [r["val/loss"] for r in rows] == ["1.5000", "2.5000", "", "", ""]

    with pytest.raises(SystemExit) as ended:  # printed first, then the sweep says it failed
        SweepSummary().on_multirun_end(config=config)
    assert ended.value.code == 1
    out = capsys.readouterr().out
    assert "best val/loss first" in out and "failed" in out
    (sweep / "5").mkdir()
    (sweep / "5" / RESULT_FILE).write_text("{not json")  # a damaged file is left out
    assert len(write_summary(sweep)) == 5


def read_rich_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a printed Rich table, each cell's folded lines joined back together."""
    header, rows = [], []
    for line in text.splitlines():
        if line.startswith("┃"):
            cells = [c.strip() for c in line.strip("┃").split("┃")]
            header = [h + c for h, c in zip(header, cells, strict=True)] if header else cells
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0]:  # the rank column starts a row
                rows.append(cells)
            else:
                rows[-1] = [r + c for r, c in zip(rows[-1], cells, strict=True)]
    return header, rows


def test_summary_on_a_narrow_terminal_folds_rather_than_cuts(tmp_path):
    from rich.console import Console

    sweep = tmp_path / "sweep"
    long_path = "/a/rather/long/folder/name/for/the/corpus/tinyshakespeare.txt"
    fake_job(sweep, 0, [f"data.path={long_path}", "model.positional=rotary"],
             JobStatus.COMPLETED, 1.4931)  # fmt: skip
    fake_job(sweep, 1, ["data.path=b.txt", "model.positional=learned"], JobStatus.COMPLETED, 1.6)
    console = Console(width=60, record=True, file=io.StringIO())
    print_summary(read_results(sweep), sweep, console=console)
    header, rows = read_rich_table(console.export_text())
    assert header == ["rank", "job", "data.path", "model.positional", "val/loss", "status"]
    assert rows == [["1", "0", long_path, "rotary", "1.4931", "ok"],
                    ["2", "1", "b.txt", "learned", "1.6000", "ok"]]  # fmt: skip


def test_single_runs_write_no_result_file(tmp_path):
    config = OmegaConf.create(
        {"hydra": {"mode": RunMode.RUN, "runtime": {"output_dir": str(tmp_path)}}}
    )
    SweepSummary().on_job_end(config=config, job_return=JobReturn(JobStatus.COMPLETED, 1.0))
    assert not (tmp_path / RESULT_FILE).exists()


def test_a_resumed_job_updates_its_result_and_the_summary(tmp_path):
    """`resume=<sweep>/<job> trainer.max_steps=...` runs the job alone (not a multirun): what
    it reaches then is the job's result, in the sweep's summary too."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["training.learning_rate=1e-3"], JobStatus.COMPLETED, 2.0)
    fake_job(sweep, 1, ["training.learning_rate=3e-3"], JobStatus.COMPLETED, 2.5)
    job = sweep / "1"
    resumed = OmegaConf.create({"hydra": {
        "mode": RunMode.RUN, "runtime": {"output_dir": str(job)},
        "overrides": {"task": ["training.learning_rate=3e-3", "trainer.max_steps=40",
                               f"hydra.run.dir={job}", f"ckpt_path={job}/checkpoints/last.ckpt",
                               f"resume={job}"]},
    }})  # fmt: skip
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=1.5)
    SweepSummary().on_job_end(config=resumed, job_return=done)
    result = json.loads((job / RESULT_FILE).read_text())
    assert result["val_loss"] == 1.5 and result["job"] == 1
    assert result["overrides"] == {"training.learning_rate": "3e-3", "trainer.max_steps": "40"}
    rows = read_csv(sweep / "summary.csv")
    assert [(r["job"], r["val/loss"], r["trainer.max_steps"]) for r in rows] == [
        ("1", "1.5000", "40"),
        ("0", "2.0000", ""),
    ]


def test_an_interrupted_job_has_its_row_in_the_summary(tmp_path):
    """Ctrl-C or SIGTERM saves the job and ends the sweep, and Hydra calls no on_job_end for
    it: train.py writes its row (status, best so far, where it stopped) itself."""
    import signal

    from conftest import compose_config
    from hydra.core.hydra_config import HydraConfig

    from tinyllm.callbacks import TrainingInterrupted
    from tinyllm.sweep import record_interrupted_job

    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["training.learning_rate=1e-3"], JobStatus.COMPLETED, 2.0)
    (sweep / "1").mkdir()
    # the Hydra config of job 1 of that sweep, as Hydra registers it for the job
    compose_config(["training.learning_rate=3e-3", "hydra.mode=MULTIRUN", "hydra.job.num=1",
                    f"hydra.sweep.dir={sweep}"], sweep / "1")  # fmt: skip
    assert HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        stopped = TrainingInterrupted(signal.SIGINT, 7, sweep / "1" / "last.ckpt", "resume", 2.4)
        record_interrupted_job(stopped, stopped.best_score)
    finally:
        HydraConfig.instance().cfg = None
    rows = read_csv(sweep / "summary.csv")
    assert [(r["job"], r["status"], r["val/loss"]) for r in rows] == [
        ("0", "ok", "2.0000"), ("1", "interrupted", "2.4000")
    ]  # fmt: skip
    assert rows[1]["error"].startswith("training interrupted by SIGINT at step 7")


def test_a_search_is_checked_by_its_jobs_not_by_its_base_config():
    """hparams_search=optuna chooses model.n_embd itself (96, 192, 288): model.n_head=3 divides
    each, though not the base config's width; check_config leaves a search to its jobs."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from tinyllm.cli import check_config

    check_config(["train.py", "hparams_search=optuna", "model=tiny", "model.n_head=3"])


def test_a_sweep_folder_holding_runs_is_not_swept_into_again(tmp_path):
    """Its jobs would write beside the old ones' checkpoints, best/ and events, as a new run in a
    run's folder would (refused the same way)."""
    from tinyllm.cli import check_output_argv
    from tinyllm.runs import RunFolderError

    sweep = tmp_path / "sweep"
    argv = ["train.py", "-m", "training.learning_rate=1e-3,3e-3", f"hydra.sweep.dir={sweep}"]
    check_output_argv(argv)  # a new folder, or one without jobs: fine
    (sweep / "notes").mkdir(parents=True)
    check_output_argv(argv)
    (sweep / "1" / ".hydra").mkdir(parents=True)  # a job, even one that failed
    with pytest.raises(RunFolderError, match=r"already holds a sweep's jobs \(1/\).*resume=.*/1"):
        check_output_argv(argv)


@pytest.mark.slow
def test_optuna_search_goes_on_past_a_failed_trial(tmp_path, corpus_file):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    # no -m: the search config switches to MULTIRUN itself
    # a searched value that fails (5 heads divide no width): a failed trial, and the search goes
    # on (with seed 1337 the trials draw 2, 5 and 5 heads)
    result = run_train(
        "hparams_search=optuna", "hydra.sweeper.n_trials=3", "model.n_head=choice(2,5)", *FAST,
        "trainer.max_steps=5", f"data.path={corpus_file}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {
        "training.learning_rate", "model.n_embd", "model.n_layer", "model.dropout", "model.n_head",
    }  # fmt: skip
    rows = read_csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert float(rows[0]["val/loss"]) == pytest.approx(best["best_value"], abs=1e-4)
    for row in rows[:1]:  # each trial's sampled values reached its job's config
        cfg = OmegaConf.load(sweep / row["job"] / "config.yaml")
        assert 3e-4 <= cfg.training.learning_rate <= 1e-2
        assert cfg.model.n_embd in (96, 192, 288) and cfg.model.n_layer in (2, 4, 6)
        assert 0.0 <= cfg.model.dropout <= 0.2
        assert math.isfinite(float(row["val/loss"]))


def test_a_bad_job_fails_alone_and_the_sweep_goes_on(tmp_path, corpus_file):
    sweep = tmp_path / "sweep"
    result = run_train(
        "-m", "model.n_head=3,2", *FAST, "trainer.max_steps=5",
        f"data.path={corpus_file}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]  # the sweep ends, then says it failed
    assert "Traceback" not in result.stdout + result.stderr
    assert "1 of 2 jobs failed" in result.stdout
    printed = result.stdout[result.stdout.rindex("┃ rank") :]  # the table, then the end
    assert "failed" in printed and "must divide" in printed.replace("│", "").replace("\n", "")
    rows = read_csv(sweep / "summary.csv")
    assert [(r["model.n_head"], r["status"]) for r in rows] == [("2", "ok"), ("3", "failed")]
    assert rows[1]["error"].startswith("model.n_head=3 must divide") and rows[0]["error"] == ""
    assert "| failed | model.n_head=3 must divide" in (sweep / "summary.md").read_text()
    assert (sweep / "1" / "best" / "model.safetensors").is_file()  # the good job still ran
    failed = json.loads((sweep / "0" / RESULT_FILE).read_text())
    assert failed["error"].startswith("model.n_head=3 must divide model.n_embd=32")
