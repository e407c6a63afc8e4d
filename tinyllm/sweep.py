"""The summary table of a `-m` sweep: overrides and best `val/loss` of every job, best first.

`SweepSummary` is a Hydra callback (registered in configs/hydra/default.yaml). At the end of
every multirun job it writes the job's `result.json` (overrides, status, best `val/loss`) into
the job's folder and rewrites the sweep's summary from all the results so far, so the table is
there even when a job fails and Hydra stops the sweep. At the end of the sweep it prints it:

    outputs/multiruns/<time>/
      0/ 1/ ...           one folder per job (result.json in each)
      planned.json        every job's overrides, as Hydra's basic sweeper plans them at the start
      summary.csv         job, status, val_loss and every override as its own column
      summary.md          the same as a Markdown table (only the overrides that vary)

A sweep stopped by Ctrl-C or SIGTERM lists the jobs it never ran as `not run` (from
planned.json); a search sweeper (optuna) chooses its jobs as it goes, so it has no plan.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tinyllm.io import first_line, write_atomic

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
PLANNED_FILE = "planned.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
METRIC = "val/loss"


def _score(value: Any) -> float | None:
    """A finite float, or None for a job that returned nothing usable (failed, NaN, no val)."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def _task_overrides(task) -> dict[str, str]:
    """A job's `key=value` overrides as a mapping (its summary columns)."""
    return dict(o.split("=", 1) for o in task if "=" in o)


def _save_result(output_dir: Path, result: dict, sweep_dir: Path) -> None:
    """The job's result.json, then the sweep's summary rewritten from every job's."""
    data = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    write_atomic(output_dir / RESULT_FILE, data.encode("utf-8"))
    write_summary(sweep_dir)


def job_result(config: DictConfig, job_return: JobReturn) -> dict:
    """What one job contributes to the summary."""
    num = int(config.hydra.job.num)
    failed = job_return.status != JobStatus.COMPLETED or num in FAILED_JOBS
    value = None if failed else job_return._return_value
    score = _score(value)
    overrides = _task_overrides(config.hydra.overrides.task)
    if failed:
        why = FAILED_JOBS.get(num) or str(job_return._return_value)
        status, error = "failed", why.strip().splitlines()[:1]
    else:
        status, error = ("ok" if score is not None else "no val/loss"), []
    return {
        "job": num,
        "output_dir": str(config.hydra.runtime.output_dir),
        "overrides": overrides,
        "status": status,
        "val_loss": score,
        "error": error[0] if error else None,
    }


def planned_jobs(config: DictConfig) -> list[dict[str, str]] | None:
    """Every job's overrides, in Hydra's order, for the basic sweeper (None for any other)."""
    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    arguments = [*(f"{k}={v}" for k, v in params.items()), *config.hydra.overrides.task]
    batches = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides(arguments), None
    )
    return [_task_overrides(job) for batch in batches for job in batch]


