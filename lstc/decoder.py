"""Top-down decoder: per-stage spatial/temporal fusion, LASP between stages, a head per level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lstc.lasp import LASP, language_terms
from lstc.layers import ConvNormAct, resize_to


class StreamFusion(nn.Module):
    r"""Fuse the spatial feature ``S_k`` and the (aligned time slice of the) temporal ``T_k``.

    ``S~ = ConvNormAct1x1(S_k)``, ``T~ = ConvNormAct1x1(T_k)`` (to the level width d_k), then

    * ``concat`` (CSTM release): ``F_k = ConvNormAct3x3([S~ ; T~])``
    * ``sum`` (ours): ``F_k = ConvNormAct3x3(S~ + T~)``
    * ``gated`` (ours): ``g = sigmoid(Conv3x3([S~ ; T~]))`` (zero-init: g = 1/2),
      ``F_k = ConvNormAct3x3(g * S~ + (1 - g) * T~)``
    * one stream only: ``F_k = ConvNormAct3x3(X~)``.
    """

    def __init__(
        self, *, spatial_ch: int | None, temporal_ch: int | None, out_ch: int, mode: str
    ) -> None:
        super().__init__()
        self.mode = mode
        self.proj_s = ConvNormAct(in_ch=spatial_ch, out_ch=out_ch, kernel=1) if spatial_ch else None
        self.proj_t = (
            ConvNormAct(in_ch=temporal_ch, out_ch=out_ch, kernel=1) if temporal_ch else None
        )
        both = spatial_ch is not None and temporal_ch is not None
        in_ch = 2 * out_ch if both and mode == "concat" else out_ch
        self.gate = None
        if both and mode == "gated":
            self.gate = nn.Conv2d(2 * out_ch, out_ch, 3, padding=1)
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        self.fuse = ConvNormAct(in_ch=in_ch, out_ch=out_ch)

    def forward(self, s: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor:
        if self.proj_s is not None and self.proj_t is not None:
            s, t = self.proj_s(s), self.proj_t(resize_to(t, s.shape[-2:]))
            if self.mode == "concat":
                x = torch.cat([s, t], dim=1)
            elif self.mode == "sum":
                x = s + t
            else:
                g = torch.sigmoid(self.gate(torch.cat([s, t], dim=1)))
                x = g * s + (1 - g) * t
        elif self.proj_s is not None:
            x = self.proj_s(s)
        else:
            x = self.proj_t(t)
        return self.fuse(x)


class Decoder(nn.Module):
    r"""Top-down decoder over 5 stages (k = 5 deepest, stride 32 ... k = 1, stride 2).

    * ``F_k = Fuse_k(S_k, T_k)``                                      (StreamFusion)
    * ``D_5 = F_5``;  for k = 4..1:
      ``X_k = LASP_k(D_{k+1}, F_k, s)`` if LASP is on, else ``F_k``;
      ``D_k = ConvNormAct3x3(X_k + Up(R_k D_{k+1}))``  (R_k: 1x1 conv when widths differ)
    * ``D_0 = ConvNormAct3x3(Up(R_0 D_1))`` at stride 1
    * heads ``y_k = Conv1x1(D_k) -> 1`` (deep supervision), output ``y_0`` at full resolution.

    Like the release (:class:`ReleaseDecoder`): per-stage projection, concat fusion,
    top-down x2 bilinear upsampling to stride 1, a mask head per level. Not the release:
    1x1 projections (release 3x3), one fusion conv per level and a sum merge with the
    upsampled deeper level (release: a second concat + 3x3 conv), decreasing widths
    ``decoder_dims`` (release 256 everywhere), 1x1 heads (release 3x3-3x3-1x1 at 256),
    a 3x3 conv at stride 1, GroupNorm, ``align_corners=False``; plus LASP between stages.
    """

    def __init__(
        self,
        *,
        spatial_channels: Sequence[int] | None,
        temporal_channels: Sequence[int] | None,
        dims: Sequence[int],
        head_dim: int,
        fusion: str,
        lasp: bool,
        lang_dim: int,
        lasp_dim: int,
        lasp_prototypes: int,
    ) -> None:
        super().__init__()
        levels = len(dims)  # deepest first
        s_ch = list(reversed(spatial_channels)) if spatial_channels else [None] * levels
        t_ch = list(reversed(temporal_channels)) if temporal_channels else [None] * levels
        self.fusions = nn.ModuleList(
            StreamFusion(spatial_ch=s_ch[i], temporal_ch=t_ch[i], out_ch=dims[i], mode=fusion)
            for i in range(levels)
        )
        self.lasps = (
            nn.ModuleList(
                LASP(
                    deep_ch=dims[i - 1],
                    shallow_ch=dims[i],
                    lang_dim=lang_dim,
                    dim=lasp_dim,
                    prototypes=lasp_prototypes,
                )
                for i in range(1, levels)
            )
            if lasp
            else None
        )
        all_dims = [*dims, head_dim]
        self.reduces = nn.ModuleList(
            nn.Identity()
            if all_dims[i] == all_dims[i + 1]
            else nn.Conv2d(all_dims[i], all_dims[i + 1], 1)
            for i in range(levels)
        )
        self.merges = nn.ModuleList(
            ConvNormAct(in_ch=all_dims[i + 1], out_ch=all_dims[i + 1]) for i in range(levels)
        )
        self.heads = nn.ModuleList(nn.Conv2d(d, 1, 1) for d in all_dims)

    def forward(
        self,
        spatial: Sequence[torch.Tensor] | None,
        temporal: Sequence[torch.Tensor] | None,
        sentence: torch.Tensor,
        out_size: tuple[int, int],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Stage features shallow-first (as the encoders produce them) -> (logits, aux, fg)."""
        levels = len(self.fusions)
        s_feats = list(reversed(spatial)) if spatial is not None else [None] * levels
        t_feats = list(reversed(temporal)) if temporal is not None else [None] * levels
        # the sentence-only terms of every LASP in one matmul
        terms = language_terms(self.lasps, sentence) if self.lasps is not None else None
        d = self.fusions[0](s_feats[0], t_feats[0])
        aux, fg = [self.heads[0](d)], []
        for i in range(1, levels):
            x = self.fusions[i](s_feats[i], t_feats[i])
            if self.lasps is not None:
                x, phi = self.lasps[i - 1](d, x, sentence, terms[i - 1])
                fg.append(phi)
            up = resize_to(self.reduces[i - 1](d), x.shape[-2:])
            d = self.merges[i - 1](x + up)
            aux.append(self.heads[i](d))
        d = self.merges[-1](resize_to(self.reduces[-1](d), out_size))
        return self.heads[-1](d), aux, fg


