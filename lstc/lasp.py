"""LASP: language-aware semantic propagation from a deep decoder stage to the next shallower one.

The abstract: semantic information is propagated from deep to shallow stages by
language-aware *sampling* and *assignment*, highlighting language-compatible foreground
features and suppressing language-incompatible background. The formulas are ours.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lstc.layers import zero_init


class LASP(nn.Module):
    r"""Language-aware sampling (deep stage) and assignment (shallow stage).

    Inputs: deep features ``D in R^{C_d x h x w}``, shallow features ``X in R^{C_s x H x W}``,
    sentence vector ``s in R^{D_l}``. With ``d`` = `dim`, ``K`` = `prototypes`:

    1. Language-aware foreground estimate on the deep stage
       ``phi(p) = w_f . (norm(W_a D_p) * tanh(W_s s)) + b_f``, ``m(p) = sigmoid(phi(p))``.
    2. Sampling: K language-conditioned queries ``q_j = (W_Q s)_j`` pick foreground features
       ``a_j(p) = softmax_p(q_j . W_k D_p / sqrt(d) + log m(p))``,
       ``P_j = sum_p a_j(p) W_v D_p`` (j = 1..K); one background prototype
       ``P_0 = sum_p softmax_p(log(1 - m(p))) W_v D_p``.
    3. Assignment: each shallow pixel is matched to the prototypes
       ``A(q, j) = softmax_{j in 0..K}(W_x X_q . P_j / sqrt(d))``; its foreground share
       ``f(q) = sum_{j>=1} A(q, j)`` and assigned semantics ``Z_q = sum_{j>=1} A(q, j) P_j``.
    4. Enhancement / suppression:
       ``X'_q = X_q * (1 + beta * (2 f(q) - 1)) + W_o Z_q``, with ``beta = 0`` and ``W_o = 0``
       at init, so LASP starts as the identity.

    Pixels that resemble the sampled language-compatible prototypes are amplified and receive
    deep semantics; pixels closer to the background prototype are damped. The cost is linear
    in the number of pixels (K+1 prototypes). Returns ``X'`` and the foreground logits
    ``phi``; the model exposes them as ``out.lasp_logits``; the loss can supervise them with
    the referred mask (``LossConfig.lasp_weight``, off by default: then phi is learned end to
    end through the sampling weights).
    """

    def __init__(
        self, *, deep_ch: int, shallow_ch: int, lang_dim: int, dim: int, prototypes: int
    ) -> None:
        super().__init__()
        self.k = prototypes
        self.dim = dim
        # one 1x1 conv gives W_a D, W_k D, W_v D; one linear gives W_s s and the K queries
        self.deep_proj = nn.Conv2d(deep_ch, 3 * dim, 1)
        self.lang_proj = nn.Linear(lang_dim, (1 + prototypes) * dim)
        self.fg_out = nn.Linear(dim, 1)
        self.pixel = nn.Conv2d(shallow_ch, dim, 1)
        self.out = zero_init(nn.Conv2d(dim, shallow_ch, 1))
        self.beta = nn.Parameter(torch.zeros(shallow_ch))

    @property
    def assign_width(self) -> int:
        """Feature width of the assignment attention: ``d + 1`` (``[P_j ; 1]``) rounded up to
        a multiple of 8 (the head-dim alignment fused attention kernels ask for); the extra
        columns are zeros on the pixel side, so they add nothing to ``X_q . P_j``."""
        return -(-(self.dim + 1) // 8) * 8

    def forward(
        self,
        deep: torch.Tensor,
        shallow: torch.Tensor,
        sentence: torch.Tensor,
        terms: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`terms`: this LASP's ``(u, queries)`` from :func:`language_terms` when the decoder
        computed them for all stages at once; otherwise computed here."""
        b, d, k, e = deep.shape[0], self.dim, self.k, self.assign_width
        h, w = deep.shape[-2:]
        u, queries = language_terms([self], sentence)[0] if terms is None else terms
        proj = self.deep_proj(deep).flatten(2)  # [B, 3d, hw] = [W_a D ; W_k D ; W_v D]
        vis = proj[:, :d]
        # 1. phi(p) = w_f . (vis_p / |vis_p| * tanh(W_s s)) + b_f = (u . vis_p) / |vis_p| + b_f
        #    with u = w_f * tanh(W_s s)  [B, 1, hw]
        norm = vis.norm(dim=1, keepdim=True).clamp_min(1e-12)
        phi = torch.addcdiv(self.fg_out.bias, torch.bmm(u, vis), norm)
        # 2. sampling, one attention over positions: row 0 (background) has a zero query and
        #    the bias log(1 - m) = logsigmoid(-phi), rows 1..K add log m = logsigmoid(phi).
        #    Written out (baddbmm, softmax, bmm): the bias needs a gradient, which the fused
        #    CPU kernel does not give, and keys/values are read in place from the projection
        sign, value_mask = _constants(k, d, e, phi.device, phi.dtype)
        bias = F.logsigmoid(phi * sign)  # [B, K+1, hw]
        logits = torch.baddbmm(bias, queries, proj[:, d : 2 * d], alpha=d**-0.5)
        protos = torch.bmm(torch.softmax(logits, dim=-1), proj[:, 2 * d :].transpose(1, 2))
        # 3. assignment, one fused attention of each pixel over the K+1 prototypes. Pixels
        #    [W_x X_q ; 0], keys [P_j ; 1], values [P_j ; 1] (j >= 1) and [0 ; -1] (j = 0),
        #    zero-padded to e columns: the output is [Z_q ; 2 f(q) - 1 ; 0]
        weight = F.pad(self.pixel.weight, (0, 0, 0, 0, 0, 0, 0, e - d))
        px = F.conv2d(shallow, weight, F.pad(self.pixel.bias, (0, e - d)))
        px = px.flatten(2).transpose(1, 2).contiguous().unsqueeze(1)  # [B, 1, HW, e]
        keys = F.pad(protos, (0, e - d), value=1.0).unsqueeze(1)  # [B, 1, K+1, e]
        out = F.scaled_dot_product_attention(px, keys, keys * value_mask, scale=d**-0.5)
        out = out.squeeze(1).transpose(1, 2).unflatten(2, shallow.shape[-2:])  # [B, e, H, W]
        z, fg2 = out[:, :d], out[:, d : d + 1]
        # 4. X' = X (1 + beta (2 f - 1)) + W_o Z = X + X * beta (2 f - 1) + W_o Z
        enhanced = torch.addcmul(shallow, shallow, self.beta.view(1, -1, 1, 1) * fg2)
        return enhanced + self.out(z), phi.view(b, 1, h, w)


