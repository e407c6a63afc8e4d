"""The experiment recipes: the original design's pre-processing, the one-minute smoke run."""

from __future__ import annotations

from conftest import compose_config
from omegaconf import OmegaConf


def resolved(overrides, tmp_path) -> dict:
    return OmegaConf.to_container(compose_config(overrides, tmp_path), resolve=True)


def test_lowercase_recipe_changes_only_the_cleaning(tmp_path):
    default, lower = resolved([], tmp_path), resolved(["experiment=lowercase"], tmp_path)
    assert lower["data"]["lowercase"] is True and lower["data"]["normalize_whitespace"] is True
    lower["data"].update(lowercase=False, normalize_whitespace=False)
    assert lower == default


def test_smoke_run_is_bounded_to_one_minute(tmp_path):
    smoke = compose_config(["experiment=smoke"], tmp_path)
    assert smoke.training.time_budget == "1m"
    assert smoke.trainer.max_steps <= 500
