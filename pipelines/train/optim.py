"""Optimizer and learning-rate schedule of a recipe (``optim`` and ``schedule`` sections).

Parameter groups: the pretrained encoders (``spatial.encoder``, ``temporal.encoder``, ``text``)
get ``lr * backbone_lr_mult``, everything else ``lr``; frozen parameters are left out. With
``update_lr_mult != 1`` the CMAM+ language updates (``spatial.updates``, ``temporal.updates``)
get a group of their own at ``lr * update_lr_mult`` (at 1 they stay in the head group, so the
optimizer state of older checkpoints keeps its layout).

The schedule is a multiplicative factor per **optimizer step** ``k``, with ``e = k /
steps_per_epoch`` the (fractional) epoch:

* warm-up: ``w(e) = warmup_factor + (1 - warmup_factor) * e / warmup_epochs`` for
  ``e < warmup_epochs``, else 1;
* ``step``: ``b(e) = gamma ** |{m in step_epochs : e >= m}|``;
* ``cosine``: ``b(e) = min_lr_factor + (1 - min_lr_factor) * (1 + cos(pi * p)) / 2`` with
  ``p = clamp((e - warmup_epochs) / (epochs - warmup_epochs), 0, 1)``;
* ``constant``: ``b(e) = 1``;

and ``lr_k = lr_group * w(e) * b(e)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipelines.config import Recipe, ScheduleConfig

BACKBONE_PREFIXES = ("spatial.encoder.", "temporal.encoder.", "text.")
UPDATE_PREFIXES = ("spatial.updates.", "temporal.updates.")


def param_groups(
    model: Any, lr: float, backbone_lr_mult: float, update_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    backbone, head, update = [], [], []
    own_update_group = update_lr_mult != 1.0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(BACKBONE_PREFIXES):
            backbone.append(p)
        elif own_update_group and name.startswith(UPDATE_PREFIXES):
            update.append(p)
        else:
            head.append(p)
    groups = []
    if head:
        groups.append({"params": head, "lr": lr, "name": "head"})
    if backbone:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
    if update:
        groups.append({"params": update, "lr": lr * update_lr_mult, "name": "language_update"})
    return groups


def build_optimizer(model: Any, recipe: Recipe) -> torch.optim.Optimizer:
    import torch

    o = recipe.optim
    groups = param_groups(model, o.lr, o.backbone_lr_mult, o.update_lr_mult)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(sched: ScheduleConfig, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The schedule factor as a function of the optimizer step (see module docstring)."""
    spe = max(1, int(steps_per_epoch))
    warm = float(sched.warmup_epochs)

    def factor(step: int) -> float:
        e = step / spe
        w = 1.0
        if warm > 0 and e < warm:
            w = sched.warmup_factor + (1.0 - sched.warmup_factor) * e / warm
        if sched.kind == "step":
            b = sched.gamma ** sum(1 for m in sched.step_epochs if e >= m)
        elif sched.kind == "cosine":
            span = max(float(epochs) - warm, 1e-9)
            p = min(max((e - warm) / span, 0.0), 1.0)
            b = sched.min_lr_factor + (1.0 - sched.min_lr_factor) * 0.5 * (
                1 + math.cos(math.pi * p)
            )
        else:
            b = 1.0
        return w * b

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(recipe.schedule, recipe.train.epochs, steps_per_epoch)
    )


__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]
