"""benchmarks/nanogpt.py: parsing nanoGPT's real output, the missing-peer exit, short real runs.

The runs need ../shared/anchors/nanoGPT (not part of the repository) and are skipped without it.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import nanogpt

needs_nanogpt = pytest.mark.skipif(
    not (nanogpt.ANCHOR / "train.py").is_file(), reason="../shared/anchors/nanoGPT is not there"
)

# Excerpt of nanoGPT's stdout (commit 3adf61e1), from a real run of its README CPU recipe with
# max_iters=10 eval_interval=5: the echoed config file, its overrides, evals and iterations.
NANOGPT_OUTPUT = """\
Overriding config with config/train_shakespeare_char.py:
out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10 # don't print too too often
# device = 'cpu'  # run on cpu only
Overriding: device = cpu
Overriding: compile = False
Overriding: eval_iters = 20
Overriding: block_size = 64
Overriding: batch_size = 12
Overriding: max_iters = 10
Overriding: dropout = 0.0
Overriding: eval_interval = 5
tokens per iteration will be: 768
found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)
Initializing a new model from scratch
number of parameters: 0.80M
num decayed parameter tensors: 18, with 802,944 parameters
using fused AdamW: False
step 0: train loss 4.1676, val loss 4.1649
iter 0: loss 4.1828, time 1038.64ms, mfu -100.00%
iter 1: loss 4.1373, time 79.18ms, mfu -100.00%
iter 2: loss 4.1347, time 67.89ms, mfu -100.00%
iter 3: loss 4.0995, time 71.08ms, mfu -100.00%
iter 4: loss 4.0387, time 63.04ms, mfu -100.00%
step 5: train loss 3.9669, val loss 3.9656
saving checkpoint to out-shakespeare-char
iter 5: loss 3.9758, time 1009.71ms, mfu 0.00%
iter 6: loss 3.8778, time 72.05ms, mfu 0.00%
step 10: train loss 3.7396, val loss 3.7525
saving checkpoint to out-shakespeare-char
iter 10: loss 3.7555, time 907.82ms, mfu 0.01%
"""


def stamped(text: str) -> list[tuple[float, str]]:
    """Each line stamped with its index as its seconds."""
    return [(float(i), line) for i, line in enumerate(text.splitlines())]


def stamped_curve() -> list[dict]:
    return nanogpt.parse(stamped(NANOGPT_OUTPUT))["curve"]


def test_parse_real_output():
    lines = stamped(NANOGPT_OUTPUT)
    parsed = nanogpt.parse(lines)
    step0 = next(i for i, (_, line) in enumerate(lines) if line.startswith("step 0:"))
    assert parsed["curve"][0] == {
        "step": 0,
        "seconds": float(step0),
        "train_loss": 4.1676,
        "val_loss": 4.1649,
    }
    assert [p["step"] for p in parsed["curve"]] == [0, 5, 10]
    assert [p["val_loss"] for p in parsed["curve"]] == [4.1649, 3.9656, 3.7525]
    iterations = parsed["iterations"]
    assert [i["step"] for i in iterations] == [0, 1, 2, 3, 4, 5, 6, 10]
    assert iterations[0]["ms"] == 1038.64 and iterations[-1]["loss"] == 3.7555
    assert parsed["tokens_per_iter"] == 768
    settings = parsed["settings"]
    # the override wins over the config file; comments are not values; commented lines are not
    assert settings["eval_iters"] == 20 and settings["eval_interval"] == 5
    assert settings["log_interval"] == 10 and settings["out_dir"] == "out-shakespeare-char"
    assert settings["device"] == "cpu" and settings["compile"] is False
    assert settings["dropout"] == 0.0


def test_train_py_defaults_and_overrides():
    """The recipe's flags replace the same keys in place; extra ones are appended."""
    recipe = nanogpt.merge(nanogpt.CPU_RECIPE, nanogpt.as_flags(["max_iters=50", "--seed=1"]))
    assert recipe[0] == nanogpt.CONFIG and "--max_iters=50" in recipe
    assert "--max_iters=2000" not in recipe and recipe[-1] == "--seed=1"
    assert len(recipe) == len(nanogpt.CPU_RECIPE) + 1
    hydra = nanogpt.merge(nanogpt.TINYLLM_GPU, ["data.max_val_windows=4"])
    assert hydra == [
        "experiment=shakespeare_gpu",
        "training.val_split=0.1",
        "data.max_val_windows=4",
    ]


