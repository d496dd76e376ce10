"""Qualitative figures: mask overlays, overlay grids and metric curves (numpy + PIL + matplotlib).

No MLflow here: the callers log the returned arrays / written files.

* :func:`overlay` — the frame with the predicted mask tinted (alpha blend), the ground-truth
  contour drawn on top, and a caption band below with the expression, the IoU and a legend
  (a :data:`PRED_COLOR` swatch "prediction", a :data:`GT_COLOR` outline "ground truth").
* :func:`overlay_grid` — tiles overlays (of possibly different sizes) into one image.
* :func:`plot_curves` — one panel per metric history, saved as a PNG (matplotlib Agg, no pyplot
  state, safe in worker processes).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PRED_COLOR", "GT_COLOR", "legend", "overlay", "overlay_grid", "plot_curves"]

#: Tint of the predicted mask (RGB).
PRED_COLOR: tuple[int, int, int] = (255, 40, 40)
#: Colour of the ground-truth contour (RGB).
GT_COLOR: tuple[int, int, int] = (40, 255, 40)
_CAPTION_BG: tuple[int, int, int] = (24, 24, 24)
_CAPTION_FG: tuple[int, int, int] = (240, 240, 240)


def _as_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """Boolean ``[H, W]`` mask at ``shape`` (nearest-neighbour resize when sizes differ)."""
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {m.shape}")
    m = m > 0.5 if np.issubdtype(m.dtype, np.floating) else m != 0
    if m.shape != shape:
        img = Image.fromarray(m.astype(np.uint8) * 255)
        m = np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127
    return m


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner contour of ``mask``, ``thickness`` pixels wide (4-neighbour erosion steps)."""
    inner = mask.copy()
    for _ in range(thickness):
        p = np.pad(inner, 1, mode="constant", constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _caption(text: str, width: int) -> np.ndarray:
    """A dark band ``[h, width, 3]`` with ``text`` wrapped to the width."""
    size = int(min(max(round(width / 28), 11), 28))
    font = _font(size)
    pad = max(2, size // 3)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(probe.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26, 1.0)
    chars = max(int((width - 2 * pad) / char_w), 4)
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(para, chars) or [""])
    line_h = size + max(1, size // 4)
    band = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), _CAPTION_BG)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=_CAPTION_FG, font=font)
    return np.asarray(band, dtype=np.uint8)


