"""Inception-v1 I3D (Kinetics-400 layout), the temporal encoder of the CSTM release.

Architecture (Carreira & Zisserman 2017, as ported to PyTorch by the ``kinetics_i3d_pytorch``
code the release vendors as ``models/backbones/pytorch_i3d.py``; written here from its
description):

* ``Unit3D(cin, cout, k, s) = ReLU(BN3d(Conv3d_k,s(pad_tf(x))))``, conv without bias;
  ``pad_tf``: TensorFlow "SAME" padding with the port's static rule
  ``pad = max(k - s, 0)`` per axis, ``pad // 2`` before and the rest after (a plain
  symmetric conv padding when both sides are equal);
* ``Pool(k, s) = MaxPool3d_k,s(ceil_mode)(ZeroPad_tf(x))``, same padding rule;
* ``Mixed(cin, [a, b, c, d, e, f]) = concat(Unit3D_1(cin->a),
  Unit3D_3(Unit3D_1(cin->b) -> c), Unit3D_3(Unit3D_1(cin->d) -> e),
  Unit3D_1(Pool_3,1(x) -> f))``, output ``a + c + e + f`` channels;
* layers: ``conv3d_1a_7x7`` (3->64, k7, s2), ``maxPool3d_2a_3x3`` (1x3x3, s 1x2x2),
  ``conv3d_2b_1x1`` (64->64), ``conv3d_2c_3x3`` (64->192), ``maxPool3d_3a_3x3`` (1x3x3,
  s 1x2x2), ``mixed_3b``, ``mixed_3c`` (480), ``maxPool3d_4a_3x3`` (3x3x3, s2),
  ``mixed_4b`` ... ``mixed_4f`` (832), ``maxPool3d_5a_2x2`` (2x2x2, s2), ``mixed_5b``,
  ``mixed_5c`` (1024). The Kinetics classifier ``conv3d_0c_1x1`` is not built: the release
  model never uses it.

Module names equal the checkpoint keys of the release's ``pretrained_weights/i3d_rgb.pth``
(``conv3d_1a_7x7.conv3d.weight``, ``mixed_4b.branch_1.1.batch3d.running_var``, ...), so that
file loads with :func:`load_i3d_state` (the classifier keys in it are ignored). The release
splits the network into five stages exactly like :data:`I3D_STAGES`; for an ``8 x H x W``
clip they give ``64 x 4 x H/2``, ``192 x 4 x H/4``, ``480 x 4 x H/8``, ``832 x 2 x H/16``,
``1024 x 1 x H/32``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Mixed blocks: name -> (input channels, [b0, b1a, b1b, b2a, b2b, b3]) of the release
MIXED: dict[str, tuple[int, tuple[int, ...]]] = {
    "mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}

#: the release's five stages (``t_layer1`` ... ``t_layer5`` of ``CSTMModel``)
I3D_STAGES: tuple[tuple[str, ...], ...] = (
    ("conv3d_1a_7x7",),
    ("maxPool3d_2a_3x3", "conv3d_2b_1x1", "conv3d_2c_3x3"),
    ("maxPool3d_3a_3x3", "mixed_3b", "mixed_3c"),
    ("maxPool3d_4a_3x3", "mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"),
    ("maxPool3d_5a_2x2", "mixed_5b", "mixed_5c"),
)
I3D_CHANNELS: tuple[int, ...] = (64, 192, 480, 832, 1024)
#: keys of the Kinetics classifier in i3d_rgb.pth (not part of the encoder)
CLASSIFIER_PREFIX = "conv3d_0c_1x1."


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (int(v[0]), int(v[1]), int(v[2]))


def tf_same_padding(kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` amounts (W, H, T order; before, after) of the port's static "SAME" rule."""
    pads = []
    for k, s in zip(reversed(tuple(kernel)), reversed(tuple(stride))):
        total = max(k - s, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class Unit3D(nn.Module):
    """``ReLU(BN3d(Conv3d(pad_tf(x))))``, conv without bias (keys ``conv3d``, ``batch3d``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        *,
        relu: bool = True,
    ) -> None:
        super().__init__()
        k, s = _triple(kernel), _triple(stride)
        pads = tf_same_padding(k, s)
        symmetric = all(p == pads[0] for p in pads)
        self.pad = None if symmetric else pads
        self.conv3d = nn.Conv3d(
            in_ch, out_ch, k, stride=s, padding=pads[0] if symmetric else 0, bias=False
        )
        self.batch3d = nn.BatchNorm3d(out_ch)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        x = self.batch3d(self.conv3d(x))
        return F.relu(x) if self.relu else x


class TFMaxPool3d(nn.Module):
    """``MaxPool3d(ceil_mode=True)`` after zero "SAME" padding (the port's pooling)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.pads = tf_same_padding(self.kernel, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pads)
        return F.max_pool3d(x, self.kernel, self.stride, ceil_mode=True)


class Mixed(nn.Module):
    """Inception block: four branches concatenated (see the module docstring)."""

    def __init__(self, in_ch: int, widths: Sequence[int]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.branch_0 = Unit3D(in_ch, b0)
        self.branch_1 = nn.Sequential(Unit3D(in_ch, b1a), Unit3D(b1a, b1b, 3))
        self.branch_2 = nn.Sequential(Unit3D(in_ch, b2a), Unit3D(b2a, b2b, 3))
        self.branch_3 = nn.Sequential(TFMaxPool3d((3, 3, 3), (1, 1, 1)), Unit3D(in_ch, b3))
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch_0, self.branch_1, self.branch_2, self.branch_3)
        return torch.cat([b(x) for b in branches], dim=1)


class I3D(nn.Module):
    """The I3D feature extractor (no classifier); ``stages()`` gives the release's 5 stages."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, 2)
        self.maxPool3d_2a_3x3 = TFMaxPool3d((1, 3, 3), (1, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.maxPool3d_3a_3x3 = TFMaxPool3d((1, 3, 3), (1, 2, 2))
        self.maxPool3d_4a_3x3 = TFMaxPool3d((3, 3, 3), (2, 2, 2))
        self.maxPool3d_5a_2x2 = TFMaxPool3d((2, 2, 2), (2, 2, 2))
        for name, (cin, widths) in MIXED.items():
            self.add_module(name, Mixed(cin, widths))

    def stages(self) -> nn.ModuleList:
        """The five stages as ``nn.Sequential`` views sharing this module's layers."""
        return nn.ModuleList(
            nn.Sequential(*(getattr(self, n) for n in names)) for names in I3D_STAGES
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


def load_i3d_state(net: I3D, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load an ``i3d_rgb.pth``-layout state dict into `net` (strict on the encoder's keys).

    Accepted: the release file's keys (with or without a ``module.`` prefix, with or without
    BatchNorm's ``num_batches_tracked``); the classifier ``conv3d_0c_1x1.*`` is ignored.
    Anything missing, unexpected or of another shape raises ``ValueError`` naming `source`.
    """
    own = net.state_dict()
    clean = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.removeprefix("module.").startswith(CLASSIFIER_PREFIX)
    }
    missing = [k for k in own if k not in clean and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in clean if k not in own]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in clean.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source!r} is not an I3D (Inception-v1, i3d_rgb.pth layout) state dict: "
            f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected keys "
            f"{unexpected[:4]}{'...' if len(unexpected) > 4 else ''}, shape mismatches "
            f"{wrong[:3]}{'...' if len(wrong) > 3 else ''}"
        )
    net.load_state_dict(clean, strict=False)


__all__ = [
    "I3D",
    "I3D_CHANNELS",
    "I3D_STAGES",
    "MIXED",
    "Mixed",
    "TFMaxPool3d",
    "Unit3D",
    "load_i3d_state",
    "tf_same_padding",
]
