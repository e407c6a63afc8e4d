"""Scale-out: a real 2-process DDP run on CPU (gloo), and the sharding of training windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, load_ckpt, read_events, run_train, without
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler

from tinyllm.artifacts import load_model
from tinyllm.data import CharDataModule
from tinyllm.generation import generate_text


def files(run_dir: Path) -> set[str]:
    """The run folder's files, with names that differ between runs made generic."""
    names = set()
    for path in run_dir.rglob("*"):
        if path.is_file():
            name = str(path.relative_to(run_dir))
            if name.startswith("tensorboard/events.out.tfevents."):
                name = "tensorboard/events"
            elif name.startswith("checkpoints/best-"):
                name = "checkpoints/best.ckpt"
            names.add(name)
    return names


@pytest.mark.slow
def test_ddp_run_and_its_resume_equal_the_uninterrupted_run(tmp_path, corpus_file, trained_run):
    """A real 2-process DDP run on CPU: the single-process run's artifacts, rank zero alone
    sampling, logging and reporting. Then, resumed from its step-10 checkpoint, the same weights
    at step 30: under DDP Lightning wraps the training sampler; resuming mid-epoch must still
    continue each rank's data where it stopped. Dropout on: every rank is seeded alike and draws
    alike, so the RNG state rank zero saves is every rank's, and the masks continue too."""
    common = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        *without(TINY_OVERRIDES, "trainer.max_steps"), "data.train_windows_per_epoch=96",
        "model.dropout=0.1", "training.lr_decay_steps=30", f"data.path={corpus_file}",
    ]  # fmt: skip
    run_dir, split = tmp_path / "ddp", tmp_path / "split"
    # every validation's checkpoint kept (its names all read "best" below): step 10's resumes
    keep_all = "callbacks.model_checkpoint.save_top_k=-1"
    result = run_train(*common, keep_all, "trainer.max_steps=30", f"hydra.run.dir={run_dir}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output

    # the same artifacts as the single-process run (same overrides), plus rank 1's own log
    assert files(run_dir) == files(trained_run) | {"train_ddp_process_1.log"}
    loaded = load_model(run_dir)
    assert generate_text(loaded.model, loaded.tokenizer, "ROMEO:", max_tokens=20, seed=1)
    metadata = json.loads((run_dir / "best" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["step"] == 30

    # only rank zero samples, logs to TensorBoard and reports
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    rank1 = (run_dir / "train_ddp_process_1.log").read_text(encoding="utf-8")
    assert [f"sample at step {s} " in log for s in (10, 20, 30)] == [True] * 3
    assert "sample at step" not in rank1 and "best model" not in rank1
    assert "chat with it" not in rank1
    # config.yaml and tokenizer.json written once, by rank zero (the launcher re-runs train.py)
    assert "config and tokenizer saved" in log and "config and tokenizer saved" not in rank1
    assert output.count("sample at step 10 ") == 1
    events = read_events(run_dir / "tensorboard")
    samples = events.Tensors("samples/text_summary")
    assert [s.step for s in samples] == [10, 20, 30]
    single = read_events(trained_run / "tensorboard")
    assert set(events.Tags()["scalars"]) == set(single.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("val/loss")]
    assert steps == [e.step for e in single.Scalars("val/loss")] and len(steps) == 3
    hparams = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert b"trainer/world_size" in hparams

    # the same run resumed from its checkpoint of step 10, to 30, in another folder
    (step10,) = (run_dir / "checkpoints").glob("best-step000010-*.ckpt")
    result = run_train(
        *common, "trainer.max_steps=30", f"hydra.run.dir={split}", f"ckpt_path={step10}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # 96 windows / 8 per batch / 2 ranks = 6 batches an epoch: step 10 is batch 4 of epoch 1
    assert (result.stdout + result.stderr).count("resuming the data at batch 4 of epoch 1") == 2

    a = load_ckpt(run_dir / "checkpoints" / "last.ckpt")
    b = load_ckpt(split / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 30
    for key in a["state_dict"]:  # the same windows in the same order, the same dropout masks
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def window_offsets(datamodule: CharDataModule, rank: int, epoch: int) -> list[int]:
    """The window offsets `rank` of 2 trains on in `epoch`, sampled as Lightning does under DDP."""
    loader = datamodule.train_dataloader()
    sampler = _get_distributed_sampler(
        loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=rank
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def single_process_offsets(datamodule: CharDataModule, epoch: int) -> list[int]:
    sampler = datamodule.train_dataloader().sampler
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("epoch", [0, 1])
def test_each_rank_trains_on_different_windows(corpus_file, epoch):
    datamodule = CharDataModule(
        path=str(corpus_file), max_context=32, batch_size=8, train_windows_per_epoch=64, seed=3
    )
    datamodule.setup("fit")
    rank0, rank1 = window_offsets(datamodule, 0, epoch), window_offsets(datamodule, 1, epoch)
    assert len(rank0) == len(rank1) == 32  # each rank takes half of the epoch's windows
    # together the ranks train on exactly the single-process draw of that epoch, split in two
    assert sorted(rank0 + rank1) == sorted(single_process_offsets(datamodule, epoch))
    assert rank0 != rank1 and len(set(rank0) | set(rank1)) > 48
    # a new epoch draws new windows on every rank
    assert set(window_offsets(datamodule, 0, epoch + 1)) != set(rank0)
    assert set(window_offsets(datamodule, 1, epoch + 1)) != set(rank1)
