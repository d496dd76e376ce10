"""Spatial (2D, target frame) and temporal (3D, clip) encoders, five stages each.

Both encoders expose ``stages: nn.ModuleList`` (run one at a time so that CMAM can act after
each stage), ``channels`` (output width of each stage) and ``normalize(x)``.

Spatial (follows CSTM's release: ResNet-50 on the target frame, strides 2/4/8/16/32):
    stage1 = ReLU(BN(conv1(x)))           stride 2
    stage2 = layer1(maxpool(.))           stride 4
    stage3..5 = layer2, layer3, layer4    strides 8, 16, 32

Temporal: ``i3d`` is the release's Inception-v1 I3D (lstc/i3d.py; weights from the
release's ``i3d_rgb.pth``), stages conv1a / pool2a+2b+2c / pool3a+3b+3c / pool4a+4b..4f /
pool5a+5b+5c. Ours: torchvision's S3D, the closest library relative, or R(2+1)D-18. torchvision's S3D `features` split at its max-pools gives exactly I3D's
stage layout (checked on a 64x64x8 input):
    stage1 = features[0]      64 ch,  stride 2 (time /2)
    stage2 = features[1:4]   192 ch,  stride 4
    stage3 = features[4:7]   480 ch,  stride 8
    stage4 = features[7:13]  832 ch,  stride 16 (time /4)
    stage5 = features[13:16] 1024 ch, stride 32 (time /8)
R(2+1)D-18 has no max-pool after its stem (layer1 keeps stride 2), so -- our adaptation --
a parameter-free spatial max-pool (1x3x3, stride 1x2x2) is inserted before layer1, mirroring
ResNet; stages are then stem / pool+layer1 / layer2 / layer3 / layer4 at strides 2..32.

The decoder gets one time slice per temporal stage, the one aligned with the target frame:
``index_l = min(T_l - 1, floor(target_index * T_l / T))`` (see `aligned_slice`).

"tiny" backbones (ours, for tests/CPU): two ConvNormAct per stage, widths w*(1,2,4,8,8),
GroupNorm; the 3D one strides time by 2 in stages 3 and 4 so the slice logic is exercised.
The tiny 3D encoder has one bundled weight set, ``SHAPES_MOTION_V1`` (width 8): motion
classification of synthetic shapes, the miniature's Kinetics-400 (``lstc pretrain-temporal``,
pipelines/motion_pretrain.py; lstc/pretrained/ holds the file and its record); it also loads
a state-dict file that command wrote.

Weights: None (random), a torchvision weight-enum member name, or a local state-dict file
(a missing or mismatching file raises an error naming it). I3D has no torchvision weights:
give the path of ``i3d_rgb.pth`` (Kinetics-400, the release's file).

Input normalisation (``input_norm``): ``"backbone"`` (ours) standardises with the statistics
each backbone was trained with (ImageNet mean/std; Kinetics mean/std for torchvision video
models; ``2x - 1`` for I3D, the TensorFlow convention); ``"none"`` feeds the [0, 1] frames
as they are, which is what the release does (``transforms.ToTensor()`` only).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from lstc.i3d import I3D, I3D_CHANNELS, load_i3d_state
from lstc.layers import ConvNormAct

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

_ENUM_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

#: bundled weights of the tiny 3D encoder: name -> file in lstc/pretrained/
TINY_TEMPORAL_WEIGHTS = {"SHAPES_MOTION_V1": "tiny_temporal_shapes_motion_v1.pt"}
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


class WeightsError(ValueError):
    """A pretrained-weights spec cannot be used (the message names the file / enum)."""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weight file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weight file {str(path)!r}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"weight file {str(path)!r} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_torchvision(arch: str, spec: str | None, *, video: bool) -> nn.Module:
    """A torchvision classification model with weights from `spec` (see module doc)."""
    from torchvision import models
    from torchvision.models import get_model_weights

    builder = getattr(models.video if video else models, arch)
    if spec is None:
        return builder(weights=None)
    if _ENUM_NAME.match(spec) and not os.path.exists(spec):
        enum = get_model_weights(arch)
        if spec not in enum.__members__:
            raise WeightsError(
                f"{spec!r} is not a torchvision weight of {arch}; choose one of "
                f"{list(enum.__members__)} or give a state-dict file path"
            )
        try:
            return builder(weights=enum[spec])
        except OSError as exc:  # URLError, connection errors: no internet on this machine
            raise WeightsError(
                f"cannot download torchvision weights {arch} {spec} ({exc}); on a machine "
                "without internet fetch them once with `lstc weights fetch --recipe R --to DIR` "
                "and use DIR/recipe.yaml, or give a local state-dict path"
            ) from exc
    path = Path(spec).expanduser()
    state = _read_state_dict(path)
    model = builder(weights=None)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise WeightsError(f"weight file {str(path)!r} does not fit {arch}: {exc}") from exc
    if missing or unexpected:
        raise WeightsError(
            f"weight file {str(path)!r} does not fit {arch}: missing keys {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return model


def build_i3d(spec: str | None) -> I3D:
    """The release's I3D with weights from `spec`: None (random) or an ``i3d_rgb.pth`` path."""
    net = I3D()
    if spec is None:
        return net
    if _ENUM_NAME.match(spec) and not os.path.exists(spec):
        raise WeightsError(
            f"temporal_weights={spec!r}: I3D has no torchvision weights; give the path of the "
            "release's Kinetics-400 checkpoint i3d_rgb.pth (or null for random weights)"
        )
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"I3D weight file {str(path)!r} does not exist: set model.temporal_weights to the "
            "release's i3d_rgb.pth (or run `lstc weights fetch`)"
        )
    try:
        load_i3d_state(net, _read_state_dict(path), source=str(path))
    except ValueError as exc:
        raise WeightsError(str(exc)) from exc
    return net


