"""Configs: presets, YAML round trips, overrides and the errors bad keys and values give."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from avtime.pipelines.configlib import (
    ConfigError,
    apply_override,
    dump_yaml,
    flatten,
    from_dict,
    load_yaml,
    to_dict,
)
from avtime.training.config import PRESETS, RunConfig, load_run_config


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_yaml(name: str, tmp_path: Path) -> None:
    cfg = PRESETS[name]()
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_yaml(RunConfig, path) == cfg
    assert load_run_config(str(path)) == cfg
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


@pytest.mark.unit
def test_presets_differ_where_they_should() -> None:
    paper, demo, smoke = PRESETS["paper"](), PRESETS["demo"](), PRESETS["smoke"]()
    assert paper.model.video_arch == "r2plus1d_18" and paper.model.audio_arch == "resnet18"
    assert paper.data.pretext.clip_frames == 16 and paper.data.augment.crop_size == 112
    assert paper.data.pretext.speeds == (1, 2, 4, 8) and paper.train.use_gpu
    assert demo.model.video_arch == "tiny" and not demo.train.use_gpu
    assert smoke.train.steps < demo.train.steps and smoke.train.num_workers == 2


@pytest.mark.unit
def test_overrides_change_one_field_and_parse_types() -> None:
    cfg = load_run_config(
        "smoke", ["loss.w_vv=0", "optim.optimizer=sgd", "data.pretext.speeds=[1,2]"]
    )
    base = PRESETS["smoke"]()
    assert cfg.loss.w_vv == 0.0 and cfg.optim.optimizer == "sgd"
    assert cfg.data.pretext.speeds == (1, 2)
    assert dataclasses.replace(cfg, loss=base.loss, optim=base.optim, data=base.data) == base
    assert apply_override(base, "train.use_gpu=true").train.use_gpu is True


@pytest.mark.unit
def test_yaml_file_overrides_its_base_preset(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("preset: demo\ntrain:\n  steps: 7\nloss:\n  temperature: 0.2\n")
    cfg = load_run_config(str(path))
    assert cfg.train.steps == 7 and cfg.loss.temperature == 0.2
    assert cfg.model == PRESETS["demo"]().model


@pytest.mark.unit
@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("loss.w_typo=1", "valid keys under loss: ["),
        ("nosuch.x=1", "valid keys under the root"),
        ("optim.optimizer=lamb", "not one of ['adamw', 'sgd']"),
        ("model.video_arch=resnet", "not one of ['r2plus1d_18', 'tiny']"),
        ("train.steps=abc", "train.steps: 'abc' is not an integer"),
        ("train.steps=0", "train"),
        ("data.pretext.speeds=[3]", "speeds must be an increasing subset"),
        ("loss.temperature=-1", "temperature must be > 0"),
        ("train.use_gpu=maybe", "not a boolean"),
        ("loss", "must look like key.path=value"),
    ],
)
def test_bad_overrides_name_the_key_and_choices(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config("smoke", [override])
    assert fragment in str(err.value)


@pytest.mark.unit
def test_unknown_preset_and_bad_yaml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load_run_config("tiny")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dims: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key model\.embed_dims"):
        load_run_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(str(tmp_path / "missing.yaml"))


@pytest.mark.unit
def test_flatten_gives_dotted_leaves() -> None:
    flat = flatten(PRESETS["demo"]())
    assert flat["loss.temperature"] == PRESETS["demo"]().loss.temperature
    assert flat["data.pretext.speeds"] == list(PRESETS["demo"]().data.pretext.speeds)
    assert all(not isinstance(v, dict) for v in flat.values())


@pytest.mark.unit
def test_configs_are_frozen() -> None:
    cfg = PRESETS["smoke"]()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]


@pytest.mark.unit
def test_video_input_switches_parse_and_an_empty_input_is_refused() -> None:
    cfg = load_run_config("smoke", ["model.video_rgb=false", "model.motion_stream=true"])
    assert cfg.model.video_rgb is False and cfg.model.motion_stream is True
    assert cfg.model.frame_diff is True  # from the preset
    with pytest.raises(ConfigError) as err:
        load_run_config("smoke", ["model.frame_diff=false", "model.video_rgb=false"])
    assert "video_rgb=false needs frame_diff=true" in str(err.value)
