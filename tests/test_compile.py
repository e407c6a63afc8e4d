"""`model.compile`: auto compiles only long runs on a machine that can compile; a compiler that
fails leaves the run training eagerly with one warning."""

from __future__ import annotations

import logging

import pytest
from conftest import compose_config

from tinyllm.config import ConfigError, resolve_compile, validate
from tinyllm.module import LanguageModel
from tinyllm.training import build_data_and_module


@pytest.mark.parametrize(
    ("overrides", "compiles"),
    [
        ([], True),  # the default: a 10-minute budget of up to 3,500 steps
        (["training.time_budget=2m"], False),
        (["trainer.max_steps=300"], False),
        (["training.time_budget=null", "trainer.max_steps=2000"], True),
        (["training.time_budget=null", "trainer.max_steps=-1"], False),
        (["model.compile=true", "trainer.max_steps=30"], True),
        (["model.compile=false"], False),
    ],
)
def test_auto_compiles_only_runs_that_repay_it(tmp_path, overrides, compiles, caplog):
    cfg = compose_config(["model.compile=auto", *overrides], output_dir=tmp_path)
    validate(cfg)
    with caplog.at_level(logging.INFO, logger="tinyllm.config"):
        assert resolve_compile(cfg) is compiles
    if cfg.model.compile == "auto":
        said = "compiling the training forward" if compiles else "not compiling"
        assert said in caplog.text


def test_auto_does_not_compile_without_a_compiler(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no C++ compiler on it
    monkeypatch.delenv("CXX", raising=False)
    cfg = compose_config(["model.compile=auto", "trainer.accelerator=cpu"], output_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="tinyllm.config"):
        assert resolve_compile(cfg) is False
    assert "no C++ compiler found" in caplog.text


def test_compile_must_be_true_false_or_auto(tmp_path):
    cfg = compose_config(["model.compile=sometimes"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="model.compile must be true, false or auto"):
        validate(cfg)


def test_the_module_gets_the_resolved_choice(tmp_path, corpus_file):
    cfg = compose_config(
        [f"data.path={corpus_file}", "model=tiny", "model.compile=auto", "trainer.max_steps=30"],
        output_dir=tmp_path,
    )
    _, module = build_data_and_module(cfg)
    assert module.hparams.compile is False and module._compiled_forward is None


def test_a_failing_compiler_falls_back_to_eager(monkeypatch, caplog):
    """A C++ compiler that does not exist makes inductor fail for real; training goes on."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/no/such/c++",))
    tiny = {"vocab_size": 11, "context_length": 8, "n_layer": 1, "n_head": 1, "n_embd": 8}
    module = LanguageModel(tiny, compile=True)
    inputs = torch.randint(0, 11, (2, 8))
    with caplog.at_level(logging.WARNING, logger="tinyllm.module"):
        loss = module._loss((inputs, inputs))
    loss.backward()
    assert module._compiled_forward is None
    assert "torch.compile failed" in caplog.text and "training without it" in caplog.text
    expected = module._loss((inputs, inputs))
    assert torch.allclose(loss, expected)
    torch._dynamo.reset()