def conv_bn_relu(in_ch: int, out_ch: int, *, bias: bool) -> nn.Sequential:
    """``ReLU(BN(Conv3x3(x)))`` as the release writes it (bias as given)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def mask_head(width: int) -> nn.Sequential:
    """The release's mask head: ``Conv1x1(ReLU(Conv3x3(ReLU(Conv3x3(x)))))`` -> 1 channel."""
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, 1, 1),
    )


def up2(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The release's x2 upsampling: bilinear with ``align_corners=True`` (to `size`)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ReleaseDecoder(nn.Module):
    r"""The CSTM release's decoder (``decoder_style="release"``), + optional LASP (ours).

    With width ``w`` (256 in the release), stage features ``S_k`` (spatial) and ``T_k``
    (temporal time slice), k = 5 deepest (stride 32) ... 1 (stride 2):

    * projections ``S~_k = CBR3x3(S_k)``, ``T~_k = CBR3x3(T_k)`` to ``w`` (conv without bias,
      BN, ReLU: ``ires_trans`` / ``vres_trans``)
    * ``D_5 = F1_5([S~_5 ; T~_5])``
    * for k = 4..1: ``X_k = F1_k([T~_k ; S~_k])``; with LASP (ours) ``X_k <- LASP_k(D_{k+1},
      X_k, s)``; ``D_k = F2_k([Up(D_{k+1}) ; X_k])``
    * ``D_0 = Up(D_1)`` (stride 1, no conv)
    * six heads ``y_k = Head(D_k)``, ``Head = Conv1x1(ReLU(Conv3x3(ReLU(Conv3x3(.)))))`` at
      ``w`` channels; ``y_0`` is the output, ``y_5 .. y_1`` the deep supervision.

    ``F1``, ``F2``: ``CBR3x3(2w -> w)`` with conv bias (``conv_fuse1`` / ``conv_fuse2``; two
    fusion convs per level except the deepest); ``Up``: x2 bilinear, ``align_corners=True``;
    concatenation orders as in the release (spatial first at the deepest level, temporal
    first above it). Parameters: projections ``9 C_k w + 2w`` each, fusions ``9 (2w) w + w +
    2w`` each (5 + 4), heads ``2 (9 w^2 + w) + w + 1`` each (6).
    Not the release: with one stream (``streams`` ablation) ``F1`` takes ``w`` channels.
    """

    def __init__(
        self,
        *,
        spatial_channels: Sequence[int] | None,
        temporal_channels: Sequence[int] | None,
        width: int,
        lasp: bool,
        lang_dim: int,
        lasp_dim: int,
        lasp_prototypes: int,
    ) -> None:
        super().__init__()
        levels = len(spatial_channels or temporal_channels or ())
        s_ch = list(reversed(spatial_channels)) if spatial_channels else None
        t_ch = list(reversed(temporal_channels)) if temporal_channels else None
        self.proj_s = (
            nn.ModuleList(conv_bn_relu(c, width, bias=False) for c in s_ch) if s_ch else None
        )
        self.proj_t = (
            nn.ModuleList(conv_bn_relu(c, width, bias=False) for c in t_ch) if t_ch else None
        )
        fused_in = width * (2 if s_ch and t_ch else 1)
        self.fuse1 = nn.ModuleList(conv_bn_relu(fused_in, width, bias=True) for _ in range(levels))
        self.fuse2 = nn.ModuleList(
            conv_bn_relu(2 * width, width, bias=True) for _ in range(levels - 1)
        )
        self.lasps = (
            nn.ModuleList(
                LASP(
                    deep_ch=width,
                    shallow_ch=width,
                    lang_dim=lang_dim,
                    dim=lasp_dim,
                    prototypes=lasp_prototypes,
                )
                for _ in range(levels - 1)
            )
            if lasp
            else None
        )
        self.heads = nn.ModuleList(mask_head(width) for _ in range(levels + 1))

    def _level(self, i: int, s: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.proj_s is not None:
            parts.append(self.proj_s[i](s))
        if self.proj_t is not None:
            pt = self.proj_t[i](t)
            # the release concatenates [S; T] at the deepest level and [T; S] above it
            parts = parts + [pt] if i == 0 else [pt, *parts]
        return self.fuse1[i](torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])

    def forward(
        self,
        spatial: Sequence[torch.Tensor] | None,
        temporal: Sequence[torch.Tensor] | None,
        sentence: torch.Tensor,
        out_size: tuple[int, int],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Stage features shallow-first -> (logits at stride 1, aux deepest first, LASP fg)."""
        levels = len(self.fuse1)
        s_feats = list(reversed(spatial)) if spatial is not None else [None] * levels
        t_feats = list(reversed(temporal)) if temporal is not None else [None] * levels
        terms = language_terms(self.lasps, sentence) if self.lasps is not None else None
        d = self._level(0, s_feats[0], t_feats[0])
        aux, fg = [self.heads[0](d)], []
        for i in range(1, levels):
            x = self._level(i, s_feats[i], t_feats[i])
            if self.lasps is not None:
                x, phi = self.lasps[i - 1](d, x, sentence, terms[i - 1])
                fg.append(phi)
            d = self.fuse2[i - 1](torch.cat([up2(d, x.shape[-2:]), x], dim=1))
            aux.append(self.heads[i](d))
        return self.heads[-1](up2(d, out_size)), aux, fg
