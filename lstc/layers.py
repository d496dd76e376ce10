"""Small building blocks shared by the LSTC modules (no learning logic of their own)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """Largest group count <= max_groups dividing `channels` with >= min_per_group channels each."""
    upper = max(1, min(max_groups, channels // min_per_group))
    for g in range(upper, 0, -1):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm for our new layers: batch-size independent (per-worker batches are tiny)."""
    return nn.GroupNorm(group_count(channels), channels)


class ConvNormAct(nn.Sequential):
    """``ReLU(GN(Conv_k(x)))`` in 1, 2 or 3 spatial dims."""

    def __init__(
        self, *, in_ch: int, out_ch: int, kernel: int = 3, stride: int | tuple = 1, dims: int = 2
    ) -> None:
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        super().__init__(
            conv(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            group_norm(out_ch),
            nn.ReLU(inplace=True),
        )


def coords8(height: int, width: int, *, device=None, dtype=None) -> torch.Tensor:
    """The 8-channel coordinate map of CSTM's release, ``[8, H, W]``.

    Per pixel (i, j) with normalised cell edges in [-1, 1]:
    ``(x_min, y_min, x_max, y_max, x_ctr, y_ctr, 1/W, 1/H)``.
    """
    xs = torch.arange(width, device=device, dtype=torch.float32)
    ys = torch.arange(height, device=device, dtype=torch.float32)
    x_min = xs / width * 2 - 1
    x_max = (xs + 1) / width * 2 - 1
    y_min = ys / height * 2 - 1
    y_max = (ys + 1) / height * 2 - 1
    x_ctr, y_ctr = (x_min + x_max) / 2, (y_min + y_max) / 2

    def row(v: torch.Tensor) -> torch.Tensor:
        return v.view(1, width).expand(height, width)

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.view(height, 1).expand(height, width)

    ones = torch.ones(height, width, device=device)
    out = torch.stack(
        [
            row(x_min),
            col(y_min),
            row(x_max),
            col(y_max),
            row(x_ctr),
            col(y_ctr),
            ones / width,
            ones / height,
        ]
    )
    return out.to(dtype) if dtype is not None else out


@functools.lru_cache(maxsize=64)
def _cached_coords8(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    return coords8(height, width, device=device, dtype=dtype)


def coords_like(x: torch.Tensor) -> torch.Tensor:
    """coords8 broadcast to a feature map ``[B, C, *S]`` (last two dims are H, W): ``[B, 8, *S]``."""
    h, w = x.shape[-2:]
    if torch.compiler.is_compiling():
        c = coords8(h, w, device=x.device, dtype=x.dtype)
    else:  # constant per (size, device, dtype): build it once
        c = _cached_coords8(h, w, x.device, x.dtype)
    shape = (x.shape[0], 8, *x.shape[2:])
    view = (1, 8) + (1,) * (x.dim() - 4) + (h, w)
    return c.view(view).expand(shape)


class WordMask(NamedTuple):
    """A padding mask ``M [B, L]`` (True = a real word) in the forms CMAM uses, built once
    per forward and shared by every stage of both streams (instead of ``~M``, casts and
    ``masked_fill`` per stage): ``weight = M`` as ``[B, 1, L]`` in the features' dtype, and
    ``bias`` = 0 on real words, the dtype's lowest finite value on padding.

    ``softmax(s + bias) * weight`` is the masked softmax: padding gets exactly zero weight
    (``exp(lowest - max) = 0``; the final product also zeroes rows without any real word)."""

    valid: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def of(cls, mask: torch.Tensor, dtype: torch.dtype) -> WordMask:
        weight = mask.to(dtype).unsqueeze(1)
        return cls(mask, weight, (1 - weight) * torch.finfo(dtype).min)


def masked_mean(words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``words [B, L, D]`` over valid positions ``mask [B, L]`` -> ``[B, D]``."""
    m = mask.to(words.dtype).unsqueeze(-1)
    return (words * m).sum(1) / m.sum(1).clamp_min(1.0)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a 2D map to `size` (no-op when it already has it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def zero_init(layer: nn.Module) -> nn.Module:
    """Zero the weight (and bias) of a Linear/Conv so the branch it ends starts silent."""
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


def inv_sqrt(d: int) -> float:
    return 1.0 / math.sqrt(d)