def read_results(sweep_dir: Path) -> list[dict]:
    """Every job's result.json under `sweep_dir` (and a `not run` row for each planned job that
    has none), best `val/loss` first, failed jobs and jobs not run last."""
    results = []
    for path in Path(sweep_dir).glob(f"**/{RESULT_FILE}"):
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # a job being written right now, or damaged: leave it out
    try:
        planned = json.loads((Path(sweep_dir) / PLANNED_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        planned = []
    if results:  # a sweep that ran nothing has nothing to summarise
        ran = {r.get("job") for r in results}
        results += [
            {"job": job, "overrides": overrides, "status": "not run", "val_loss": None}
            for job, overrides in enumerate(planned)
            if job not in ran
        ]
    return sorted(results, key=lambda r: (
        r.get("val_loss") is None, r.get("status") == "not run", r.get("val_loss") or 0.0,
        r.get("job", 0),
    ))  # fmt: skip


def _override_keys(results: list[dict], varying_only: bool) -> list[str]:
    keys = sorted({k for r in results for k in r.get("overrides", {})})
    if not varying_only or len(results) < 2:
        return keys
    varying = [k for k in keys if len({r["overrides"].get(k) for r in results}) > 1]
    return varying or keys


def _shown(score: float | None) -> str:
    return "" if score is None else f"{score:.4f}"


def summary_rows(results: list[dict], varying_only: bool) -> tuple[list[str], list[list[str]]]:
    keys = _override_keys(results, varying_only)
    errors = any(r.get("error") for r in results)  # a failed job's row says why
    header = ["rank", "job", *keys, METRIC, "status", *(["error"] if errors else [])]
    rows = []
    for rank, r in enumerate(results, 1):
        overrides = r.get("overrides", {})
        cells = [str(rank), str(r.get("job", "")), *(overrides.get(k, "") for k in keys)]
        cells += [_shown(r.get("val_loss")), r.get("status", "")]
        rows.append([*cells, *([r.get("error") or ""] if errors else [])])
    return header, rows


def to_csv(results: list[dict]) -> str:
    header, rows = summary_rows(results, varying_only=False)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(header: list, rows: list[list]) -> str:
    """A Markdown table (cells as text, `|` escaped): the sweep summary's and the benchmarks'."""

    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def to_markdown(results: list[dict]) -> str:
    return markdown_table(*summary_rows(results, varying_only=True)) + "\n"


def write_summary(sweep_dir: Path) -> list[dict]:
    """(Re)write summary.csv and summary.md from the results under `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    results = read_results(sweep_dir)
    if results:
        write_atomic(sweep_dir / SUMMARY_CSV, to_csv(results).encode("utf-8"))
        write_atomic(sweep_dir / SUMMARY_MD, to_markdown(results).encode("utf-8"))
    return results


def print_summary(results: list[dict], sweep_dir: Path, console=None) -> None:
    """The summary as a Rich table on `console` (default: Rich's, i.e. the terminal)."""
    import rich
    from rich.table import Table

    header, rows = summary_rows(results, varying_only=True)
    table = Table(title=f"sweep {sweep_dir}: best {METRIC} first")
    for name in header:
        # on a narrow terminal, fold the overrides onto more lines rather than cut them short;
        # the result columns keep their width
        if name in ("rank", "job", METRIC, "status"):
            table.add_column(name, justify="left" if name == "status" else "right", no_wrap=True,
                             min_width=len(name))  # fmt: skip
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    (console or rich.get_console()).print(table)


def record_interrupted_job(why: object, score: float | None) -> None:
    """A -m job stopped by Ctrl-C or SIGTERM (saved, resumable) ends the sweep, and Hydra calls
    no on_job_end for it: its result.json and the summary's row are written here, so the
    summary says which job stopped and where its resume starts (the later jobs did not run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    result = {
        "job": int(hydra.job.num),
        "output_dir": str(output_dir),
        "overrides": _task_overrides(hydra.overrides.task),
        "status": "interrupted",
        "val_loss": _score(score),
        "error": first_line(why),
    }
    try:
        _save_result(output_dir, result, Path(hydra.sweep.dir))
    except OSError as e:
        log.warning("could not write the sweep summary: %s", e)


# the multirun jobs of this process that stopped on an error: job number -> the one line why
FAILED_JOBS: dict[int, str] = {}


def exit_job(code: int, error: object) -> None:
    """Stop this job after an error that has been logged as one line.

    A single run exits with `code`. A multirun job returns None instead, recorded as failed (its
    row in the summary says why), and the other jobs run: `sys.exit` would end the sweep at its
    first bad combination, and an exception would reach Hydra's basic sweeper, which re-raises
    it as a traceback once the jobs are done, before the summary is printed. Optuna's sweeper
    counts a value that is not a number as a failed trial and goes on (an exception, or a NaN
    in Optuna 2.10, stops its search). The sweep exits 1 at its end.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        message = first_line(error)
        FAILED_JOBS[int(HydraConfig.get().job.num)] = message
        return None
    sys.exit(code)


def _update_resumed_job(config: DictConfig, job_return: JobReturn) -> None:
    """A sweep's job continued on its own (`resume=<sweep>/<job>`, a single run): its
    result.json and the sweep's summary say what it reached now, not what it had when the
    sweep ended. The overrides given now (trainer.max_steps=...) join the job's own."""
    output_dir = Path(config.hydra.runtime.output_dir)
    try:
        result = json.loads((output_dir / RESULT_FILE).read_text(encoding="utf-8"))
        sweep_dir = next(d for d in output_dir.parents if (d / SUMMARY_CSV).is_file())
    except (OSError, ValueError, StopIteration):
        return  # not a sweep's job (or its record is gone)
    try:
        given = _task_overrides(config.hydra.overrides.task)
        score = _score(job_return._return_value)
        result["overrides"] = result.get("overrides", {}) | {
            k: v for k, v in given.items() if k not in ("resume", "ckpt_path")
            and not k.startswith("hydra.")
        }  # fmt: skip
        result["val_loss"], result["error"] = score, None
        result["status"] = "ok" if score is not None else "no val/loss"
        _save_result(output_dir, result, sweep_dir)
        log.info("sweep summary updated: %s", sweep_dir / SUMMARY_MD)
    except Exception as e:  # noqa: BLE001 - a summary must never break the run itself
        log.warning("could not update the sweep summary: %s", e)


class SweepSummary(Callback):
    """Hydra callback: result.json per job, summary.csv/summary.md per sweep (see module doc)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            planned = planned_jobs(config)
            if planned:
                data = json.dumps(planned, indent=1, ensure_ascii=False) + "\n"
                write_atomic(Path(config.hydra.sweep.dir) / PLANNED_FILE, data.encode("utf-8"))
        except Exception as e:  # noqa: BLE001 - a summary must never break the sweep itself
            log.debug("no plan of the sweep's jobs: %s", e)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            _update_resumed_job(config, job_return)
            return
        try:
            result = job_result(config, job_return)
            output_dir = Path(config.hydra.runtime.output_dir)
            _save_result(output_dir, result, Path(config.hydra.sweep.dir))
        except Exception as e:  # noqa: BLE001 - a summary must never break the sweep itself
            log.warning("could not write the sweep summary: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = write_summary(sweep_dir)
        if not results:
            return
        print_summary(results, sweep_dir)
        log.info("sweep summary: %s, %s", sweep_dir / SUMMARY_MD, sweep_dir / SUMMARY_CSV)
        failed = sum(r.get("status") == "failed" for r in results)
        if failed:
            log.error("%d of %d jobs failed: their rows in the summary say why", failed,
                      len(results))  # fmt: skip
            sys.exit(1)
