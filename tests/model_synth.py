"""Tiny deterministic moving-shape clips with referring expressions, for the model tests.

Each clip holds two objects that differ in colour and shape and move in straight lines;
every object is referred to by "the <colour> <shape>", so two samples share each clip and
only the expression tells which mask is wanted.
"""

from __future__ import annotations

import torch

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
SHAPES = ("square", "circle")


def _shape_mask(shape: str, cy: float, cx: float, r: float, size: int) -> torch.Tensor:
    ys = torch.arange(size, dtype=torch.float32).view(-1, 1)
    xs = torch.arange(size, dtype=torch.float32).view(1, -1)
    if shape == "square":
        return ((ys - cy).abs() <= r) & ((xs - cx).abs() <= r)
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= r**2


def make_samples(
    *, num_clips: int, size: int, frames: int, target_index: int, seed: int = 0
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``(clips [N,3,T,S,S] in [0,1], texts [N], masks [N,1,S,S] float)``, N = 2 * num_clips."""
    g = torch.Generator().manual_seed(seed)
    clips, texts, masks = [], [], []
    names = list(COLOURS)
    for _ in range(num_clips):
        perm = torch.randperm(len(names), generator=g)[:2].tolist()
        shapes = list(SHAPES) if torch.rand((), generator=g) < 0.5 else list(SHAPES[::-1])
        objs = []
        for k in range(2):
            r = size * (0.12 + 0.06 * torch.rand((), generator=g).item())
            cy, cx = (size * (0.25 + 0.5 * torch.rand(2, generator=g))).tolist()
            vy, vx = (torch.rand(2, generator=g) * 4 - 2).tolist()
            objs.append((names[perm[k]], shapes[k], cy, cx, vy, vx, r))
        video = 0.1 * torch.rand(3, frames, size, size, generator=g)
        target_masks = []
        for t in range(frames):
            for name, shape, cy, cx, vy, vx, r in objs:
                dt = t - target_index
                m = _shape_mask(shape, cy + vy * dt, cx + vx * dt, r, size)
                colour = torch.tensor(COLOURS[name]).view(3, 1, 1)
                video[:, t] = torch.where(m, colour, video[:, t])
                if t == target_index:
                    target_masks.append(m)
        # the second object is drawn on top: the visible part of the first one is its mask
        visible = [target_masks[0] & ~target_masks[1], target_masks[1]]
        for k, (name, shape, *_rest) in enumerate(objs):
            clips.append(video)
            texts.append(f"the {name} {shape}")
            masks.append(visible[k].float().unsqueeze(0))
    return torch.stack(clips), texts, torch.stack(masks)


def mean_iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred = logits > 0
    gt = masks > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return float(iou.mean())
