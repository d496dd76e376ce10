"""Encoders: stage strides of the torchvision backbones, time-slice alignment, weight loading."""

from __future__ import annotations

import pytest
import torch

from lstc.backbones import (
    SpatialEncoder,
    TemporalEncoder,
    WeightsError,
    aligned_slice,
    build_torchvision,
)
from lstc.text import TextEncoder, TextTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_stages(encoder, x):
    shapes = []
    x = encoder.normalize(x)
    with torch.no_grad():
        for stage in encoder.stages:
            x = stage(x)
            shapes.append(tuple(x.shape))
    return shapes


@pytest.mark.parametrize(
    ("backbone", "channels"), [("resnet18", [64, 64, 128, 256, 512]), ("tiny", [8, 16, 32, 64, 64])]
)
def test_spatial_stages_have_strides_2_to_32(backbone, channels):
    enc = SpatialEncoder(backbone=backbone, weights=None)
    shapes = run_stages(enc, torch.rand(1, 3, 64, 64))
    assert [s[1] for s in shapes] == enc.channels == channels
    assert [s[-1] for s in shapes] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize(
    ("backbone", "channels", "times"),
    [
        ("s3d", [64, 192, 480, 832, 1024], [4, 4, 4, 2, 1]),
        ("r2plus1d_18", [64, 64, 128, 256, 512], [8, 8, 4, 2, 1]),
        ("tiny", [8, 16, 32, 64, 64], [8, 8, 4, 2, 2]),
    ],
)
def test_temporal_stages_have_strides_2_to_32(backbone, channels, times):
    enc = TemporalEncoder(backbone=backbone, weights=None)
    shapes = run_stages(enc, torch.rand(1, 3, 8, 64, 64))
    assert [s[1] for s in shapes] == enc.channels == channels
    assert [s[2] for s in shapes] == times
    assert [s[-1] for s in shapes] == [32, 16, 8, 4, 2]


def test_aligned_slice_covers_the_target_frame():
    # 8 frames, target 4: stage lengths 8/4/2/1 -> slices 4/2/1/0
    for t, expected in [(8, 4), (4, 2), (2, 1), (1, 0)]:
        x = torch.arange(t).float().view(1, 1, t, 1, 1)
        assert int(aligned_slice(x, target_index=4, num_frames=8)) == expected
    x = torch.arange(4).float().view(1, 1, 4, 1, 1)
    assert int(aligned_slice(x, target_index=3, num_frames=4)) == 3


def test_local_state_dict_file_loads(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    ref = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    enc = SpatialEncoder(backbone="resnet18", weights=str(path))
    torch.testing.assert_close(enc.stages[0][0].weight, ref.conv1.weight)


def test_missing_weight_file_is_named(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_torchvision("resnet18", str(path), video=False)


def test_mismatching_weight_file_is_named(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="wrong.pth"):
        build_torchvision("resnet18", str(path), video=False)
    path2 = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1000, 512)}, path2)
    with pytest.raises(WeightsError, match="partial.pth.*missing keys"):
        build_torchvision("resnet18", str(path2), video=False)


def test_unknown_weight_enum_is_named():
    with pytest.raises(WeightsError, match="IMAGENET9K"):
        build_torchvision("resnet18", "IMAGENET9K", video=False)
    with pytest.raises(WeightsError, match="tiny"):
        SpatialEncoder(backbone="tiny", weights="DEFAULT")


def test_text_encoder_tiny_and_bundled_minilm_offline():
    tok = TextTokenizer.for_encoder(tokenizer="auto", text_encoder="minilm", max_words=8)
    enc = tok(["the dog jumping over the fence"])
    tiny = TextEncoder(name="tiny", pretrained=False)
    words, mask = tiny(enc["input_ids"], enc["attention_mask"])
    assert words.shape == (1, 8, tiny.hidden_size) and mask.dtype == torch.bool
    minilm = TextEncoder(name="minilm", pretrained=True).eval()
    with torch.no_grad():
        words, _ = minilm(enc["input_ids"], enc["attention_mask"])
    assert words.shape == (1, 8, 384) and torch.isfinite(words).all()


def test_text_encoder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        TextEncoder(name=str(tmp_path / "no_such_dir"), pretrained=True)
    with pytest.raises(ValueError, match="tiny"):
        TextEncoder(name="tiny", pretrained=True)
