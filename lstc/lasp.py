"""LASP: language-aware semantic propagation from a deep decoder stage to the next shallower one.

The abstract: semantic information is propagated from deep to shallow stages by
language-aware *sampling* and *assignment*, highlighting language-compatible foreground
features and suppressing language-incompatible background. The formulas are ours.
"""

from __future__ import annotations

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

    def forward(
        self, deep: torch.Tensor, shallow: torch.Tensor, sentence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, d, k = deep.shape[0], self.dim, self.k
        h, w = deep.shape[-2:]
        vis, keys, values = self.deep_proj(deep).flatten(2).transpose(1, 2).split(d, dim=-1)
        lang, queries = self.lang_proj(sentence).split([d, k * d], dim=-1)
        # 1. language-aware foreground estimate phi(p)  [B, hw, 1]
        phi = self.fg_out(F.normalize(vis, dim=-1) * torch.tanh(lang).unsqueeze(1))
        # 2. sampling, one fused attention: the background row has a zero query, so its
        #    weights are softmax_p(log(1 - m)); the K foreground rows add log m(p)
        phi_t = phi.transpose(1, 2)  # [B, 1, hw]
        bias = torch.cat([F.logsigmoid(-phi_t), F.logsigmoid(phi_t).expand(-1, k, -1)], dim=1)
        q = F.pad(queries.view(b, k, d), (0, 0, 1, 0))  # [B, K+1, d], row 0 = 0
        protos = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
        # 3. assignment, one fused attention over the K+1 prototypes per pixel whose values
        #    are [P_j ; 1] (foreground) and [0 ; 0] (background): output [Z_q ; f(q)]
        px = self.pixel(shallow).flatten(2).transpose(1, 2)  # [B, HW, d]
        vals = F.pad(F.pad(protos[:, 1:], (0, 1), value=1.0), (0, 0, 1, 0))
        out = F.scaled_dot_product_attention(px, protos, vals).transpose(1, 2)
        out = out.reshape(b, d + 1, *shallow.shape[-2:])
        z, share = out[:, :d], out[:, d:]
        # 4. enhancement / suppression
        scale = 1 + self.beta.view(1, -1, 1, 1) * (2 * share - 1)
        return shallow * scale + self.out(z), phi.transpose(1, 2).reshape(b, 1, h, w)
