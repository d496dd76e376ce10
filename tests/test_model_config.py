"""ModelConfig / LossConfig (frozen pydantic models): presets, validation, dict round trips."""

from __future__ import annotations

import json

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
        ("lasp", "maybe"),
        ("lasp", 1),
        ("fusion", "attention"),
        ("spatial_backbone", "vit"),
        ("temporal_backbone", "c3d"),
        ("cmam_style", "cstm"),
        ("decoder_style", "paper"),
        ("input_norm", "imagenet"),
        ("word_vectors_limit", -1),
        ("input_size", [100, 100]),
        ("target_index", 9),
        ("decoder_dims", [8, 8]),
        ("num_frames", "8"),
        ("text_encoder", 5),
        ("spatial_weights", 1),
        ("num_frames", True),
        ("num_frames", 0),
        ("update_heads", 3),
        ("cmam_heads", 0),
        ("freeze_text", "yes"),
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


def test_to_dict_has_lists_and_round_trips_through_json():
    cfg = ModelConfig.preset("small")
    d = cfg.to_dict()
    assert d["input_size"] == [128, 128] and d["decoder_dims"] == [128, 128, 64, 32, 32]
    assert "preset" not in d and d["lasp"] == "on"
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert isinstance(ModelConfig.from_dict(d).input_size, tuple)  # torch code wants tuples
    assert LossConfig().to_dict()["level_weights"] == [0.1, 0.1, 0.2, 0.3, 0.5]


def test_yaml_off_and_on_booleans_map_to_the_switch():
    assert ModelConfig.from_dict({"preset": "tiny", "lasp": False}).lasp == "off"
    assert ModelConfig.from_dict({"preset": "tiny", "lasp": True}).lasp == "on"
    assert ModelConfig.preset("tiny").replace(lasp=False).lasp == "off"


def test_ints_are_accepted_where_floats_are_expected():
    loss = LossConfig.from_dict({"pos_weight": 2, "level_weights": [1, 0]})
    assert loss.pos_weight == 2.0 and isinstance(loss.pos_weight, float)
    assert loss.level_weights == (1.0, 0.0) and all(
        isinstance(w, float) for w in loss.level_weights
    )
    with pytest.raises(ConfigError, match="pos_weight=True is not valid: expected a number"):
        LossConfig.from_dict({"pos_weight": True})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cmam": "foo"}, "cmam='foo' is not valid: choose one of ['none', 'cmam', 'cmam_plus']"),
        ({"target_index": 4}, "target_index=4 is not valid: must be in [0, num_frames=4)"),
        ({"update_heads": 3}, "update_heads=3 is not valid: must divide lang_dim=32"),
        ({"cmam_heads": 3}, "cmam_heads=3 is not valid: must divide lang_dim=32"),
        (
            {"preset": "tiny_cstm", "cmam_heads": 2},
            "cmam_heads=2 is not valid: the release CMAM has one word weighting",
        ),
        ({"input_size": [64, 80]}, "input_size=[64, 80] is not valid: must be two positive"),
        ({"input_size": [64]}, "input_size=[64] is not valid: expected a list of 2 values"),
        ({"decoder_dims": [8, 8]}, "decoder_dims=[8, 8] is not valid: must be 5 positive widths"),
        ({"max_words": 0}, "max_words=0 is not valid: must be >= 1"),
        ({"preset": "huge"}, "preset='huge' is not valid: choose one of ['cstm', 'cstm_baseline',"),
    ],
)
def test_error_messages_name_key_value_and_allowed(changes, message):
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"preset": "tiny", **changes})
    assert str(err.value).startswith(message)


def test_construction_and_replace_validate():
    with pytest.raises(ConfigError, match=r"^num_frames=0 is not valid: must be >= 1$"):
        ModelConfig(num_frames=0)
    with pytest.raises(ConfigError, match=r"^unknown key 'lasp_mode'; valid keys are \['cmam'"):
        ModelConfig.preset("tiny").replace(lasp_mode="on")
    with pytest.raises(ConfigError, match="target_index=2 is not valid"):
        ModelConfig.preset("tiny").replace(num_frames=2)
    cfg = ModelConfig.preset("tiny").replace(num_frames=2, target_index=1)
    assert (cfg.num_frames, cfg.target_index, cfg.text_encoder) == (2, 1, "tiny")
    with pytest.raises(ValueError, match="frozen"):
        cfg.num_frames = 3  # type: ignore[misc]
    assert issubclass(ConfigError, ValueError)


def test_streams_switch_properties():
    tiny = ModelConfig.preset("tiny")
    assert (tiny.uses_spatial, tiny.uses_temporal) == (True, True)
    spatial = tiny.replace(streams="spatial")
    assert (spatial.uses_spatial, spatial.uses_temporal) == (True, False)
    temporal = tiny.replace(streams="temporal")
    assert (temporal.uses_spatial, temporal.uses_temporal) == (False, True)


def test_release_decoder_and_glove_cross_checks():
    with pytest.raises(ConfigError, match=r"decoder_dims=.*one width"):
        ModelConfig.from_dict({"preset": "tiny", "decoder_style": "release"})
    with pytest.raises(ConfigError, match="fusion='sum'.*concat"):
        ModelConfig.from_dict({"preset": "tiny_cstm", "fusion": "sum"})
    with pytest.raises(ConfigError, match=r"word_vectors=None.*GloVe"):
        ModelConfig.from_dict({"preset": "tiny", "text_encoder": "glove", "text_pretrained": True})
    cfg = ModelConfig.from_dict({"preset": "cstm", "word_vectors": "/data/glove.txt"})
    assert cfg.word_vectors == "/data/glove.txt" and cfg.temporal_backbone == "i3d"
    assert cfg.without_pretrained().text_pretrained is False  # no file needed to build