class _Normalize(nn.Module):
    def __init__(
        self, *, mean: tuple[float, ...], std: tuple[float, ...], dims: int, on: bool = True
    ) -> None:
        super().__init__()
        if not on:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        shape = (1, 3) + (1,) * dims
        self.register_buffer("mean", torch.tensor(mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SpatialEncoder(nn.Module):
    """2D encoder of the target frame ``[B, 3, H, W]`` in [0, 1] (normalised inside)."""

    def __init__(
        self, *, backbone: str, weights: str | None, tiny_width: int = 8, normalize: bool = True
    ) -> None:
        super().__init__()
        self.normalize = _Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, dims=2, on=normalize)
        if backbone == "tiny":
            if weights is not None:
                raise WeightsError("the 'tiny' spatial backbone has no pretrained weights")
            w = tiny_width
            widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
            stages, prev = [], 3
            for c in widths:
                stages.append(
                    nn.Sequential(
                        ConvNormAct(in_ch=prev, out_ch=c, stride=2),
                        ConvNormAct(in_ch=c, out_ch=c),
                    )
                )
                prev = c
            self.stages = nn.ModuleList(stages)
            self.channels = widths
            return
        net = build_torchvision(backbone, weights, video=False)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(net.conv1, net.bn1, net.relu),
                nn.Sequential(net.maxpool, net.layer1),
                net.layer2,
                net.layer3,
                net.layer4,
            ]
        )
        expansion = 4 if backbone in ("resnet50", "resnet101") else 1
        self.channels = [64] + [c * expansion for c in (64, 128, 256, 512)]


class TemporalEncoder(nn.Module):
    """3D encoder of the clip ``[B, 3, T, H, W]`` in [0, 1] (normalised inside)."""

    def __init__(
        self, *, backbone: str, weights: str | None, tiny_width: int = 8, normalize: bool = True
    ) -> None:
        super().__init__()
        mean, std = ((0.5,) * 3, (0.5,) * 3) if backbone == "i3d" else (KINETICS_MEAN, KINETICS_STD)
        self.normalize = _Normalize(mean=mean, std=std, dims=3, on=normalize)
        if backbone == "tiny":
            w = tiny_width
            widths = [w, 2 * w, 4 * w, 8 * w, 8 * w]
            strides = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
            stages, prev = [], 3
            for c, s in zip(widths, strides):
                stages.append(
                    nn.Sequential(
                        ConvNormAct(in_ch=prev, out_ch=c, stride=s, dims=3),
                        ConvNormAct(in_ch=c, out_ch=c, dims=3),
                    )
                )
                prev = c
            self.stages = nn.ModuleList(stages)
            self.channels = widths
            if weights is not None:
                self._load_tiny(weights)
            return
        if backbone == "i3d":
            self.stages = build_i3d(weights).stages()
            self.channels = list(I3D_CHANNELS)
            return
        net = build_torchvision(backbone, weights, video=True)
        if backbone == "s3d":
            f = net.features
            self.stages = nn.ModuleList([f[0:1], f[1:4], f[4:7], f[7:13], f[13:16]])
            self.channels = [64, 192, 480, 832, 1024]
        else:  # r2plus1d_18
            pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
            self.stages = nn.ModuleList(
                [net.stem, nn.Sequential(pool, net.layer1), net.layer2, net.layer3, net.layer4]
            )
            self.channels = [64, 64, 128, 256, 512]

    def _load_tiny(self, spec: str) -> None:
        """``SHAPES_MOTION_V1`` (bundled) or a state-dict file of this tiny encoder."""
        if spec in TINY_TEMPORAL_WEIGHTS:
            path = PRETRAINED_DIR / TINY_TEMPORAL_WEIGHTS[spec]
        elif _ENUM_NAME.match(spec) and not os.path.exists(spec):
            raise WeightsError(
                f"temporal_weights={spec!r}: the 'tiny' 3D encoder's weights are "
                f"{list(TINY_TEMPORAL_WEIGHTS)} or a file written by `lstc pretrain-temporal`"
            )
        else:
            path = Path(spec).expanduser()
        state = _read_state_dict(path)
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch: another tiny_width
            raise WeightsError(
                f"weight file {str(path)!r} does not fit the tiny 3D encoder of this "
                f"tiny_width: {str(exc).splitlines()[-1].strip()}"
            ) from exc
        if missing or unexpected:
            raise WeightsError(
                f"weight file {str(path)!r} does not fit the tiny 3D encoder: missing keys "
                f"{missing[:5]}, unexpected keys {unexpected[:5]}"
            )


def aligned_slice(x: torch.Tensor, *, target_index: int, num_frames: int) -> torch.Tensor:
    """The time slice of ``x [B, C, T_l, H, W]`` aligned with the target frame -> ``[B, C, H, W]``.

    ``index = min(T_l - 1, floor(target_index * T_l / num_frames))``: with 8 frames and the
    target at 4, stages of length 8/4/2/1 give slices 4/2/1/0 (each covers the target frame).
    """
    t = x.shape[2]
    index = min(t - 1, (target_index * t) // num_frames)
    return x[:, :, index]
