"""Smoke tests: every benchmark script runs a few steps and reports numbers (not their values)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("benchmarks.common")


def finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_overhead_quick(corpus_file):
    from benchmarks import overhead

    results = overhead.run(str(corpus_file), quick=True, configs=["default"])
    r = results["default"]
    assert finite(r["lightning_tokens_per_s"]) and finite(r["plain_tokens_per_s"])
    assert finite(r["ratio"])


def test_overhead_floor_quick(corpus_file):
    """Each layer between the plain loop and the pipeline is measured on the same model."""
    from benchmarks import overhead
    from benchmarks.common import NANOGPT_CPU, QUICK, Pipeline

    result = overhead.floor(str(corpus_file), [*NANOGPT_CPU, *QUICK], rounds=1, steps=3)
    idle = len(Pipeline(str(corpus_file), [*NANOGPT_CPU, *QUICK]).trainer_callbacks()) - 1
    assert idle >= 9  # the configured callbacks and those every run keeps, not the timer
    assert list(result) == [
        "plain loop", "bare Lightning", f"bare Lightning, {idle} idle callbacks",
        overhead.AS_IT_COMES, "pipeline, no callbacks or logger", "pipeline",
    ]  # fmt: skip
    assert all(finite(r["ms_per_step"]) and finite(r["ratio"]) for r in result.values())
    assert result["plain loop"]["ratio"] == 1.0


def test_overhead_hooks_quick(corpus_file):
    """Every per-step hook of the pipeline is timed and put down to its owner."""
    from benchmarks import overhead
    from benchmarks.common import NANOGPT_CPU, QUICK

    result = overhead.hook_times(str(corpus_file), [*NANOGPT_CPU, *QUICK], steps=3)
    hooks = result["hooks_ms"]
    assert "tinyllm: FaultGuard.on_before_backward" in hooks
    assert "tinyllm: LanguageModel.on_train_batch_end" in hooks
    assert "lightning: ModelCheckpoint.on_train_batch_end" in hooks
    assert any(k.startswith("lightning: LightningModule.log") for k in hooks)
    assert result["tinyllm_ms"] == pytest.approx(
        sum(v for k, v in hooks.items() if k.startswith("tinyllm"))
    )
    assert all(v >= 0 for v in hooks.values()) and finite(result["step_ms"])


def test_generation_quick():
    from benchmarks import generation

    results = generation.run(quick=True)
    for r in results.values():
        assert finite(r["cache_chars_per_s"]) and finite(r["recompute_chars_per_s"])


def test_recompute_loop_matches_cache_greedy():
    """The benchmark's nanoGPT-style loop and the KV-cache path make the same text."""
    import torch

    from benchmarks import generation
    from tinyllm.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=8))
    model.eval()
    generation.TEMPERATURE, saved = 1e-6, generation.TEMPERATURE  # ~greedy in both paths
    try:
        cached = list(model.stream([1, 2], 6, temperature=0))
        recomputed = generation.recompute(model, [1, 2], 6, torch.Generator().manual_seed(0))
    finally:
        generation.TEMPERATURE = saved
    assert cached == recomputed


def test_data_pipeline_quick(corpus_file):
    from benchmarks import data_pipeline

    r = data_pipeline.run(str(corpus_file), quick=True)
    assert finite(r["loader_batches_per_s"]) and finite(r["train_steps_per_s"])


def test_utilisation_quick(corpus_file):
    from benchmarks import utilisation

    r = utilisation.run(str(corpus_file), quick=True)
    assert finite(r["model_flops_per_s"]) and finite(r["matmul_peak_flops_per_s"])
    assert r["profile"]


def test_switches_quick(corpus_file):
    from benchmarks import switches

    results = switches.run(str(corpus_file), quick=True, groups=["precision", "optimizer"])
    assert set(results["optimizer"]) == {"auto", "foreach", "fused", "loop"}
    assert all(finite(r["tokens_per_s"]) for r in results["precision"].values())


