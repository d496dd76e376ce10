"""DDP set-up of the LSTC network: find the parameters a configuration never uses.

Some ablations leave parameters outside the autograd graph of the loss: with ``model.lasp=off``
the decoder does not read the language, so the CMAM+ update after the last stage of each
stream (``cmam=cmam_plus``) or the whole text encoder (``cmam=none``) gets no gradient; an
empty ``loss.level_weights`` leaves the auxiliary heads out. PyTorch's
``DistributedDataParallel`` then fails at the second step unless it was built with
``find_unused_parameters=True``, which costs a graph traversal every step and is therefore
off by default.

:func:`unused_parameters` decides it for the user: one forward pass of the model in eval mode
on a zero clip and a short expression, through the training loss, then
``torch.autograd.grad(..., allow_unused=True)``. A trainable parameter whose gradient is
``None`` is not reachable from the loss; the graph of this network does not depend on the
input values, so what the probe finds holds for every batch. The probe leaves the model as it
was: no ``.grad`` is written, eval mode keeps BatchNorm statistics and dropout untouched, and the
random generators are forked, so a run with the probe trains bit-identically to one without.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PROBE_TEXT = "the object on the left"


def unused_parameters(model: nn.Module, loss_fn: nn.Module, device: torch.device) -> list[str]:
    """Names of the trainable parameters of `model` that get no gradient from `loss_fn`.

    `model` is an :class:`lstc.model.LSTC` (its ``cfg`` gives the clip shape, its
    ``tokenizer`` the ids); `loss_fn` maps ``(output, target [B, 1, H, W])`` to
    ``(loss, parts)`` like :class:`lstc.losses.SegmentationLoss`.
    """
    cfg = model.cfg  # type: ignore[attr-defined]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return []
    h, w = cfg.input_size
    was_training = model.training
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            model.eval()
            clip = torch.zeros(1, 3, cfg.num_frames, h, w, device=device)
            tok = model.tokenizer([PROBE_TEXT])  # type: ignore[attr-defined]
            ids = tok["input_ids"].to(device)
            attn = tok["attention_mask"].to(device)
            out = model(clip, ids, attn)
            loss, _ = loss_fn(out, torch.zeros(1, 1, h, w, device=device))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        model.train(was_training)
    return [n for (n, _), g in zip(named, grads, strict=True) if g is None]


def ddp_kwargs(
    model: nn.Module, loss_fn: nn.Module, device: torch.device, *, force: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """``DistributedDataParallel`` keyword arguments for `model` and the unused parameters.

    ``find_unused_parameters`` is on exactly when some trainable parameter gets no gradient
    (or when `force`, the recipe's ``train.find_unused_parameters``).
    """
    unused = unused_parameters(model, loss_fn, device)
    return {"find_unused_parameters": bool(force or unused)}, unused


def describe_unused(unused: list[str], limit: int = 4) -> str:
    """One line for the log: how many parameters are unused, grouped by module (3 levels)."""
    groups = sorted({".".join(n.split(".")[:3]) for n in unused})
    shown = ", ".join(groups[:limit]) + (
        f", ... ({len(groups)} modules)" if len(groups) > limit else ""
    )
    return (
        f"{len(unused)} parameters get no gradient in this model configuration ({shown}); "
        "DDP runs with find_unused_parameters=True"
    )


__all__ = ["PROBE_TEXT", "ddp_kwargs", "describe_unused", "unused_parameters"]
