"""Tests for lstc.metrics against hand-computed values and pycocotools called directly."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from lstc.metrics import (
    ReferringMetrics,
    average_over_groups,
    boundary_f_measure,
    boundary_tolerance_px,
    mask_boundary,
    merge_object_masks,
    to_bool_mask,
)

PK_KEYS = ["P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"]


def square(shape, top, left, size) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def counted(i: int, p_only: int, g_only: int, shape=(10, 10)) -> tuple[np.ndarray, np.ndarray]:
    """Masks with exactly ``i`` shared pixels, ``p_only`` prediction-only and ``g_only``
    ground-truth-only pixels (laid out along the flattened image)."""
    n = shape[0] * shape[1]
    assert i + p_only + g_only <= n
    pred = np.zeros(n, dtype=bool)
    gt = np.zeros(n, dtype=bool)
    pred[: i + p_only] = True
    gt[:i] = True
    gt[i + p_only : i + p_only + g_only] = True
    return pred.reshape(shape), gt.reshape(shape)


def one(pred, gt, **kw) -> dict[str, float]:
    m = ReferringMetrics()
    m.process(pred, gt, **kw)
    return m.compute()


# --------------------------------------------------------------------------------------------
# single samples
# --------------------------------------------------------------------------------------------


def test_both_empty_is_perfect():
    z = np.zeros((20, 30), dtype=bool)
    r = one(z, z)
    assert r["overall_iou"] == 1.0 and r["mean_iou"] == 1.0
    assert r["J"] == 1.0 and r["F"] == 1.0 and r["J&F"] == 1.0
    assert all(r[k] == 1.0 for k in PK_KEYS) and r["mAP@0.5:0.95"] == 1.0
    # no ground-truth object anywhere: COCO AP is undefined
    assert math.isnan(r["coco_mAP@0.5:0.95"]) and math.isnan(r["coco_AP@0.5"])
    assert r["num_samples"] == 1


def test_full_masks():
    f = np.ones((20, 30), dtype=bool)
    r = one(f, f)
    assert r["overall_iou"] == 1.0 and r["mean_iou"] == 1.0
    # the image border is not a boundary: both boundaries empty -> F = 1 (DAVIS)
    assert r["F"] == 1.0 and r["J&F"] == 1.0
    assert r["coco_mAP@0.5:0.95"] == pytest.approx(1.0) and r["coco_AP@0.5"] == pytest.approx(1.0)


def test_disjoint():
    shape = (100, 100)
    r = one(square(shape, 5, 5, 10), square(shape, 60, 60, 10))
    assert r["overall_iou"] == 0.0 and r["mean_iou"] == 0.0 and r["J"] == 0.0
    assert r["F"] == 0.0
    assert all(r[k] == 0.0 for k in PK_KEYS) and r["mAP@0.5:0.95"] == 0.0
    assert r["coco_mAP@0.5:0.95"] == 0.0 and r["coco_AP@0.5"] == 0.0


def test_nested():
    shape = (10, 10)
    gt = square(shape, 1, 1, 8)  # 64 px, boundary rows/cols 1 and 8
    pred = square(shape, 3, 3, 4)  # 16 px inside, boundary rows/cols 3 and 6
    r = one(pred, gt)
    assert r["overall_iou"] == 16 / 64 and r["mean_iou"] == 0.25 and r["J"] == 0.25
    # tolerance ceil(0.008 * sqrt(200)) = 1 px; the boundaries are >= 2 px apart -> F = 0
    assert boundary_tolerance_px(shape) == 1
    assert r["F"] == 0.0
    r = one(gt, pred)  # IoU is symmetric
    assert r["mean_iou"] == 0.25


def test_one_side_empty():
    shape = (40, 40)
    s = square(shape, 10, 10, 5)
    z = np.zeros(shape, dtype=bool)
    for pred, gt in ((s, z), (z, s)):
        r = one(pred, gt)
        assert r["mean_iou"] == 0.0 and r["overall_iou"] == 0.0 and r["F"] == 0.0
    assert boundary_f_measure(z, s) == (0.0, 1.0, 0.0)  # nothing predicted: P=1, R=0
    assert boundary_f_measure(s, z) == (0.0, 0.0, 1.0)  # nothing to find: P=0, R=1
    # empty prediction on a real object: the object is missed (COCO AP 0)
    assert one(z, s)["coco_AP@0.5"] == 0.0


def test_partial_overlap_exact_fractions():
    shape = (100, 100)
    gt = square(shape, 40, 40, 10)
    pred = square(shape, 40, 44, 10)  # shifted right by 4: 10 x 6 overlap
    r = one(pred, gt)
    assert Fraction(r["mean_iou"]).limit_denominator(1000) == Fraction(60, 140)
    assert r["overall_iou"] == 60 / 140 and r["J"] == 60 / 140
    # counts(): I = 9, P-only 1  -> 9/10; I = 11, P-only 4, G-only 5 -> 11/20
    p, g = counted(9, 1, 0)
    assert one(p, g)["mean_iou"] == 9 / 10
    p, g = counted(11, 4, 5)
    assert one(p, g)["mean_iou"] == 11 / 20


# --------------------------------------------------------------------------------------------
# boundary F
# --------------------------------------------------------------------------------------------


def test_tolerance_pixels():
    assert boundary_tolerance_px((100, 100)) == 2  # 0.008 * 141.42 = 1.13 -> 2
    assert boundary_tolerance_px((480, 854)) == 8  # 0.008 * 979.6 = 7.84 -> 8
    assert boundary_tolerance_px((250, 250)) == 3  # 0.008 * 353.6 = 2.83 -> 3
    assert boundary_tolerance_px((480, 854), tolerance=3) == 3  # >= 1: pixels


def test_boundary_of_square():
    """DAVIS ``seg2bmap`` of a 10x10 square (rows/cols 40..49): a pixel is boundary when it
    differs from its E, S or SE neighbour. Foreground: the right column (10) and the bottom
    row (10, one shared) = 19; background: row 39 cols 39..49 (S or SE is foreground, 11) and
    col 39 rows 40..49 (E is foreground, 10) = 21. Together: the perimeter of the 11x11 box
    rows 39..49 x cols 39..49, 40 pixels."""
    b = mask_boundary(square((100, 100), 40, 40, 10))
    box = np.zeros((100, 100), bool)
    box[39:50, 39:50] = True
    box[40:49, 40:49] = False
    assert b.sum() == 40 and np.array_equal(b, box)
    assert mask_boundary(np.ones((5, 7), bool)).sum() == 0  # image border is not a boundary
    # a square in the bottom-right corner: the last row only compares east, the last column
    # only south, the corner nothing -> only row 5 cols 5..9 and col 5 rows 6..9 (9 pixels)
    corner = mask_boundary(square((10, 10), 6, 6, 4))
    expect = np.zeros((10, 10), bool)
    expect[5, 5:10] = True
    expect[6:10, 5] = True
    assert np.array_equal(corner, expect)


def test_boundary_f_hand_made_reference():
    """Hand-derived DAVIS F on a 10x10 frame: d = ceil(0.008 * sqrt(200)) = ceil(0.113) = 1
    (disk = centre + 4 neighbours).

    GT = 4x4 square rows 2..5, cols 2..5 -> boundary = perimeter of the box rows 1..5 x cols
    1..5 (16 px, see test_boundary_of_square). Prediction = the same square 3 px to the right
    -> perimeter of rows 1..5 x cols 4..8 (16 px). Prediction boundary pixels within 1 px of
    the GT boundary: top row cols 4, 5 (on it) and 6 (1 px from (1, 5)) = 3, bottom row 3,
    left column col 4 rows 2..4 (1 px from col 5) = 3, right column col 8 (3 px away) none:
    precision = 9/16; mirror symmetry gives recall = 9/16, so F = 9/16.
    """
    gt = square((10, 10), 2, 2, 4)
    pred = square((10, 10), 2, 5, 4)
    assert boundary_tolerance_px((10, 10)) == 1
    f, p, r = boundary_f_measure(pred, gt)
    assert p == 9 / 16 and r == 9 / 16 and f == pytest.approx(9 / 16, abs=1e-15)
    # 1 px to the right: every boundary pixel is within 1 px of the other boundary -> F = 1
    assert boundary_f_measure(square((10, 10), 2, 3, 4), gt) == (1.0, 1.0, 1.0)
    # edge cases as in db_eval_boundary: empty prediction -> P 1, R 0, F 0; empty ground
    # truth -> P 0, R 1, F 0; both empty (or both covering the whole frame) -> F 1
    empty = np.zeros((10, 10), bool)
    assert boundary_f_measure(empty, gt) == (0.0, 1.0, 0.0)
    assert boundary_f_measure(gt, empty) == (0.0, 0.0, 1.0)
    assert boundary_f_measure(empty, empty) == (1.0, 1.0, 1.0)
    full = np.ones((10, 10), bool)
    assert boundary_f_measure(full, full) == (1.0, 1.0, 1.0)
    assert boundary_f_measure(full, gt)[0] == 0.0  # a full frame has no boundary
    r = one(square((10, 10), 2, 3, 4), gt)
    assert r["F"] == 1.0 and r["J"] == 12 / 20 and r["J&F"] == (1 + 12 / 20) / 2


def _loop_boundary(m: np.ndarray) -> list[tuple[int, int]]:
    """Boundary pixels by the definition, one pixel at a time."""
    h, w = m.shape
    out = []
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0), (1, 1)):
                if y + dy < h and x + dx < w and m[y, x] != m[y + dy, x + dx]:
                    out.append((y, x))
                    break
    return out


def _loop_f(pred: np.ndarray, gt: np.ndarray, d: int) -> float:
    """Independent DAVIS F: boundary lists, then for each boundary pixel a scan of the
    (2d+1)^2 window for a pixel of the other boundary at squared distance <= d^2."""
    bp, bg = _loop_boundary(pred), _loop_boundary(gt)
    if not bp and not bg:
        return 1.0
    if not bp or not bg:
        return 0.0

    def matched(points: list[tuple[int, int]], other: set[tuple[int, int]]) -> int:
        n = 0
        for y, x in points:
            if any(
                (y + u, x + v) in other
                for u in range(-d, d + 1)
                for v in range(-d, d + 1)
                if u * u + v * v <= d * d
            ):
                n += 1
        return n

    prec = matched(bp, set(bg)) / len(bp)
    rec = matched(bg, set(bp)) / len(bg)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def test_boundary_f_matches_independent_loops_on_random_masks():
    rng = np.random.default_rng(1)
    for i in range(45):
        h, w = (int(v) for v in rng.integers(12, 60, size=2))
        if i % 3 == 0:  # salt-and-pepper masks: many tiny boundaries, touching the border
            gt = rng.random((h, w)) < 0.3
            pred = rng.random((h, w)) < 0.3
        else:  # smooth blobs
            noise_g = ndimage.gaussian_filter(rng.standard_normal((h, w)), 2)
            noise_p = ndimage.gaussian_filter(rng.standard_normal((h, w)), 2)
            gt = noise_g > 0.05
            pred = (0.7 * noise_g + 0.3 * noise_p) > 0.05
        d = boundary_tolerance_px((h, w))
        assert abs(boundary_f_measure(pred, gt)[0] - _loop_f(pred, gt, d)) <= 1e-6
        assert abs(boundary_f_measure(pred, gt, tolerance=3)[0] - _loop_f(pred, gt, 3)) <= 1e-6
        m = ReferringMetrics()
        m.process(pred, gt)
        assert abs(m.compute(coco=False)["F"] - _loop_f(pred, gt, d)) <= 1e-6


# --------------------------------------------------------------------------------------------
# sets: P@K, both mAPs
# --------------------------------------------------------------------------------------------


def small_set() -> list[tuple[np.ndarray, np.ndarray]]:
    """IoUs 9/10, 6/10, 11/20, 0/8 and one both-empty sample (IoU 1)."""
    return [
        counted(9, 1, 0),
        counted(6, 2, 2),
        counted(11, 4, 5),
        counted(0, 3, 5),
        (np.zeros((10, 10), bool), np.zeros((10, 10), bool)),
    ]


def test_pk_and_map_hand_computed():
    m = ReferringMetrics()
    for p, g in small_set():
        m.process(p, g)
    r = m.compute()
    assert r["num_samples"] == 5
    assert r["overall_iou"] == 26 / 48  # (9 + 6 + 11 + 0 + 0) / (10 + 10 + 20 + 8 + 0)
    assert r["mean_iou"] == pytest.approx((0.9 + 0.6 + 0.55 + 0 + 1) / 5, abs=1e-15)
    assert r["J"] == r["mean_iou"]
    # IoU >= K with exact ties: 0.6 counts for P@0.6, 0.9 for P@0.9
    assert [r[k] for k in PK_KEYS] == [4 / 5, 3 / 5, 2 / 5, 2 / 5, 2 / 5]
    # K = .50 .55 .60 .65 .70 .75 .80 .85 .90 .95 -> 4 4 3 2 2 2 2 2 2 1 = 24 of 50
    assert r["mAP@0.5:0.95"] == pytest.approx(24 / 50, abs=1e-15)


def test_coco_ap_hand_computed():
    """Three objects; detections by score: IoU 0.92 (s .9), IoU 0 (s .8), IoU 0.62 (s .7).

    101-point interpolated AP. t <= .60: TP FP TP, interpolated precision 1 up to recall 1/3
    (34 points) and 2/3 up to recall 2/3 (33 points) -> 56/101. .65 <= t <= .90: TP FP FP ->
    34/101. t = .95: 0. Mean over 10 thresholds: (3*56 + 6*34) / 1010.
    """
    m = ReferringMetrics()
    p, g = counted(23, 2, 0)  # 23/25 = 0.92
    m.process(p, g, score=0.9)
    p, g = counted(0, 4, 4)  # disjoint
    m.process(p, g, score=0.8)
    p, g = counted(31, 10, 9)  # 31/50 = 0.62
    m.process(p, g, score=0.7)
    r = m.compute()
    assert r["coco_AP@0.5"] == pytest.approx(56 / 101, abs=1e-12)
    assert r["coco_mAP@0.5:0.95"] == pytest.approx((3 * 56 + 6 * 34) / 1010, abs=1e-12)


def _direct_cocoeval(samples, scores) -> tuple[float, float]:
    """COCOeval on the same data, built independently through COCO.loadRes."""
    images, anns, results = [], [], []
    for i, ((p, g), s) in enumerate(zip(samples, scores), start=1):
        h, w = g.shape
        images.append({"id": i, "height": h, "width": w})
        if g.any():
            rle = mask_utils.encode(np.asfortranarray(g.astype(np.uint8)))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 7,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
        if p.any():
            rle = mask_utils.encode(np.asfortranarray(p.astype(np.uint8)))
            results.append(
                {"image_id": i, "category_id": 7, "segmentation": rle, "score": float(s)}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 7}]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "segm")
        ev.params.useCats = 0
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def random_samples(n: int, seed: int, shape=(48, 64)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        h, w = shape
        top, left = rng.integers(0, h - 12), rng.integers(0, w - 12)
        sh, sw = rng.integers(4, 12, size=2)
        g = np.zeros(shape, bool)
        g[top : top + sh, left : left + sw] = True
        p = np.roll(g, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
        p[rng.random(shape) < 0.02] = True
        if k % 11 == 3:
            p[:] = False  # missed object
        if k % 13 == 5:
            g[:] = False  # nothing to find
        out.append((p, g))
    return out


def test_coco_ap_against_pycocotools_directly():
    samples = random_samples(40, seed=3)
    scores = np.random.default_rng(4).permutation(40) / 40 + 0.01  # distinct
    m = ReferringMetrics()
    for (p, g), s in zip(samples, scores):
        m.process(p, g, score=s)
    r = m.compute()
    ap, ap50 = _direct_cocoeval(samples, scores)
    assert r["coco_mAP@0.5:0.95"] == pytest.approx(ap, abs=1e-12)
    assert r["coco_AP@0.5"] == pytest.approx(ap50, abs=1e-12)
    assert 0 < ap < ap50 <= 1


def test_coco_no_detections_is_zero():
    s = square((20, 20), 2, 2, 5)
    m = ReferringMetrics()
    m.process(np.zeros_like(s), s)
    m.process(np.zeros_like(s), s)
    r = m.compute()
    assert r["coco_mAP@0.5:0.95"] == 0.0 and r["coco_AP@0.5"] == 0.0
    fast = m.compute(coco=False)
    assert math.isnan(fast["coco_AP@0.5"]) and fast["mean_iou"] == r["mean_iou"]
    assert m.compute_by_group(coco=False) == {}  # no groups given


# --------------------------------------------------------------------------------------------
# distributed: states, merge, dedupe
# --------------------------------------------------------------------------------------------


def _fill(m: ReferringMetrics, samples, idx, scores, keys=True) -> None:
    for i in idx:
        p, g = samples[i]
        m.process(
            p,
            g,
            score=scores[i],
            group=f"set{i % 3}",
            key=f"s{i}" if keys else None,
            track=f"t{i % 7}",
        )


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def test_sharded_equals_one_pass_exactly():
    samples = random_samples(60, seed=5)
    # ties in scores on purpose (COCOeval breaks ties by image order)
    scores = np.round(np.random.default_rng(6).random(60), 1)
    one_pass = ReferringMetrics()
    _fill(one_pass, samples, range(60), scores)
    rng = np.random.default_rng(7)
    for _ in range(3):
        perm = rng.permutation(60)
        cuts = np.sort(rng.choice(np.arange(1, 60), size=2, replace=False))
        states = []
        for part in np.split(perm, cuts):
            shard = ReferringMetrics()
            _fill(shard, samples, part.tolist(), scores)
            states.append(pickle.loads(pickle.dumps(shard.state())))
        merged = ReferringMetrics.merge(states)
        assert len(merged) == 60
        assert _same(merged.compute(), one_pass.compute())
        mg, og = merged.compute_by_group(), one_pass.compute_by_group()
        assert mg.keys() == og.keys() == {"set0", "set1", "set2"}
        assert all(_same(mg[k], og[k]) for k in mg)
    # without keys too (nothing to dedupe)
    unkeyed = ReferringMetrics()
    _fill(unkeyed, samples, range(59, -1, -1), scores, keys=False)
    assert _same(unkeyed.compute(), one_pass.compute())


def test_duplicate_keys_dropped():
    samples = random_samples(10, seed=8)
    scores = [1.0] * 10
    ref = ReferringMetrics()
    _fill(ref, samples, range(10), scores)
    # a padding sampler: 10 samples on 3 ranks -> 12 slots, samples 0 and 1 repeated
    slots = list(range(10)) + [0, 1]
    states = []
    for rank in range(3):
        shard = ReferringMetrics()
        _fill(shard, samples, slots[rank::3], scores)
        states.append(shard.state())
    assert sum(len(s["key"]) for s in states) == 12
    merged = ReferringMetrics.merge(states)
    assert len(merged) == 10
    assert _same(merged.compute(), ref.compute())
    # the same key twice in one accumulator: the second is dropped
    m = ReferringMetrics()
    p, g = samples[0]
    assert m.process(p, g, key="a") is True
    assert m.process(~p, g, key="a") is False
    assert len(m) == 1
    # merging an accumulator with itself changes nothing
    assert _same(ReferringMetrics.merge([ref, ref]).compute(), ref.compute())


def test_state_roundtrip_and_merge_checks():
    samples = random_samples(5, seed=9)
    m = ReferringMetrics()
    _fill(m, samples, range(5), [0.5] * 5)
    st = m.state()
    assert st["intersection"].dtype == np.int64 and isinstance(st["pred_rle"][0], bytes)
    assert _same(ReferringMetrics.from_state(st).compute(), m.compute())
    other = ReferringMetrics(boundary_tolerance=3).state()
    with pytest.raises(ValueError, match="tolerance"):
        ReferringMetrics.merge([st, other])
    assert ReferringMetrics.merge([]).compute()["num_samples"] == 0


# --------------------------------------------------------------------------------------------
# groups, tracks, inputs
# --------------------------------------------------------------------------------------------


def test_groups_and_average():
    shape = (100, 100)
    gt = square(shape, 40, 40, 10)
    m = ReferringMetrics()
    f44 = boundary_f_measure(square(shape, 40, 44, 10), gt)[0]
    f42 = boundary_f_measure(square(shape, 40, 42, 10), gt)[0]
    m.process(gt, gt, group="a")  # J 1, F 1
    m.process(square(shape, 40, 44, 10), gt, group="b")  # J 3/7
    m.process(square(shape, 40, 42, 10), gt, group="b")  # J 2/3
    m.process(gt, gt)  # no group: only in the totals
    by = m.compute_by_group()
    assert list(by) == ["a", "b"]
    assert by["a"]["J&F"] == 1.0 and by["a"]["num_samples"] == 1
    jb = (3 / 7 + 2 / 3) / 2
    fb = (f44 + f42) / 2
    assert by["b"]["J"] == pytest.approx(jb) and by["b"]["F"] == pytest.approx(fb)
    avg = average_over_groups(by)
    assert avg["J"] == pytest.approx((1 + jb) / 2)
    assert avg["F"] == pytest.approx((1 + fb) / 2)
    assert avg["J&F"] == pytest.approx((1 + (jb + fb) / 2) / 2)
    assert m.compute()["num_samples"] == 4


def test_tracks_average_per_track_first():
    p1, g1 = counted(1, 1, 0)  # 1/2
    p2, g2 = counted(1, 0, 3)  # 1/4
    p3, g3 = counted(5, 0, 0)  # 1
    m = ReferringMetrics()
    m.process(p1, g1, track="x")
    m.process(p2, g2, track="x")
    m.process(p3, g3, track="y")
    r = m.compute()
    assert r["J"] == pytest.approx(((0.5 + 0.25) / 2 + 1) / 2)
    assert r["mean_iou"] == pytest.approx((0.5 + 0.25 + 1) / 3)


def test_inputs_torch_and_validation():
    shape = (100, 100)
    gt = square(shape, 40, 40, 10)
    pred = square(shape, 40, 44, 10)
    a = one(torch.from_numpy(pred)[None], torch.from_numpy(gt.astype(np.uint8) * 255))
    b = one(pred.astype(np.float32), gt)
    assert _same(a, one(pred, gt)) and _same(b, one(pred, gt))
    with pytest.raises(ValueError, match="threshold"):
        to_bool_mask(np.full((4, 4), 0.3, np.float32))
    with pytest.raises(ValueError, match="size"):
        ReferringMetrics().process(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="shape"):
        to_bool_mask(np.zeros((2, 4, 4), bool))


def test_empty_accumulator():
    r = ReferringMetrics().compute()
    assert r["num_samples"] == 0 and math.isnan(r["mean_iou"]) and math.isnan(r["J&F"])


# --------------------------------------------------------------------------------------------
# per-label metrics (issue 14) and the Ref-DAVIS17 merged-object protocol
# --------------------------------------------------------------------------------------------


def test_per_label_metrics_hand_computed_and_reduced_across_ranks():
    """Two labels, four samples with known I / U (10x10 frames, ``counted``):

    =====  ==========================  ===  ==  =====
    name   labels                      I    U   IoU
    =====  ==========================  ===  ==  =====
    s1     motion                      2    4   1/2
    s2     motion                      3    4   3/4
    s3     appearance                  9    10  9/10
    s4     appearance                  0    2   0
    =====  ==========================  ===  ==  =====

    motion: overall 5/8, mean (1/2 + 3/4)/2 = 5/8, P@0.5 = 1, P@0.7 = 1/2, P@0.8 = 0,
    mAP = (1 + 6)/20 = 7/20 (1/2 passes K = .50 only, 3/4 passes .50 ... .75).
    appearance: overall 9/12, mean 9/20, P@0.5 = P@0.9 = 1/2, mAP = 9/20 (9/10 passes .50 ...
    .90). All: overall 14/20, mean (1/2 + 3/4 + 9/10 + 0)/4 = 43/80.
    """
    samples = [
        (counted(2, 2, 0), ("motion",)),
        (counted(3, 0, 1), ("motion",)),
        (counted(9, 1, 0), ("appearance",)),
        (counted(0, 1, 1), ("appearance",)),
    ]
    one_pass = ReferringMetrics()
    ranks = [ReferringMetrics(), ReferringMetrics()]
    for i, ((p, g), labels) in enumerate(samples):
        one_pass.process(p, g, labels=labels, key=f"s{i}")
        ranks[i % 2].process(p, g, labels=labels, key=f"s{i}")  # rank = sample index mod 2
    # a padded duplicate on rank 1 (distributed sampler) must not count twice per label either
    ranks[1].process(*samples[0][0], labels=("motion",), key="s0")
    merged = ReferringMetrics.merge([pickle.loads(pickle.dumps(r.state())) for r in ranks])
    for acc in (one_pass, merged):
        by = acc.compute_by_label()
        assert list(by) == ["appearance", "motion"] == acc.labels()
        mo, ap = by["motion"], by["appearance"]
        assert mo["num_samples"] == 2 and ap["num_samples"] == 2
        assert mo["overall_iou"] == 5 / 8 and mo["mean_iou"] == 5 / 8
        assert (mo["P@0.5"], mo["P@0.7"], mo["P@0.8"]) == (1.0, 0.5, 0.0)
        assert mo["mAP@0.5:0.95"] == pytest.approx(7 / 20, abs=1e-15)
        assert ap["overall_iou"] == 9 / 12 and ap["mean_iou"] == 9 / 20
        assert (ap["P@0.5"], ap["P@0.9"]) == (0.5, 0.5)
        assert ap["mAP@0.5:0.95"] == pytest.approx(9 / 20, abs=1e-15)
        total = acc.compute()
        assert total["overall_iou"] == 14 / 20 and total["mean_iou"] == pytest.approx(43 / 80)
        assert total["num_samples"] == 4
    # a sample may carry several labels: it counts in each
    m = ReferringMetrics()
    m.process(*counted(2, 2, 0), labels=("adult", "walking"))
    m.process(*counted(3, 0, 1), labels=("adult", "running"))
    by = m.compute_by_label(coco=False)
    assert by["adult"]["num_samples"] == 2 and by["adult"]["mean_iou"] == 5 / 8
    assert by["walking"]["mean_iou"] == 1 / 2 and by["running"]["mean_iou"] == 3 / 4


def test_merge_object_masks_gives_overlaps_to_the_most_probable_object():
    a = np.zeros((4, 4), bool)
    a[:, :3] = True  # object 1 covers columns 0..2
    b = np.zeros((4, 4), bool)
    b[:, 2:] = True  # object 2 covers columns 2..3: column 2 is contested
    p1 = np.full((4, 4), 0.6)
    p2 = np.full((4, 4), 0.9)
    p2[0, 2] = 0.5  # object 1 (0.6) wins this pixel
    out = merge_object_masks({"1": a, "2": b}, {"1": p1, "2": p2})
    expect1 = np.zeros((4, 4), bool)
    expect1[:, :2] = True
    expect1[0, 2] = True
    assert np.array_equal(out["1"], expect1) and np.array_equal(out["2"], b & ~expect1)
    # no probabilities: the first object in numeric id order keeps the overlap ("2" < "10")
    out = merge_object_masks({"10": b, "2": a})
    assert np.array_equal(out["2"], a) and np.array_equal(out["10"], b & ~a)


def test_ref_davis_protocol_matches_objects_and_averages_sets():
    """One video, two objects, 20x20 frames (F tolerance 1 px): gt1 = square A (rows/cols
    0..3), gt2 = square B (rows/cols 10..13), identical in the 3 frames.

    Set ``annot1``: frame 0 predicts object 1 = A ∪ B (p 0.6) and object 2 = B (p 0.9): merged,
    B goes to object 2, so object 1 = A, object 2 = B. Frames 1 and 2 predict them swapped
    (object 1 = B, object 2 = A). Mean over the frames (J = F here: same masks give 1, disjoint
    far-apart squares 0): pred 1 vs gt 1 = 1/3, pred 1 vs gt 2 = 2/3, and the same for pred 2
    crosswise; the DAVIS matching pairs pred 1 with gt 2 and pred 2 with gt 1: J = F = 2/3 (not
    the 1/3 of scoring by id).
    Set ``annot2`` has an expression for object 1 only (predicted A in every frame): object 2
    is an empty prediction: J = F = (1 + 0) / 2 = 1/2. Average over the sets: 7/12.
    """
    sq_a, sq_b = square((20, 20), 0, 0, 4), square((20, 20), 10, 10, 4)
    gts = {"1": sq_a, "2": sq_b}
    shards = [ReferringMetrics(), ReferringMetrics()]
    for t in range(3):
        acc = shards[t % 2]  # frames spread over two workers: merged states
        if t == 0:
            preds = {"1": sq_a | sq_b, "2": sq_b}
            probs = {"1": np.full((20, 20), 0.6), "2": np.full((20, 20), 0.9)}
        else:
            preds, probs = {"1": sq_b, "2": sq_a}, None
        assert acc.process_objects(
            group="annot1", video="v", frame=str(t), preds=preds, probs=probs, gts=gts
        )
        acc.process_objects(group="annot2", video="v", frame=str(t), preds={"1": sq_a}, gts=gts)
    assert not shards[0].process_objects(
        group="annot2", video="v", frame="0", preds={"1": sq_b}, gts=gts
    )  # seen: ignored
    total = ReferringMetrics.merge([s.state() for s in shards])
    by = total.compute_objects()
    assert by["annot1"]["J"] == pytest.approx(2 / 3) and by["annot1"]["F"] == pytest.approx(2 / 3)
    assert by["annot1"]["num_objects"] == 2 and by["annot1"]["num_frames"] == 3
    assert by["annot2"]["J"] == 0.5 and by["annot2"]["F"] == 0.5 and by["annot2"]["J&F"] == 0.5
    avg = average_over_groups(by)
    assert avg["J&F"] == pytest.approx(7 / 12)
