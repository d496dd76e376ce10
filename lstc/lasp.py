"""LASP: language-aware semantic propagation from a deep decoder stage to the next shallower one.

The abstract: semantic information is propagated from deep to shallow stages by
language-aware *sampling* and *assignment*, highlighting language-compatible foreground
features and suppressing language-incompatible background. The formulas are ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lstc.layers import inv_sqrt, zero_init


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
    ``phi`` (exposed for inspection).
    """

    def __init__(
        self, *, deep_ch: int, shallow_ch: int, lang_dim: int, dim: int, prototypes: int
    ) -> None:
        super().__init__()
        self.k = prototypes
        self.dim = dim
        self.fg_vis = nn.Conv2d(deep_ch, dim, 1)
        self.fg_lang = nn.Linear(lang_dim, dim)
        self.fg_out = nn.Conv2d(dim, 1, 1)
        self.queries = nn.Linear(lang_dim, prototypes * dim)
        self.key = nn.Conv2d(deep_ch, dim, 1)
        self.value = nn.Conv2d(deep_ch, dim, 1)
        self.pixel = nn.Conv2d(shallow_ch, dim, 1)
        self.out = zero_init(nn.Conv2d(dim, shallow_ch, 1))
        self.beta = nn.Parameter(torch.zeros(shallow_ch))

    def foreground(self, deep: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """``phi [B, 1, h, w]``: language-aware foreground logits of the deep stage."""
        vis = F.normalize(self.fg_vis(deep), dim=1)
        lang = torch.tanh(self.fg_lang(sentence))[:, :, None, None]
        return self.fg_out(vis * lang)

    def sample(self, deep: torch.Tensor, sentence: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Prototypes ``[B, K+1, d]``; index 0 is the background prototype."""
        b = deep.shape[0]
        keys = self.key(deep).flatten(2)  # [B, d, hw]
        values = self.value(deep).flatten(2).transpose(1, 2)  # [B, hw, d]
        phi = phi.flatten(2)  # [B, 1, hw]
        q = self.queries(sentence).view(b, self.k, self.dim)
        fg_logits = torch.bmm(q, keys) * inv_sqrt(self.dim) + F.logsigmoid(phi)
        bg_logits = F.logsigmoid(-phi)
        weights = torch.softmax(torch.cat([bg_logits, fg_logits], dim=1), dim=-1)
        return torch.bmm(weights, values)

    def assign(self, shallow: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        b, _, h, w = shallow.shape
        px = self.pixel(shallow).flatten(2)  # [B, d, HW]
        aff = torch.softmax(torch.bmm(protos, px) * inv_sqrt(self.dim), dim=1)  # [B, K+1, HW]
        fg_aff = aff[:, 1:]
        share = fg_aff.sum(1, keepdim=True).view(b, 1, h, w)
        z = torch.bmm(protos[:, 1:].transpose(1, 2), fg_aff).view(b, self.dim, h, w)
        scale = 1 + self.beta.view(1, -1, 1, 1) * (2 * share - 1)
        return shallow * scale + self.out(z)

    def forward(
        self, deep: torch.Tensor, shallow: torch.Tensor, sentence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        phi = self.foreground(deep, sentence)
        protos = self.sample(deep, sentence, phi)
        return self.assign(shallow, protos), phi