@pytest.mark.slow
def test_memory_and_report_quick(corpus_file, tmp_path):
    """The driver's main, as the README runs it, on the memory benchmark (a real train.py
    subprocess); in this process, which has already paid for the imports."""
    from benchmarks import run

    out = tmp_path / "RESULTS.md"
    out.write_text("# kept\n\n<!-- generated: begin -->\nold\n<!-- generated: end -->\nkept too\n")
    command = ["--quick", "--only", "memory", "--corpus", str(corpus_file), "--out", str(out)]
    run.main(command)
    text = out.read_text()
    assert text.startswith("# kept") and text.rstrip().endswith("kept too")
    assert "old" not in text and "peak RSS" in text
    first = json.loads((tmp_path / "RESULTS.json").read_text())
    assert "reruns" not in first and first["memory"]
    # a partial re-run of another benchmark keeps what the report had and says when it measured
    command[command.index("memory")] = "data"
    run.main(command)
    again = json.loads((tmp_path / "RESULTS.json").read_text())
    assert again["started"] == first["started"] and len(again["reruns"]) == 1
    assert again["memory"] == first["memory"] and again["data"]
    text = out.read_text()
    assert "data re-measured" in text and "peak RSS" in text
    assert "earlier (" not in text  # nothing was replaced: the first report had no data
    # re-measured again: the figures it replaces stay in the table, saying when they were taken
    run.main(command)
    third = json.loads((tmp_path / "RESULTS.json").read_text())
    when = again["measured"]["data"]
    assert third["earlier"]["data"] == [{"measured": when, "data": again["data"]}]
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 8 x 32")]
    assert len(rows) == 1 and f"| earlier ({when}): 8 x 32 |" in text


def test_plot_reads_tensorboard_events(tmp_path):
    pytest.importorskip("matplotlib")
    from torch.utils.tensorboard import SummaryWriter

    from benchmarks import plot

    run = tmp_path / "job" / "0"
    writer = SummaryWriter(str(run / "tensorboard"))
    for step, loss in enumerate([2.5, 2.0, 1.8]):
        writer.add_scalar("val/loss", loss, step)
    writer.close()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "0").symlink_to(tmp_path / "job", target_is_directory=True)
    finals = plot.plot([str(run), str(tmp_path / "linked")], str(tmp_path / "curve.png"))
    assert finals["job"]["best"] == pytest.approx(1.8)
    assert finals["linked"]["best"] == pytest.approx(1.8)  # a run linked into a plot folder
    assert (tmp_path / "curve.png").stat().st_size > 0


@pytest.mark.parametrize("stage", ["proxy", "final", "steps", "ablation"])
def test_recipe_runs_compose_and_validate(stage, tmp_path):
    """Every run a recipe stage would launch composes and passes the config checks, so a config
    change cannot silently break the reproduction of RESULTS.md."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from benchmarks import recipe
    from tests.conftest import compose_config
    from tinyllm.config import validate
    from tinyllm.training import build_model_config

    parser = OverridesParser.create()
    for name, overrides in recipe.STAGES[stage].items():
        cfg = compose_config([*recipe.COMMON, *overrides], output_dir=tmp_path / name)
        validate(cfg)
        build_model_config(cfg.model, vocab_size=65)
        for override in parser.parse_overrides([*recipe.COMMON, *overrides]):
            key = override.key_or_group
            if key != "experiment":  # each value reaches the config (no experiment masks it)
                assert OmegaConf.select(cfg, key) == override.value(), (name, key)


def test_step_screen_table_pairs_each_run_with_the_control_of_its_seeds(tmp_path):
    from benchmarks.recipe import screen_table

    losses = {("control", "2"): 1.5, ("control", "1337"): 1.4, ("wd", "1337"): 1.3}
    for (name, seed), loss in losses.items():
        run = tmp_path / f"seed{seed}" / "steps" / name / "0"
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({"loss": loss}))
    lines = screen_table(tmp_path).splitlines()
    assert lines[0] == "| run | seed 2 | seed 1337 | mean | against control |"
    assert "| control | 1.5000 | 1.4000 | 1.4500 | +0.0000 |" in lines
    assert "| wd | - | 1.3000 | 1.3000 | -0.1000 |" in lines  # paired on seed 1337 only


def test_interleave_rotates_the_order_of_layers():
    """No layer always runs first, or always after the same one; each is timed once a round."""
    from benchmarks.common import interleave

    calls: list[str] = []

    def layer(name: str):
        return lambda: calls.append(name) or float(len(calls))

    times = interleave(3, {name: layer(name) for name in "abc"})
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}
