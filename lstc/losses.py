"""Deep-supervision segmentation loss: BCE (with pos_weight) + Dice at every level.

``L = w_0 (a BCE(y_0, t) + b Dice(y_0, t)) + sum_l w_l (a BCE(y_l, t_l) + b Dice(y_l, t_l))
      + w_f sum_j (a BCE(phi_j, t_j) + b Dice(phi_j, t_j))``

with ``y_0`` the full-resolution logits, ``y_l`` the auxiliary logits (deepest first),
``t_l`` the target area-averaged to level l's size (soft targets at coarse levels),
``BCE`` with ``pos_weight`` (1.5 in CSTM's release options) and the soft Dice
``1 - (2 sum p t + e) / (sum p + sum t + e)`` per sample, averaged over the batch.
``phi_j`` are LASP's language-aware foreground estimates (``out.lasp_logits``, present when
LASP is on); supervising them with the referred mask (weight ``w_f = lasp_weight``) is an
option of ours, off by default: in our overfit checks (32 px clips, where the deepest maps are
1x1 and 2x2) it slowed the learning of the language-dependent solution, so by default LASP's
foreground estimate is learned end to end through the sampling only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lstc.config import LossConfig


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target, size=size, mode="area")


class SegmentationLoss(nn.Module):
    """``loss_fn(out, target[B,1,H,W] float {0,1}) -> (loss, {"bce", "dice"})``.

    `out` is an `LSTCOutput` (anything with ``.logits`` and ``.aux_logits``). The returned
    parts are detached weighted sums over levels (for logging).
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.register_buffer("pos_weight", torch.tensor([self.cfg.pos_weight]), persistent=False)

    def _levels(self, out: Any) -> list[tuple[float, torch.Tensor]]:
        levels = [(self.cfg.main_weight, out.logits)]
        aux = list(getattr(out, "aux_logits", None) or [])
        weights = self.cfg.level_weights
        if not weights:
            aux = []
        if aux and len(weights) < len(aux):
            raise ValueError(
                f"LossConfig.level_weights has {len(weights)} weights but the model gives "
                f"{len(aux)} auxiliary outputs"
            )
        levels += list(zip(weights, aux))
        if self.cfg.lasp_weight > 0:
            levels += [(self.cfg.lasp_weight, phi) for phi in getattr(out, "lasp_logits", [])]
        return levels

    def forward(
        self, out: Any, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if target.dim() == 3:
            target = target.unsqueeze(1)
        target = target.to(out.logits.dtype)
        bce_total = out.logits.new_zeros(())
        dice_total = out.logits.new_zeros(())
        for weight, logits in self._levels(out):
            if weight == 0:
                continue
            t = resize_target(target, logits.shape[-2:])
            bce = F.binary_cross_entropy_with_logits(
                logits, t, pos_weight=self.pos_weight.to(logits.dtype)
            )
            dice = dice_loss(logits, t, self.cfg.dice_smooth)
            bce_total = bce_total + weight * bce
            dice_total = dice_total + weight * dice
        loss = self.cfg.bce_weight * bce_total + self.cfg.dice_weight * dice_total
        return loss, {"bce": bce_total.detach(), "dice": dice_total.detach()}
