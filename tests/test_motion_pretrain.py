"""Motion pretraining of the tiny 3D encoder (pipelines/motion_pretrain.py, issue 14): the
clips and labels come from the generator, flips swap left/right, training learns the motion,
and the bundled SHAPES_MOTION_V1 weights load into the encoder the recipe builds."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from data_prep.synthetic import SCENARIOS, _objects, config_for
from lstc.backbones import PRETRAINED_DIR, TINY_TEMPORAL_WEIGHTS, TemporalEncoder, WeightsError
from pipelines.motion_pretrain import CLASSES, PretrainConfig, _batches, motion_samples, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_samples_carry_the_generators_motion_and_the_recipes_geometry():
    cfg = PretrainConfig(videos=3)
    samples = list(motion_samples(cfg, range(3)))
    scfg = config_for("demo", cfg.seed, num_videos=3)
    expected = []
    for i in range(3):
        objs = _objects(np.random.default_rng([scfg.seed, i]), SCENARIOS[i % 3], scfg)
        expected.append(sorted(CLASSES.index(o.motion) for o in objs))
    # 4 annotated frames per video, one sample per visible object
    assert len(samples) <= sum(4 * len(e) for e in expected)
    assert sorted({s.label for s in samples}) == sorted(set(sum(expected, [])))
    for s in samples:
        assert s.clip.shape == (4, 64, 64, 3) and s.clip.dtype == np.uint8
        assert s.mask.shape == (64, 64) and set(np.unique(s.mask)) <= {0.0, 1.0}
        assert s.mask.sum() > 0
    # the moving objects' clips differ between frames, and the target frame is in the middle
    assert any(not np.array_equal(s.clip[0], s.clip[-1]) for s in samples)


def test_a_flip_mirrors_clip_and_mask_and_swaps_left_and_right():
    clip = np.zeros((4, 8, 8, 3), np.uint8)
    clip[:, :, 0] = 255  # left column bright
    mask = np.zeros((8, 8), np.float32)
    mask[:, :2] = 1
    from pipelines.motion_pretrain import MotionSample

    samples = [MotionSample(clip, mask, CLASSES.index(c)) for c in ("left", "right", "up")]
    cfg = PretrainConfig(batch_size=3, flip=1.0)  # always flip
    x, m, y = next(_batches(samples, cfg, np.random.default_rng(0)))
    order = list(np.random.default_rng(0).permutation(3))
    assert [CLASSES[i] for i in y.tolist()] == [["right", "left", "up"][j] for j in order]
    assert x.shape == (3, 3, 4, 8, 8) and float(x[0, 0, 0, 0, -1]) == 1.0  # now right column
    assert float(m[0, 0, 0, -1]) == 1.0 and float(m[0, 0, 0, 0]) == 0.0
    x, m, y = next(_batches(samples, cfg, None))  # no rng: no flip, in order
    assert [CLASSES[i] for i in y.tolist()] == ["left", "right", "up"]


def test_pretraining_learns_the_motion_and_writes_a_loadable_encoder(tmp_path):
    cfg = PretrainConfig(videos=40, epochs=2)
    out = tmp_path / "enc.pt"
    record = pretrain(cfg, out, progress=False, log=lambda s: None)
    best = max(record["epochs"][-1]["test_accuracy"])
    # six classes; measured 0.64 (stage 2) on 40 videos after 2 epochs
    assert best >= record["chance"] + 0.2
    assert json.loads(out.with_name("enc.pt.json").read_text())["epochs"] == record["epochs"]
    enc = TemporalEncoder(backbone="tiny", weights=str(out), tiny_width=8)
    state = torch.load(out, weights_only=True)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bundled_weights_load_and_were_made_with_the_defaults():
    enc = TemporalEncoder(backbone="tiny", weights="SHAPES_MOTION_V1", tiny_width=8)
    path = PRETRAINED_DIR / TINY_TEMPORAL_WEIGHTS["SHAPES_MOTION_V1"]
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in enc.state_dict().items())
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["config"] == asdict(PretrainConfig())
    assert max(record["epochs"][-1]["test_accuracy"]) >= 0.9  # chance ~0.2


def test_bad_tiny_weights_say_what_fits(tmp_path):
    with pytest.raises(WeightsError, match="SHAPES_MOTION_V1"):
        TemporalEncoder(backbone="tiny", weights="KINETICS400_V1")
    with pytest.raises(WeightsError, match="does not fit the tiny 3D encoder"):
        TemporalEncoder(backbone="tiny", weights="SHAPES_MOTION_V1", tiny_width=4)
    path = tmp_path / "other.pt"
    torch.save({"stages.0.0.weight": torch.zeros(8, 3, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="other.pt.*missing keys"):
        TemporalEncoder(backbone="tiny", weights=str(path))


def test_the_tiny_recipe_starts_from_the_motion_weights_with_text_and_3d_encoders_fixed():
    """configs/refer_shapes_tiny.yaml (issue 14): bundled SHAPES_MOTION_V1 in the 3D encoder,
    frozen text and 3D encoders; the CSTM anchor of the ablation gets the same start."""
    from lstc.model import build_model
    from pipelines.config import load_recipe

    for overrides in ([], ["model.preset=tiny_cstm"]):
        recipe = load_recipe("configs/refer_shapes_tiny.yaml", overrides)
        m = recipe.model
        assert (m.temporal_weights, m.freeze_text, m.freeze_temporal) == (
            "SHAPES_MOTION_V1",
            True,
            True,
        )
        model = build_model(m)
        bundled = torch.load(
            PRETRAINED_DIR / TINY_TEMPORAL_WEIGHTS["SHAPES_MOTION_V1"], weights_only=True
        )
        assert all(
            torch.equal(v, bundled[k]) for k, v in model.temporal.encoder.state_dict().items()
        )
        frozen = [*model.text.parameters(), *model.temporal.encoder.parameters()]
        assert frozen and not any(p.requires_grad for p in frozen)
        assert any(p.requires_grad for p in model.temporal.cmams.parameters())


def test_command_help_and_a_too_small_run(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain-temporal", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "SHAPES_MOTION_V1" in out and "--videos" in out
    with pytest.raises(SystemExit, match="--videos must be at least 2"):
        main(["pretrain-temporal", "--out", "x.pt", "--videos", "1"])