def test_first_at_or_below():
    curve = [{"seconds": 1.0, "val_loss": 1.6}, {"seconds": 2.0, "val_loss": 1.47}]
    assert nanogpt.first_at_or_below(curve, 1.47)["seconds"] == 2.0
    assert nanogpt.first_at_or_below(curve, 1.4) is None


def test_missing_nanogpt_is_one_clear_line(tmp_path):
    """Without ../shared the script stops at once, saying so in one line."""
    with pytest.raises(SystemExit) as stopped:  # sys.exit(message): one line on stderr, exit 1
        nanogpt.main(["--anchor", str(tmp_path / "none")])
    message = stopped.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("nanoGPT is not there")


def test_plot_draws_nanogpt_curve_with_runs(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plot

    curve = {"device": "cpu", "eval_iters": 20, "curve": stamped_curve()}
    path = tmp_path / "curve.json"
    path.write_text(json.dumps(curve))
    # a longer run of the same recipe is labelled by its iterations (the command's last value)
    longer = {**curve, "recipe": "python train.py --max_iters=2000 --max_iters=18000"}
    (tmp_path / "longer.json").write_text(json.dumps(longer))
    finals = plot.plot(
        [], str(tmp_path / "curve.png"), nanogpt=[str(path), str(tmp_path / "longer.json")]
    )
    assert finals["nanoGPT CPU recipe (20-batch estimate)"]["best"] == pytest.approx(3.7525)
    assert "nanoGPT CPU recipe, 18,000 iterations (20-batch estimate)" in finals
    assert (tmp_path / "curve.png").stat().st_size > 0


# a model that steps in milliseconds, for runs of the real train.py
TINY = [
    "max_iters=4", "eval_interval=2", "eval_iters=2", "block_size=16", "batch_size=2",
    "n_layer=1", "n_head=1", "n_embd=8",
]  # fmt: skip


@needs_nanogpt
def test_cpu_recipe_writes_curve(corpus_file, tmp_path):
    """The CPU recipe, cut to a few iterations, through the real nanoGPT train.py."""
    out = tmp_path / "curve.json"
    nanogpt.main(["--corpus", str(corpus_file), "--workdir", str(tmp_path / "work"),
                  "--out", str(out), *TINY])  # fmt: skip
    result = json.loads(out.read_text())
    assert [p["step"] for p in result["curve"]] == [0, 2, 4]
    assert all(p["seconds"] > 0 and p["val_loss"] > 0 for p in result["curve"])
    assert result["device"] == "cpu" and result["eval_iters"] == 2
    assert "not the whole split" in result["val_loss_is"] and result["tokens_per_s"] > 0
    assert "--max_iters=4" in result["recipe"] and "--max_iters=2000" not in result["recipe"]
    assert result["machine"]["cores"]


@pytest.mark.slow
@needs_nanogpt
def test_gpu_compare_flow_on_cpu(corpus_file, tmp_path, capsys):
    """--gpu-compare's flow (both trainings, both curves, the table) with tiny CPU models."""
    out = tmp_path / "compare.json"
    # the target is reached at the first eval of each side
    nanogpt.main(["--gpu-compare", "--dev-tiny", "--corpus", str(corpus_file),
                  "--workdir", str(tmp_path), "--out", str(out), "--target", "10"])  # fmt: skip
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["nanoGPT"]["curve"] and result["tinyllm"]["curve"]
    assert "| nanoGPT |" in printed and "| tinyllm |" in printed
    assert "not reached" not in result["table"]