def legend(width: int, *, ground_truth: bool) -> np.ndarray:
    """A dark band ``[h, width, 3]``: a filled :data:`PRED_COLOR` swatch labelled "prediction"
    and, when ``ground_truth``, a :data:`GT_COLOR` outline labelled "ground truth" (on a second
    row when the first is too narrow for both)."""
    size = int(min(max(round(width / 28), 11), 28))
    font = _font(size)
    pad = max(2, size // 3)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = [("prediction", True)] + ([("ground truth", False)] if ground_truth else [])
    rows: list[list[tuple[str, bool, int]]] = [[]]
    x = pad
    for label, filled in items:
        item_w = size + pad + int(probe.textlength(label, font=font))
        if rows[-1] and x + item_w > width:
            rows.append([])
            x = pad
        rows[-1].append((label, filled, x))
        x += item_w + 3 * pad
    line_h = size + pad
    band = Image.new("RGB", (width, pad + line_h * len(rows)), _CAPTION_BG)
    draw = ImageDraw.Draw(band)
    for r, row in enumerate(rows):
        y = pad + r * line_h
        for label, filled, x in row:
            box = (x, y, x + size - 1, y + size - 1)
            if filled:
                draw.rectangle(box, fill=PRED_COLOR)
            else:
                draw.rectangle(box, outline=GT_COLOR, width=max(1, size // 6))
            draw.text((x + size + pad, y), label, fill=_CAPTION_FG, font=font)
    return np.asarray(band, dtype=np.uint8)


def overlay(
    frame_uint8: np.ndarray,
    pred_mask: Any,
    gt_mask: Any | None = None,
    text: str | None = None,
    *,
    alpha: float = 0.45,
    show_iou: bool = True,
    show_legend: bool = True,
) -> np.ndarray:
    """Draw a prediction (and its ground truth) on a frame.

    Pixels of the prediction are alpha-blended with :data:`PRED_COLOR`:
    ``out = (1 - alpha) · frame + alpha · colour`` inside ``pred``; the ground-truth inner contour
    (``max(1, round(min(H, W) / 160))`` px wide) is painted :data:`GT_COLOR`. When ``text`` is
    given or a ground truth is present, a caption band is appended **below** the frame with the
    expression and ``IoU = |P ∩ G| / |P ∪ G|`` (1 when both are empty), followed by the
    :func:`legend` of the colours, so the output is ``[H + h_caption + h_legend, W, 3]`` uint8
    (exactly ``[H, W, 3]`` without caption).

    Args:
        frame_uint8: RGB frame ``[H, W, 3]`` uint8 (a ``[H, W]`` grey frame is accepted).
        pred_mask: predicted mask (bool / 0-1 / probabilities thresholded at 0.5); resized with
            nearest neighbour when its size differs from the frame's.
        gt_mask: optional ground-truth mask, same rules.
        text: optional caption (the referring expression).
        alpha: tint strength in ``[0, 1]``.
        show_iou: add ``IoU`` to the caption when ``gt_mask`` is given.
        show_legend: add the colour legend below the caption.
    """
    frame = np.asarray(frame_uint8)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"frame must be [H, W, 3] uint8, got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {frame.dtype}")
    frame = frame[..., :3]
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = frame.shape[:2]
    pred = _as_mask(pred_mask, (h, w), "pred_mask")
    out = frame.astype(np.float32)
    out[pred] = (1.0 - alpha) * out[pred] + alpha * np.asarray(PRED_COLOR, np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)

    parts: list[str] = []
    if text:
        parts.append(str(text))
    if gt_mask is not None:
        gt = _as_mask(gt_mask, (h, w), "gt_mask")
        out[_contour(gt, max(1, round(min(h, w) / 160)))] = GT_COLOR
        if show_iou:
            union = int(np.count_nonzero(pred | gt))
            iou = np.count_nonzero(pred & gt) / union if union else 1.0
            parts.append(f"IoU {iou:.3f}")
    if not parts:
        return out
    bands = [out, _caption("  |  ".join(parts), w)]
    if show_legend:
        bands.append(legend(w, ground_truth=gt_mask is not None))
    return np.concatenate(bands, axis=0)


def overlay_grid(
    images: Sequence[np.ndarray],
    ncols: int = 4,
    *,
    gap: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Tile images row-major into ``ceil(n / ncols)`` rows of ``min(n, ncols)`` cells.

    Every cell is ``max H × max W`` (smaller images are top-left aligned on ``background``),
    cells are separated by ``gap`` pixels: the output is
    ``[rows·Hmax + (rows-1)·gap, cols·Wmax + (cols-1)·gap, 3]`` uint8.
    """
    if not images:
        raise ValueError("overlay_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    imgs = []
    for im in images:
        a = np.asarray(im)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
            raise ValueError(f"grid images must be [H, W, 3] uint8, got {a.shape} {a.dtype}")
        imgs.append(a[..., :3])
    cols = min(ncols, len(imgs))
    rows = math.ceil(len(imgs) / cols)
    ch = max(a.shape[0] for a in imgs)
    cw = max(a.shape[1] for a in imgs)
    grid = np.empty((rows * ch + (rows - 1) * gap, cols * cw + (cols - 1) * gap, 3), np.uint8)
    grid[:] = np.asarray(background, np.uint8)
    for i, a in enumerate(imgs):
        r, c = divmod(i, cols)
        y, x = r * (ch + gap), c * (cw + gap)
        grid[y : y + a.shape[0], x : x + a.shape[1]] = a
    return grid


def plot_curves(
    history: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "epoch",
    ncols: int = 3,
) -> Path:
    """Save metric curves to a PNG: one panel per metric, ``x = 1..len(values)``.

    NaN / None values are left as gaps. Returns the written path (parents are created).
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("plot_curves needs at least one metric history")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(history)
    cols = min(ncols, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        y = np.asarray([np.nan if v is None else float(v) for v in history[name]], np.float64)
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, marker="o" if len(y) <= 30 else None, markersize=3, linewidth=1.5)
        finite = y[np.isfinite(y)]
        if finite.size:
            ax.set_title(f"{name} (last {finite[-1]:.4g})", fontsize=10)
        else:
            ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.savefig(path, format="png")
    return path