def language_terms(
    lasps: Sequence[LASP], sentence: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The sentence-only terms of LASPs of equal `dim` and `prototypes`, for all of them at
    once (one matmul over their ``lang_proj`` weights concatenated at call time; the
    parameters stay per LASP): per LASP ``u = w_f * tanh(W_s s)  [B, 1, d]`` and the sampling
    queries ``[0 ; W_Q s]  [B, K+1, d]`` (row 0: the background's zero query)."""
    n, k, d = len(lasps), lasps[0].k, lasps[0].dim
    if n == 1:
        weight, bias, fg = lasps[0].lang_proj.weight, lasps[0].lang_proj.bias, lasps[0].fg_out
        fg_weight = fg.weight
    else:
        weight = torch.cat([m.lang_proj.weight for m in lasps])
        bias = torch.cat([m.lang_proj.bias for m in lasps])
        fg_weight = torch.cat([m.fg_out.weight for m in lasps])  # [n, d]
    proj = F.linear(sentence, weight, bias).view(-1, n, 1 + k, d)
    u = torch.tanh(proj[:, :, 0]) * fg_weight  # [B, n, d]
    queries = F.pad(proj[:, :, 1:], (0, 0, 1, 0))  # [B, n, K+1, d]
    return [(u[:, i : i + 1], queries[:, i]) for i in range(n)]


@functools.lru_cache(maxsize=32)
def _cached_constants(
    k: int, d: int, e: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    # normal tensors even when first built under inference_mode: autograd saves them later
    with torch.inference_mode(False):
        sign = torch.ones(1, k + 1, 1, device=device, dtype=dtype)
        sign[0, 0] = -1
        value_mask = torch.zeros(k + 1, e, device=device, dtype=dtype)
        value_mask[1:, : d + 1] = 1
        value_mask[0, d] = -1
    return sign, value_mask


def _constants(
    k: int, d: int, e: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sign = (-1, 1, .., 1)`` over the K+1 sampling rows ``[1, K+1, 1]``; the value mask
    ``[K+1, e]`` that turns ``[P_j ; 1 ; 1..]`` into the assignment's values."""
    if torch.compiler.is_compiling():  # constants of the graph
        return _cached_constants.__wrapped__(k, d, e, device, dtype)
    return _cached_constants(k, d, e, device, dtype)
