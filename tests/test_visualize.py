"""Tests for lstc.visualize: overlay colours and shapes, grid layout, curve PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lstc.visualize import GT_COLOR, PRED_COLOR, overlay, overlay_grid, plot_curves


def _frame(h=60, w=80, value=100) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def _square(shape, top, left, size) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def test_overlay_prediction_tint_exact():
    frame = _frame()
    pred = _square((60, 80), 10, 10, 20)
    out = overlay(frame, pred, alpha=0.45)
    assert out.shape == frame.shape and out.dtype == np.uint8
    expected = np.rint(0.55 * 100 + 0.45 * np.asarray(PRED_COLOR, np.float64)).astype(np.uint8)
    assert (out[pred] == expected).all()  # (170, 73, 73)
    assert (out[~pred] == 100).all()  # untouched outside the prediction
    assert (frame == 100).all()  # input not modified


def test_overlay_gt_contour_and_caption():
    frame = _frame()
    pred = np.zeros((60, 80), bool)
    gt = _square((60, 80), 20, 30, 10)
    out = overlay(frame, pred, gt, text="the red square")
    h = frame.shape[0]
    assert out.shape[0] > h and out.shape[1:] == (80, 3) and out.dtype == np.uint8
    img = out[:h]
    # 1-px inner contour of the 10x10 square: 36 pixels in GT colour, nothing else coloured
    contour = (img == np.asarray(GT_COLOR, np.uint8)).all(axis=-1)
    assert contour.sum() == 36
    assert contour[20, 30:40].all() and contour[29, 30:40].all()
    assert not contour[21:29, 31:39].any()
    assert (img[~contour] == 100).all()
    # caption band: dark background with light text somewhere in it
    band = out[h:]
    assert (band[0, 0] == (24, 24, 24)).all()
    assert band.max() > 200


def test_overlay_inputs_gray_torch_and_resize():
    gray = np.full((40, 40), 50, np.uint8)
    pred = torch.zeros(1, 20, 20)
    pred[0, :10, :10] = 1.0  # a 0/1 float tensor at half size: resized by nearest neighbour
    out = overlay(gray, pred)
    assert out.shape == (40, 40, 3)
    tinted = (out != 50).any(axis=-1)
    assert tinted[:20, :20].all() and not tinted[20:, :].any() and not tinted[:, 20:].any()
    with pytest.raises(ValueError, match="uint8"):
        overlay(gray.astype(np.float32), np.zeros((40, 40), bool))
    with pytest.raises(ValueError, match="alpha"):
        overlay(gray, np.zeros((40, 40), bool), alpha=2.0)


def test_overlay_no_caption_when_nothing_to_say_and_iou_text():
    frame = _frame()
    m = _square((60, 80), 0, 0, 10)
    assert overlay(frame, m).shape == (60, 80, 3)
    assert overlay(frame, m, m, show_iou=False).shape == (60, 80, 3)
    assert overlay(frame, m, m).shape[0] > 60  # IoU caption


def test_overlay_grid_layout():
    a = np.full((10, 20, 3), 1, np.uint8)
    b = np.full((15, 12, 3), 2, np.uint8)
    c = np.full((5, 5, 3), 3, np.uint8)
    g = overlay_grid([a, b, c], ncols=2, gap=4)
    # 2 rows x 2 cols of 15 x 20 cells, 4 px gaps
    assert g.shape == (2 * 15 + 4, 2 * 20 + 4, 3) and g.dtype == np.uint8
    assert (g[:10, :20] == 1).all()
    assert (g[:15, 24:36] == 2).all()
    assert (g[19:24, :5] == 3).all()
    assert (g[10:15, :20] == 255).all()  # padding of the shorter cell
    assert (g[19:, 24:] == 255).all()  # empty fourth cell
    assert overlay_grid([a], ncols=4).shape == (10, 20, 3)
    with pytest.raises(ValueError):
        overlay_grid([], ncols=2)


def test_plot_curves_png(tmp_path):
    history = {
        "loss": [1.0, 0.7, 0.5, 0.4],
        "val/mean_iou": [0.2, float("nan"), 0.5, 0.6],
        "val/J&F": [0.3, 0.5],
        "lr": [1e-4, 1e-4, 5e-5, 5e-5],
    }
    path = plot_curves(history, tmp_path / "sub" / "curves.png", title="tiny")
    assert path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        arr = np.asarray(im.convert("RGB"))
    assert w == 1200 and h == 600  # 3 columns x 2 rows of 4x3 in at 100 dpi
    assert arr.std() > 5  # something was drawn
    with pytest.raises(ValueError):
        plot_curves({}, tmp_path / "x.png")
