"""ModelConfig / LossConfig: presets, validation, dict round trips."""

from __future__ import annotations

import pytest

from lstc.config import PRESETS, ConfigError, LossConfig, ModelConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = ModelConfig.preset(name)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_and_tiny_presets():
    paper = ModelConfig.preset("paper")
    assert paper.spatial_backbone in ("resnet101", "resnet50")
    assert paper.temporal_backbone == "s3d"
    assert paper.input_size == (320, 320) and paper.num_frames == 8 and paper.target_index == 4
    assert (paper.streams, paper.cmam, paper.lasp) == ("both", "cmam_plus", "on")
    tiny = ModelConfig.preset("tiny")
    assert tiny.spatial_weights is None and tiny.temporal_weights is None
    assert not tiny.text_pretrained


def test_cstm_baseline_falls_out_of_the_same_config():
    base = ModelConfig.preset("cstm_baseline")
    assert (base.streams, base.cmam, base.lasp, base.fusion) == ("both", "cmam", "off", "concat")
    assert ModelConfig.preset("tiny").baseline() == ModelConfig.preset("tiny_cstm_baseline")


def test_from_dict_with_preset_and_overrides():
    cfg = ModelConfig.from_dict({"preset": "tiny", "cmam": "none", "input_size": [32, 32]})
    assert cfg.cmam == "none" and cfg.input_size == (32, 32) and cfg.text_encoder == "tiny"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="lasp_mode"):
        ModelConfig.from_dict({"preset": "tiny", "lasp_mode": "on"})
    with pytest.raises(ConfigError, match="pos_wieght"):
        LossConfig.from_dict({"pos_wieght": 2.0})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cmam", "cmam++"),
        ("streams", "audio"),
        ("lasp", True),
        ("fusion", "attention"),
        ("spatial_backbone", "vit"),
        ("temporal_backbone", "i3d"),
        ("input_size", [100, 100]),
        ("target_index", 9),
        ("decoder_dims", [8, 8]),
        ("num_frames", "8"),
        ("text_encoder", 5),
        ("spatial_weights", 1),
    ],
)
def test_bad_value_is_named(key, value):
    with pytest.raises(ConfigError, match=key):
        ModelConfig.from_dict({"preset": "tiny", key: value})


def test_weight_specs_accept_none_and_strings():
    cfg = ModelConfig.from_dict({"preset": "paper", "spatial_weights": None})
    assert cfg.spatial_weights is None
    cfg = ModelConfig.from_dict({"preset": "tiny", "temporal_weights": None})
    assert cfg.temporal_weights is None


def test_unknown_preset():
    with pytest.raises(ConfigError, match="huge"):
        ModelConfig.preset("huge")


def test_without_pretrained_downloads_nothing():
    cfg = ModelConfig.preset("paper").without_pretrained()
    assert cfg.spatial_weights is None and cfg.temporal_weights is None
    assert not cfg.text_pretrained


def test_loss_config_validation():
    assert LossConfig.from_dict({"level_weights": [1, 1]}).level_weights == (1, 1)
    with pytest.raises(ConfigError, match="pos_weight"):
        LossConfig(pos_weight=-1.0)
