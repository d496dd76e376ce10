"""CMAM (cross-modal adaptive modulation) and the CMAM+ progressive language update.

Both work on visual features of any spatial rank, ``V in R^{B x C x S}`` with ``S = H x W``
(spatial stream) or ``S = T x H x W`` (temporal stream), flattened to ``N`` positions, and on
word features ``W in R^{B x L x D}`` with padding mask ``M in {0,1}^{B x L}``.

Two CMAMs: :class:`ReleaseCMAM` is the CSTM release's module, layer for layer
(``cmam_style="release"``, the ``cstm`` presets); :class:`CMAM` is our lighter variant
(``cmam_style="ours"``, the ``paper``/``small``/``tiny`` presets). :class:`LanguageUpdate`
(CMAM+) is ours and works after either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lstc.layers import WordMask, coords_like, group_norm, zero_init


class CMAM(nn.Module):
    r"""Cross-modal adaptive modulation after one encoder stage.

    Equations (positions n = 1..N, words i = 1..L):

    * ``V' = ReLU(GN(Conv1x1([V ; coords8])))``                       (context features)
    * ``s_i = sum_n <W_q w_i, W_p V'_n>``                             (position-summed similarity)
    * ``s <- s / ||s||_2`` over the valid words; ``a = softmax_M(tau * s)``   (word weights)
    * ``l = sum_i a_i w_i``                                           (sentence vector)
    * ``V <- V + V' * (sigmoid(W_l l + b_l) - 0.5)``                 (channel modulation)

    With ``heads = H > 1`` (``model.cmam_heads``; 1 is the formula above, parameter for
    parameter) the similarity is split into ``H`` word weightings: query and key are cut into
    ``H`` slices of ``D / H`` features, ``s^h_i = sum_n <(W_q w_i)^h, (W_p V'_n)^h>``, each
    normalised and soft-maxed on its own, ``l^h = sum_i a^h_i w_i``, and the gate reads all of
    them: ``sigmoid(W_l [l^1; ...; l^H] + b_l) - 0.5`` (``W_l`` is ``C x HD``). One sentence
    vector must otherwise carry every word the gate needs (colour *and* motion, say) in one
    convex mixture; ``H`` mixtures can each settle on a different part of the expression.

    Same as the release (:class:`ReleaseCMAM`): coords8 concatenation, position-summed and
    L2-normalised word-pixel similarity, softmax over words, the ``sigmoid - 0.5`` residual
    modulation with a zero-initialised ``W_l, b_l`` (identity at the start). Because the
    visual features feed it, ``l`` is spatial-relevant after a 2D stage and temporal-relevant
    after a 3D stage.
    Not the release: the context features come from a **1x1** conv over each position
    (the release: 3x3 / 3x3x3, which mixes neighbouring positions and frames); keys are a
    plain 1x1 projection with bias and queries a Linear (release: conv + BatchNorm each);
    padding words are masked in the norm and in the softmax (the release does not mask);
    GroupNorm instead of BatchNorm (batch-size independent); a learnable temperature ``tau``
    (initialised to 1, i.e. the release's formula at the start).
    """

    def __init__(self, *, channels: int, lang_dim: int, heads: int = 1) -> None:
        super().__init__()
        if heads < 1 or lang_dim % heads:
            raise ValueError(f"CMAM heads={heads} must be >= 1 and divide lang_dim={lang_dim}")
        self.heads = heads
        self.context = nn.Sequential(
            nn.Conv1d(channels + 8, channels, 1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
        )
        self.vis_proj = nn.Conv1d(channels, lang_dim, 1)
        self.word_proj = nn.Linear(lang_dim, lang_dim)
        self.log_tau = nn.Parameter(torch.zeros(()))
        self.modulation = zero_init(nn.Linear(heads * lang_dim, channels))

    def word_weights(
        self,
        context: torch.Tensor,
        words: torch.Tensor,
        mask: WordMask,
        queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``a [B, H, L]`` from context features ``V' [B, C, N]`` (`queries`: ``W_q W + b_q``
        when already computed, see :func:`word_queries`)."""
        # sum_n (W_p V'_n + b_p) = W_p (sum_n V'_n) + N b_p: sum first, project once  [B, D]
        pooled = torch.addmm(
            self.vis_proj.bias,
            context.sum(-1),
            self.vis_proj.weight.flatten(1).t(),
            beta=context.shape[-1],
        )
        q = self.word_proj(words) if queries is None else queries  # [B, L, D]
        # s^h_i = <q^h_i, pooled^h>, 0 on padding words  [B, H, L]
        if self.heads == 1:
            scores = torch.bmm(pooled.unsqueeze(1), q.transpose(1, 2)) * mask.weight
        else:
            b, length, d = q.shape
            h = self.heads
            keys = pooled.view(b * h, 1, d // h)
            q = q.view(b, length, h, d // h).permute(0, 2, 3, 1).reshape(b * h, d // h, length)
            scores = torch.bmm(keys, q).view(b, h, length) * mask.weight
        # tau * s / ||s||, plus the padding bias, in one op
        scale = self.log_tau.exp() / scores.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return torch.softmax(torch.addcmul(mask.bias, scores, scale), dim=-1) * mask.weight

    def forward(
        self,
        v: torch.Tensor,
        words: torch.Tensor,
        mask: torch.Tensor | WordMask,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the modulated features, the sentence vector ``l [B, D]`` (the mean of the
        ``l^h`` when ``H > 1``) and the context features ``V'`` (both feature maps shaped like
        `v`). `mask`: ``[B, L]`` bool or the forward's shared :class:`~lstc.layers.WordMask`."""
        if not isinstance(mask, WordMask):
            mask = WordMask.of(mask, words.dtype)
        x = torch.cat([v, coords_like(v)], dim=1).flatten(2)
        context = self.context(x)  # [B, C, N]
        alpha = self.word_weights(context, words, mask, queries)
        sentences = torch.bmm(alpha, words)  # l^h  [B, H, D]
        gate = torch.sigmoid(self.modulation(sentences.flatten(1))) - 0.5  # [B, C]
        sentence = sentences.mean(1)  # [B, D]
        out = torch.addcmul(v.flatten(2), context, gate.unsqueeze(-1))
        return out.view_as(v), sentence, context.view_as(v)


def word_queries(cmams: Sequence[CMAM], words: torch.Tensor) -> list[torch.Tensor]:
    """``W_q^k W + b_q^k`` of every stage k for words that do not change between the stages
    (plain CMAM, no CMAM+ update): one matmul with the stages' weights concatenated at call
    time (the parameters stay per stage)."""
    if len(cmams) == 1:
        return [cmams[0].word_proj(words)]
    weight = torch.cat([c.word_proj.weight for c in cmams])
    bias = torch.cat([c.word_proj.bias for c in cmams])
    return list(F.linear(words, weight, bias).chunk(len(cmams), dim=-1))


class ReleaseCMAM(nn.Module):
    r"""CMAM exactly as the CSTM release builds it (``models/components/cmam.py``).

    For a stage output ``V [B, C, *S]`` (2D: ``S = H x W``; 3D: ``S = T x H x W``), words
    ``W [B, L, D]`` (``D`` = the GRU width, 512 in the release):

    * ``V' = ReLU(BN(Conv_k([V ; coords8])))``, conv without bias, ``k = 3 x 3`` (2D, the
      release's ``ConvBN``) or ``3 x 3 x 3`` (3D, its ``Unit3Dpy``)      (context features)
    * ``K = BN(Conv_1(V'))`` to ``D`` channels, no bias, no activation           (keys)
    * ``Q = BN1d(Conv1d_1(W^T))``, no bias                                       (queries)
    * ``s_i = sum_n <K_n, Q_i>``; ``s <- s / max(||s||_2, 1e-12)``; ``a = softmax_i(s)``
      over **all** ``L`` positions (padding included, as in the release)
    * ``l = sum_i a_i w_i``;  ``V <- V + V' * (sigmoid(W_l l + b_l) - 0.5)``, ``W_l, b_l = 0``
      at init (the release's ``zero_init=True``).

    Parameters: ``k^d (C + 8) C + 2C`` (context) ``+ C D + 2D`` (keys) ``+ D^2 + 2D``
    (queries) ``+ D C + C`` (modulation). `mask` is accepted for the common interface and
    not used (the release never masks padding words).
    """

    def __init__(self, *, channels: int, lang_dim: int, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.context = nn.Sequential(
            conv(channels + 8, channels, 3, padding=1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
        )
        self.key = nn.Sequential(conv(channels, lang_dim, 1, bias=False), norm(lang_dim))
        self.query = nn.Sequential(
            nn.Conv1d(lang_dim, lang_dim, 1, bias=False), nn.BatchNorm1d(lang_dim)
        )
        self.modulation = zero_init(nn.Linear(lang_dim, channels))

    def forward(
        self,
        v: torch.Tensor,
        words: torch.Tensor,
        mask: torch.Tensor | WordMask | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the modulated features, ``l [B, D]`` and ``V'`` (shaped like `v`)."""
        context = self.context(torch.cat([v, coords_like(v)], dim=1))
        key_sum = self.key(context).flatten(2).sum(-1)  # sum_n K_n  [B, D]
        query = self.query(words.transpose(1, 2))  # [B, D, L]
        scores = torch.bmm(key_sum.unsqueeze(1), query)  # [B, 1, L]
        alpha = torch.softmax(F.normalize(scores, p=2, dim=-1), dim=-1)
        sentence = torch.bmm(alpha, words).squeeze(1)  # [B, D]
        gate = torch.sigmoid(self.modulation(sentence)) - 0.5  # [B, C]
        gate = gate.view(*gate.shape, *([1] * (v.dim() - 2)))
        return torch.addcmul(v, context, gate), sentence, context


def _update_bound(bound: str) -> nn.Module:
    """``tanh``: the residual a CMAM+ update adds is kept in ``(-1, 1)`` per feature, the range
    of the text head's own ``tanh`` words; ``none``: unbounded (``model.update_bound``)."""
    if bound == "tanh":
        return nn.Tanh()
    if bound == "none":
        return nn.Identity()
    raise ValueError(f"update bound {bound!r}: choose 'tanh' or 'none'")


class _WordUpdate(nn.Module):
    """What both CMAM+ updates share: ``h`` heads and the bounded residual
    ``w + bound(W_o c)`` (subclasses create ``self.out``; their parameters keep their order)."""

    def __init__(self, *, heads: int, bound: str) -> None:
        super().__init__()
        self.heads = heads
        self._bound = _update_bound(bound)

    def _residual(self, words: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """``words [B, L, D]`` plus the bounded ``W_o c`` of the heads' context ``[B, h, L, dh]``."""
        return words + self._bound(self.out(ctx.transpose(1, 2).reshape(words.shape)))


class LanguageUpdate(_WordUpdate):
    r"""CMAM+'s progressive language update for one stage of one stream (our design).

    The abstract says the language features are updated progressively, stage by stage and
    separately for the spatial and temporal streams, to enrich linguistic global context. We
    let every word gather visual context of its stream by cross-attention over the stage's
    CMAM context features ``V'`` (which already carry coords8) and add it through a
    zero-initialised residual:

    * ``U = AvgPool_{<= P x P per frame}(V')``, positions ``n = 1..N'``
    * ``q_i = W_q LN(w_i)``, ``k_n = W_k U_n``, ``v_n = W_v U_n``           (h heads)
    * ``c_i = sum_n softmax_n(q_i . k_n / sqrt(d_h)) v_n``
    * ``w_i <- w_i + tanh(W_o c_i)``   with ``W_o = 0`` at init (identity at the start)

    Padding words are updated too but are masked everywhere downstream (CMAM's softmax, the
    decoder's sentence mean) and never act as keys, so they cannot influence real words.
    The refined words feed the next stage's update of the same stream, and the last ones the
    decoder (with ``model.update_feeds="all"`` the next stage's CMAM reads them too). The
    residual goes through ``tanh`` (``model.update_bound``): the text head's words lie in
    ``(-1, 1)``, and an unbounded residual trained on refer-shapes grew them 80-150x.
    Pooling to at most ``P x P`` positions per frame keeps the cost small at shallow,
    high-resolution stages.
    """

    def __init__(
        self, *, channels: int, lang_dim: int, heads: int, pool: int = 16, bound: str = "tanh"
    ) -> None:
        super().__init__(heads=heads, bound=bound)
        self.pool = pool
        self.norm = nn.LayerNorm(lang_dim)
        self.q = nn.Linear(lang_dim, lang_dim)
        self.kv = nn.Conv1d(channels, 2 * lang_dim, 1)
        self.out = zero_init(nn.Linear(lang_dim, lang_dim))

    def _pool(self, v: torch.Tensor) -> torch.Tensor:
        h, w = v.shape[-2:]
        if h <= self.pool and w <= self.pool:
            return v
        size = (min(h, self.pool), min(w, self.pool))
        if v.dim() == 5:
            return F.adaptive_avg_pool3d(v, (v.shape[2], *size))
        return F.adaptive_avg_pool2d(v, size)

    def forward(
        self,
        context: torch.Tensor,
        words: torch.Tensor,
        mask: torch.Tensor | WordMask | None = None,
    ) -> torch.Tensor:
        """`context`: CMAM's ``V'`` ``[B, C, *S]``; returns the refined words ``[B, L, D]``."""
        b, length, d = words.shape
        dh = d // self.heads
        # [W_k; W_v] U as one 1x1 conv, then positions-major: the fused attention kernel
        # wants each head's features contiguous
        kv = self.kv(self._pool(context).flatten(2)).transpose(1, 2).contiguous()  # [B, N', 2D]
        k, v = kv.view(b, -1, 2, self.heads, dh).permute(2, 0, 3, 1, 4)  # [B, h, N', dh] each
        q = self.q(self.norm(words)).view(b, length, self.heads, dh).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(q, k, v)  # [B, h, L, dh]
        return self._residual(words, ctx)


class SentenceContextUpdate(_WordUpdate):
    r"""CMAM+'s progressive language update, words-to-words (``update_attends="words"``).

    The abstract's update *enriches the linguistic global context* stage by stage and per
    stream. Here every word gathers context from the **other words** of its expression, with
    the choice of words steered by what the stream sees at this stage, so the refined words
    stay in the span of the language features (no visual values are written into them):

    * ``g = W_g mean_n V'_n``                          (the stage's global visual context)
    * ``x_i = LN(w_i)``; ``q_i = W_q x_i + g``, ``k_j = W_k x_j``, ``v_j = W_v x_j``  (h heads)
    * ``c_i = sum_j softmax_j(q_i . k_j / sqrt(d_h) | M_j) v_j``   (padding words never keys)
    * ``w_i <- w_i + tanh(W_o c_i)``   with ``W_o = 0`` at init (identity at the start)

    ``g`` adds ``g . k_j`` to every query's score of word ``j``: the stage decides which
    words the sentence context is made of (motion words after a 3D stage, say), while
    ``W_q x_i`` keeps each word's own syntax-like preferences.
    """

    def __init__(self, *, channels: int, lang_dim: int, heads: int, bound: str = "tanh") -> None:
        super().__init__(heads=heads, bound=bound)
        self.norm = nn.LayerNorm(lang_dim)
        self.visual = nn.Linear(channels, lang_dim)
        self.qkv = nn.Linear(lang_dim, 3 * lang_dim)
        self.out = zero_init(nn.Linear(lang_dim, lang_dim))

    def forward(
        self,
        context: torch.Tensor,
        words: torch.Tensor,
        mask: torch.Tensor | WordMask | None = None,
    ) -> torch.Tensor:
        """`context`: CMAM's ``V'`` ``[B, C, *S]``; returns the refined words ``[B, L, D]``."""
        b, length, d = words.shape
        dh = d // self.heads
        g = self.visual(context.flatten(2).mean(-1))  # [B, D]
        qkv = self.qkv(self.norm(words)).view(b, length, 3, self.heads, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [B, h, L, dh] each
        q = q + g.view(b, self.heads, 1, dh)
        keep = None
        if mask is not None:
            valid = mask.valid if isinstance(mask, WordMask) else mask
            keep = valid[:, None, None, :].bool()  # [B, 1, 1, L]: True = a key
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, h, L, dh]
        return self._residual(words, ctx)
