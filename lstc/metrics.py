"""Referring-segmentation metrics: IoU family, P@K, both mAP definitions, DAVIS J / F / J&F.

Pure numpy / torch + pycocotools + scipy; no Ray, no MLflow. The accumulator follows the
mmengine pattern (``process`` per sample, ``compute`` at the end) and adds ``state`` /
``merge`` so that shards evaluated on different workers combine into exactly the result of one
pass over all samples.

Definitions (``P`` = predicted mask, ``G`` = ground-truth mask of one sample, both boolean at
the original frame size; ``N`` = number of samples; ``I_i = |P_i ∩ G_i|``, ``U_i = |P_i ∪ G_i|``):

* ``iou_i = I_i / U_i``; **convention**: ``iou_i = 1`` when ``U_i = 0`` (both masks empty: a
  correct "nothing here"), as the DAVIS toolkit does for J.
* ``overall_iou = Σ_i I_i / Σ_i U_i`` (cumulative IoU; ``1`` when ``Σ U = 0``).
* ``mean_iou = (1/N) Σ_i iou_i``.
* ``P@K = (1/N) |{i : iou_i ≥ K}|`` for ``K ∈ {0.5, 0.6, 0.7, 0.8, 0.9}``; the comparison is made
  exactly on integers (``100·I_i ≥ 100K·U_i``), so ``iou = 0.55`` counts for ``K = 0.55``.
* ``mAP@0.5:0.95 = (1/10) Σ_{K ∈ {0.50, 0.55, …, 0.95}} P@K`` (CSTM / LBDT lineage).
* ``coco_mAP@0.5:0.95`` and ``coco_AP@0.5``: COCO segmentation AP computed by pycocotools'
  ``COCOeval`` (iouType ``segm``, ``useCats = 0``: categories ignored, area range ``all``,
  ``maxDets = 100``), one image per sample holding one ground-truth object and one detection
  with the sample's ``score`` (MTTR / ReferFormer lineage). **Convention**: an empty mask is
  "no object" — an empty ground truth adds no annotation (a non-empty prediction there is a
  false positive) and an empty prediction adds no detection (its ground truth is a miss). A
  sample with both masks empty therefore does not affect COCO AP (pycocotools itself would
  score empty-vs-empty as IoU 0). With no ground-truth object at all the COCO numbers are NaN.
* ``J`` = region similarity = ``iou_i`` (same empty convention). ``F`` = DAVIS boundary
  F-measure (see :func:`boundary_f_measure`). DAVIS averages per object track first: when
  samples carry a ``track`` (e.g. ``"video/object/expression"``), ``J = mean_tracks(mean_frames
  J)`` and likewise ``F``; without tracks every sample is its own track, i.e. ``J`` equals
  ``mean_iou``. ``J&F = (J + F) / 2``.

Per-label results (issue 14: every metric per expression kind, A2D actor / action class,
Ref-DAVIS17 expression set): pass ``labels=[...]`` to ``process``; :meth:`ReferringMetrics.
compute_by_label` applies the same equations to each label's samples (``N``, ``Σ I``, ``Σ U``,
the P@K counts and COCO AP restricted to them). Labels travel in :meth:`~ReferringMetrics.state`,
so per-label numbers merged from shards equal one pass, like the overall ones.

Ref-DAVIS17 protocol (published numbers, e.g. ReferFormer's ``inference_davis.py`` +
``eval_davis.py``): per expression set, a video's objects are predicted from that set's
expressions and merged into one label map per frame (:func:`merge_object_masks`), then scored
with the DAVIS-2017 ``unsupervised`` procedure (objects matched to ground truth by the
Hungarian algorithm on mean (J+F)/2, J and F averaged over frames, then over every object of
every video); the four sets are averaged (:meth:`ReferringMetrics.process_objects`,
:meth:`ReferringMetrics.compute_objects`, :func:`average_over_groups`). docs/METRICS.md.

Order independence: all sums over floats use ``math.fsum`` (exactly rounded, so independent of
the order of samples), counts and areas are integers, and COCO AP is computed on samples put in
a canonical order, so ``compute()`` is a function of the multiset of samples only: any split
into shards merged with :meth:`ReferringMetrics.merge` gives bit-identical numbers.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

__all__ = [
    "PK_THRESHOLDS",
    "MAP_THRESHOLDS",
    "STATE_VERSION",
    "ReferringMetrics",
    "average_over_groups",
    "boundary_f_measure",
    "boundary_tolerance_px",
    "mask_boundary",
    "merge_object_masks",
    "to_bool_mask",
]

#: Thresholds reported as ``P@K`` (in hundredths, exact).
PK_THRESHOLDS: tuple[int, ...] = (50, 60, 70, 80, 90)
#: Thresholds averaged by ``mAP@0.5:0.95`` (in hundredths, exact).
MAP_THRESHOLDS: tuple[int, ...] = tuple(range(50, 100, 5))
#: Version of the dict returned by :meth:`ReferringMetrics.state`.
STATE_VERSION = 2

#: every metric ``compute`` returns (besides ``num_samples``), in table order
METRIC_NAMES: tuple[str, ...] = (
    "overall_iou",
    "mean_iou",
    *(f"P@{k / 100:.1f}" for k in PK_THRESHOLDS),
    "mAP@0.5:0.95",
    "coco_mAP@0.5:0.95",
    "coco_AP@0.5",
    "J",
    "F",
    "J&F",
)

_NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def to_bool_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Turn a numpy array / torch tensor into a C-contiguous boolean ``[H, W]`` array.

    Accepts bool, integer (non-zero = foreground, e.g. 0/1 or 0/255 PNGs) and floating arrays
    whose values are all 0 or 1; shape ``[H, W]`` or with leading singleton dimensions
    (``[1, H, W]``). Soft floating masks (probabilities, logits) are refused: threshold first.
    """
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):  # torch.Tensor, without importing torch
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [H, W] mask, got shape {tuple(np.shape(mask))}")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer):
        return arr != 0
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(
                f"{name} is a floating mask with values other than 0 and 1; threshold it "
                "(e.g. sigmoid(logits) > 0.5) before passing it to the metrics"
            )
        return arr == 1
    raise TypeError(f"{name} has unsupported dtype {arr.dtype}")


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """DAVIS-2017 boundary map of a boolean mask (``seg2bmap`` of the DAVIS toolkit).

    A pixel ``(y, x)`` is a boundary pixel when its value differs from at least one of its
    east ``(y, x+1)``, south ``(y+1, x)`` and south-east ``(y+1, x+1)`` neighbours that lie
    inside the image::

        B(y, x) = OR_{(dy, dx) in {(0,1), (1,0), (1,1)}, inside} [M(y, x) != M(y+dy, x+dx)]

    So the map is one pixel wide, offset half a pixel towards the origin: it holds foreground
    pixels and the background pixels just west / north / north-west of the foreground. Pixels
    outside the image are never compared (the last row only looks east, the last column only
    south, the bottom-right pixel is never a boundary), so a mask covering the whole frame has
    an empty boundary.
    """
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    b = np.zeros((h, w), dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        # compare every pixel whose (dy, dx) neighbour is inside the image with that neighbour
        here = m[: h - dy, : w - dx]
        there = m[dy:, dx:]
        b[: h - dy, : w - dx] |= here != there
    return b


def boundary_tolerance_px(shape: Sequence[int], tolerance: float = 0.008) -> int:
    """Boundary match tolerance in pixels: ``d = ceil(tolerance · sqrt(H² + W²))``.

    As in DAVIS, a ``tolerance ≥ 1`` is read as a number of pixels and used as is (rounded up).
    """
    if tolerance >= 1:
        return int(math.ceil(tolerance))
    h, w = int(shape[0]), int(shape[1])
    return int(math.ceil(tolerance * math.hypot(h, w)))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _boundary_counts(pred: np.ndarray, gt: np.ndarray, d: int) -> tuple[int, int, int, int]:
    """(matched pred boundary px, pred boundary px, matched gt boundary px, gt boundary px)."""
    boxes = [b for b in (_bbox(pred), _bbox(gt)) if b is not None]
    if not boxes:
        return 0, 0, 0, 0
    # Crop to both masks plus a margin: boundary pixels lie in the masks or one pixel
    # north / west of them, and a margin >= 2 keeps the crop's last row and column empty with
    # empty neighbours unless they are the image's own (same boundary map, same
    # nearest-boundary distances as on the full frame).
    h, w = pred.shape
    margin = d + 2
    r0 = max(min(b[0] for b in boxes) - margin, 0)
    r1 = min(max(b[1] for b in boxes) + margin, h)
    c0 = max(min(b[2] for b in boxes) - margin, 0)
    c1 = min(max(b[3] for b in boxes) + margin, w)
    bp = mask_boundary(pred[r0:r1, c0:c1])
    bg = mask_boundary(gt[r0:r1, c0:c1])
    n_p = int(np.count_nonzero(bp))
    n_g = int(np.count_nonzero(bg))
    if n_p == 0 or n_g == 0:
        return 0, n_p, 0, n_g
    # dilate(B, disk(d)) ∋ x  <=>  min_{b ∈ B} ||x - b||_2 <= d, i.e. the Euclidean distance
    # transform of ¬B is <= d (sqrt of an integer that is a perfect square is exact in IEEE).
    dist_to_g = ndimage.distance_transform_edt(~bg)
    dist_to_p = ndimage.distance_transform_edt(~bp)
    m_p = int(np.count_nonzero(dist_to_g[bp] <= d))
    m_g = int(np.count_nonzero(dist_to_p[bg] <= d))
    return m_p, n_p, m_g, n_g


def _f_from_counts(m_p: int, n_p: int, m_g: int, n_g: int) -> tuple[float, float, float]:
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0:  # nothing predicted, something to find
        return 0.0, 1.0, 0.0
    if n_g == 0:  # something predicted, nothing to find
        return 0.0, 0.0, 1.0
    precision = m_p / n_p
    recall = m_g / n_g
    denom = m_p * n_g + m_g * n_p  # F = 2PR/(P+R) = 2 m_p m_g / (m_p n_g + m_g n_p), exactly
    f = 0.0 if denom == 0 else (2 * m_p * m_g) / denom
    return f, precision, recall


def boundary_f_measure(pred: Any, gt: Any, tolerance: float = 0.008) -> tuple[float, float, float]:
    """DAVIS boundary F-measure of one mask pair; returns ``(F, precision, recall)``.

    Equal to the DAVIS-2017 toolkit's ``db_eval_boundary`` (davis2017-evaluation,
    ``f_measure`` without void pixels). With ``B_P``, ``B_G`` the boundary maps
    (:func:`mask_boundary`, the toolkit's ``seg2bmap``) and ``D_d(X)`` the dilation of ``X``
    by the disk ``{(u, v): u² + v² ≤ d²}`` of radius ``d = boundary_tolerance_px(shape,
    tolerance)`` (``ceil(0.008 ×`` image diagonal``)``; the toolkit's ``disk(bound_pix)``),
    computed here as "Euclidean distance to the nearest pixel of X ≤ d"::

        precision = |B_P ∩ D_d(B_G)| / |B_P|
        recall    = |B_G ∩ D_d(B_P)| / |B_G|
        F         = 2 · precision · recall / (precision + recall)   (0 when both are 0)

    Empty boundaries (DAVIS convention): both empty → ``F = 1``; only ``B_P`` empty →
    precision 1, recall 0, ``F = 0``; only ``B_G`` empty → precision 0, recall 1, ``F = 0``.
    """
    p = to_bool_mask(pred, "pred")
    g = to_bool_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} masks differ in size")
    return _f_from_counts(*_boundary_counts(p, g, boundary_tolerance_px(p.shape, tolerance)))


# ---------------------------------------------------------------------------------------------
# accumulator
# ---------------------------------------------------------------------------------------------

_ARRAY_FIELDS: dict[str, type] = {
    "intersection": np.int64,
    "union": np.int64,
    "pred_area": np.int64,
    "gt_area": np.int64,
    "height": np.int64,
    "width": np.int64,
    "f": np.float64,
    "score": np.float64,
}
_LIST_FIELDS = ("key", "labels", "track", "pred_rle", "gt_rle")


class ReferringMetrics:
    """Accumulator of referring-segmentation metrics (see the module docstring for equations).

    Usage::

        m = ReferringMetrics()
        for pred, gt, key in samples:            # bool masks at the original frame size
            m.process(pred, gt, score=s, group=g, key=key)
        m.compute()                              # {"overall_iou": ..., "J&F": ..., ...}

        # distributed: every worker sends m.state(); the driver does
        total = ReferringMetrics.merge(states)   # duplicate keys (sampler padding) dropped
        total.compute()

    Memory per sample: a few integers and floats plus the COCO RLE encodings of both masks
    (needed for COCO AP); full masks are never kept.

    Args:
        boundary_tolerance: F-measure tolerance as a fraction of the image diagonal (DAVIS:
            0.008), or a number of pixels when ``>= 1``.
    """

    def __init__(self, boundary_tolerance: float = 0.008) -> None:
        if not boundary_tolerance > 0:
            raise ValueError(f"boundary_tolerance must be > 0, got {boundary_tolerance}")
        self.boundary_tolerance = float(boundary_tolerance)
        self.reset()

    # -- accumulation -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all samples."""
        self._data: dict[str, list[Any]] = {k: [] for k in (*_ARRAY_FIELDS, *_LIST_FIELDS)}
        self._seen: set[str] = set()
        #: (group, video, frame) -> merged-object frame record (see process_objects)
        self._frames: dict[tuple[str, str, str], dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._data["intersection"])

    def process(
        self,
        pred: Any,
        gt: Any,
        *,
        score: float = 1.0,
        group: str | None = None,
        labels: Iterable[str] = (),
        key: str | None = None,
        track: str | None = None,
    ) -> bool:
        """Add one sample; returns ``False`` (and adds nothing) when ``key`` was already seen.

        Args:
            pred: predicted mask ``[H, W]`` at the original frame size (numpy or torch; bool,
                integer non-zero, or float 0/1).
            gt: ground-truth mask, same size.
            score: confidence of the prediction, used only by COCO AP (ranking).
            group: optional label (kept for callers that pass one; same as
                ``labels=[group]``).
            labels: names of the subsets this sample belongs to (e.g. the refer-shapes
                expression kind, the A2D actor and action, the Ref-DAVIS17 expression set);
                :meth:`compute_by_label` scores every label's samples alone.
            key: optional unique sample id (e.g. ``"clip_id/object_id/expression_id"``); a
                sample whose key was already processed or merged is dropped, so padded
                duplicates from a distributed sampler are not counted twice.
            track: optional object-track id; J and F are averaged over the samples of each
                track first, then over tracks (DAVIS protocol).
        """
        if key is not None:
            key = str(key)
            if key in self._seen:
                return False
        p = to_bool_mask(pred, "pred")
        g = to_bool_mask(gt, "gt")
        if p.shape != g.shape:
            raise ValueError(
                f"pred {p.shape} and gt {g.shape} masks differ in size; resize the prediction "
                "to the original frame size first"
            )
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"score must be finite, got {score}")
        inter = int(np.count_nonzero(p & g))
        union = int(np.count_nonzero(p | g))
        d = boundary_tolerance_px(p.shape, self.boundary_tolerance)
        f, _, _ = _f_from_counts(*_boundary_counts(p, g, d))
        data = self._data
        data["intersection"].append(inter)
        data["union"].append(union)
        data["pred_area"].append(int(np.count_nonzero(p)))
        data["gt_area"].append(int(np.count_nonzero(g)))
        data["height"].append(p.shape[0])
        data["width"].append(p.shape[1])
        data["f"].append(f)
        data["score"].append(score)
        data["key"].append(key)
        names = {str(x) for x in labels}
        if group is not None:
            names.add(str(group))
        data["labels"].append(tuple(sorted(names)))
        data["track"].append(None if track is None else str(track))
        data["pred_rle"].append(_encode(p))
        data["gt_rle"].append(_encode(g))
        if key is not None:
            self._seen.add(key)
        return True

    def process_objects(
        self,
        *,
        group: str,
        video: str,
        frame: str,
        preds: Mapping[str, Any],
        gts: Mapping[str, Any],
        probs: Mapping[str, Any] | None = None,
    ) -> bool:
        """Add one frame of the Ref-DAVIS17 protocol: every object's prediction for one
        expression set (``group``), merged into one label map, against every object's ground
        truth. Returns ``False`` (adds nothing) when ``(group, video, frame)`` was seen.

        ``preds[o]``: the binary mask predicted for object ``o`` from its expression of this
        set; ``probs[o]``: its probability map (used to merge, see
        :func:`merge_object_masks`); ``gts[o]``: object ``o``'s ground truth (every object
        of the frame, whether or not this set has an expression for it). Keeps, per pair of
        predicted object ``p`` and ground-truth object ``g``, ``J(p, g)`` and ``F(p, g)`` of
        this frame; :meth:`compute_objects` does the DAVIS-2017 matching and averaging.
        """
        fkey = (str(group), str(video), str(frame))
        if fkey in self._frames:
            return False
        merged = merge_object_masks(preds, probs)
        pred_ids = sorted(merged, key=_id_order)
        gts = {str(k): v for k, v in gts.items()}
        gt_ids = sorted(gts, key=_id_order)
        g_masks = [to_bool_mask(gts[k], f"gt {k}") for k in gt_ids]
        shapes = {m.shape for m in g_masks} | {m.shape for m in merged.values()}
        if len(shapes) > 1:
            raise ValueError(f"{video} frame {frame}: masks of different sizes {sorted(shapes)}")
        d = boundary_tolerance_px(next(iter(shapes)), self.boundary_tolerance) if shapes else 1
        j = np.zeros((len(pred_ids), len(gt_ids)), dtype=np.float64)
        f = np.zeros_like(j)
        for a, pid in enumerate(pred_ids):
            pm = merged[pid]
            for b, gm in enumerate(g_masks):
                union = int(np.count_nonzero(pm | gm))
                j[a, b] = int(np.count_nonzero(pm & gm)) / union if union else 1.0
                f[a, b] = _f_from_counts(*_boundary_counts(pm, gm, d))[0]
        # what an object predicted nowhere scores (the toolkit pads missing ids with empty masks)
        j_empty = np.asarray([0.0 if gm.any() else 1.0 for gm in g_masks], dtype=np.float64)
        f_empty = np.asarray(
            [0.0 if mask_boundary(gm).any() else 1.0 for gm in g_masks], dtype=np.float64
        )
        self._frames[fkey] = {
            "pred_ids": tuple(pred_ids),
            "gt_ids": tuple(gt_ids),
            "j": j,
            "f": f,
            "j_empty": j_empty,
            "f_empty": f_empty,
        }
        return True

    # -- state / merge ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Plain picklable state: numpy arrays (one entry per sample) and lists.

        Keys: ``version``, ``boundary_tolerance``, the int64 arrays ``intersection``, ``union``,
        ``pred_area``, ``gt_area``, ``height``, ``width``, the float64 arrays ``f``, ``score``,
        the lists ``key``, ``track`` (``str | None``), ``labels`` (tuples of ``str``) and
        ``pred_rle``, ``gt_rle`` (COCO compressed RLE counts, ``bytes``), and ``frames``: the
        Ref-DAVIS17 merged-object frames (see :meth:`process_objects`).
        """
        out: dict[str, Any] = {
            "version": STATE_VERSION,
            "boundary_tolerance": self.boundary_tolerance,
        }
        for name, dtype in _ARRAY_FIELDS.items():
            out[name] = np.asarray(self._data[name], dtype=dtype)
        for name in _LIST_FIELDS:
            out[name] = list(self._data[name])
        out["frames"] = [(k, dict(v)) for k, v in self._frames.items()]
        return out

    @classmethod
    def merge(cls, states: Iterable[Mapping[str, Any] | ReferringMetrics]) -> ReferringMetrics:
        """Combine worker states (or accumulators) into one accumulator.

        A sample whose ``key`` appeared earlier (in the same or an earlier state) is dropped:
        the first occurrence wins. Samples without a key are always kept. All states must use
        the same ``boundary_tolerance``.
        """
        states = [s.state() if isinstance(s, ReferringMetrics) else s for s in states]
        if not states:
            return cls()
        tolerances = {float(s["boundary_tolerance"]) for s in states}
        if len(tolerances) != 1:
            raise ValueError(f"cannot merge states with boundary tolerances {sorted(tolerances)}")
        merged = cls(boundary_tolerance=tolerances.pop())
        data = merged._data
        for s in states:
            if s.get("version") != STATE_VERSION:
                raise ValueError(
                    f"metrics state version {s.get('version')!r}, expected {STATE_VERSION}"
                )
            for fkey, record in s.get("frames", ()):
                merged._frames.setdefault(tuple(fkey), dict(record))
            n = len(s["intersection"])
            arrays = {name: np.asarray(s[name], dtype=dt) for name, dt in _ARRAY_FIELDS.items()}
            for name in (*_ARRAY_FIELDS, *_LIST_FIELDS):
                if len(s[name]) != n:
                    raise ValueError(f"state field {name!r} has {len(s[name])} entries, not {n}")
            for i in range(n):
                key = s["key"][i]
                if key is not None:
                    if key in merged._seen:
                        continue
                    merged._seen.add(key)
                for name in _ARRAY_FIELDS:
                    data[name].append(arrays[name][i].item())
                for name in _LIST_FIELDS:
                    data[name].append(s[name][i])
        return merged

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ReferringMetrics:
        """Rebuild an accumulator from :meth:`state`."""
        return cls.merge([state])

    # -- results ------------------------------------------------------------------------------

    def compute(self, *, coco: bool = True) -> dict[str, float]:
        """All metrics over all samples (NaN everywhere, ``num_samples = 0``, when empty).

        Keys: ``overall_iou``, ``mean_iou``, ``P@0.5`` … ``P@0.9``, ``mAP@0.5:0.95``,
        ``coco_mAP@0.5:0.95``, ``coco_AP@0.5``, ``J``, ``F``, ``J&F``, ``num_samples``.
        ``coco=False`` skips pycocotools (about 1 s per 1,000 samples) and sets the two COCO
        keys to NaN.
        """
        return self._compute(np.arange(len(self)), coco=coco)

    def labels(self) -> list[str]:
        """Sorted names of the labels seen (a sample may carry none or several)."""
        return sorted({name for names in self._data["labels"] for name in names})

    def compute_by_label(self, *, coco: bool = True) -> dict[str, dict[str, float]]:
        """:meth:`compute` restricted to the samples of each label, ``{label: metrics}`` in
        sorted order (the mmengine ``compute`` per subset: the same equations on the subset)."""
        out: dict[str, dict[str, float]] = {}
        for name in self.labels():
            idx = np.asarray(
                [i for i, names in enumerate(self._data["labels"]) if name in names], dtype=np.int64
            )
            out[name] = self._compute(idx, coco=coco)
        return out

    def object_groups(self) -> list[str]:
        """Sorted expression sets that have merged-object frames (:meth:`process_objects`)."""
        return sorted({k[0] for k in self._frames})

    def compute_objects(self) -> dict[str, dict[str, float]]:
        """Ref-DAVIS17 protocol per expression set, DAVIS-2017 ``unsupervised`` scoring.

        For set ``s`` and video ``v`` (frames ``t = 1..T_v`` seen), with predicted objects
        ``p`` (padded with never-predicted objects up to the number of ground-truth objects)
        and ground-truth objects ``g``::

            Jbar(p, g) = (1/T_v) Σ_t J_t(p, g),   Fbar(p, g) = (1/T_v) Σ_t F_t(p, g)
            π_v = argmax over one-to-one assignments Σ_g (Jbar(π(g), g) + Fbar(π(g), g)) / 2
            J(s) = mean over all (v, g) of Jbar(π_v(g), g),   F(s) likewise,
            J&F(s) = (J(s) + F(s)) / 2

        (the toolkit's ``_evaluate_unsupervised`` with ``linear_sum_assignment``, then the
        mean over every object of every sequence). Returns ``{set: {"J", "F", "J&F",
        "num_objects", "num_frames"}}``.
        """
        from scipy.optimize import linear_sum_assignment

        videos: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for (group, video, _frame), rec in sorted(self._frames.items()):
            videos.setdefault((group, video), []).append(rec)
        per_set: dict[str, dict[str, list[float]]] = {}
        n_frames: dict[str, int] = {}
        for (group, video), recs in videos.items():
            gt_ids = recs[0]["gt_ids"]
            if any(r["gt_ids"] != gt_ids for r in recs):
                raise ValueError(
                    f"{video} ({group}): frames list different ground-truth objects; every "
                    "frame of a Ref-DAVIS17 video must carry the same objects"
                )
            pred_ids = sorted({p for r in recs for p in r["pred_ids"]}, key=_id_order)
            n_pred = max(len(pred_ids), len(gt_ids))
            jsum = np.zeros((n_pred, len(gt_ids)))
            fsum = np.zeros_like(jsum)
            for r in recs:
                row = {p: i for i, p in enumerate(r["pred_ids"])}
                for a in range(n_pred):
                    i = row.get(pred_ids[a]) if a < len(pred_ids) else None
                    jsum[a] += r["j"][i] if i is not None else r["j_empty"]
                    fsum[a] += r["f"][i] if i is not None else r["f_empty"]
            jbar, fbar = jsum / len(recs), fsum / len(recs)
            rows, cols = linear_sum_assignment(-(jbar + fbar) / 2)
            acc = per_set.setdefault(group, {"J": [], "F": []})
            for a, b in zip(rows.tolist(), cols.tolist()):
                acc["J"].append(float(jbar[a, b]))
                acc["F"].append(float(fbar[a, b]))
            n_frames[group] = n_frames.get(group, 0) + len(recs)
        out: dict[str, dict[str, float]] = {}
        for group in sorted(per_set):
            js, fs = per_set[group]["J"], per_set[group]["F"]
            jm = math.fsum(js) / len(js) if js else _NAN
            fm = math.fsum(fs) / len(fs) if fs else _NAN
            out[group] = {
                "J": jm,
                "F": fm,
                "J&F": (jm + fm) / 2,
                "num_objects": len(js),
                "num_frames": n_frames[group],
            }
        return out

    # the earlier names: one label per sample ("group")
    groups = labels
    compute_by_group = compute_by_label

    def _compute(self, idx: np.ndarray, *, coco: bool = True) -> dict[str, float]:
        n = int(idx.size)
        out: dict[str, float] = {}
        keys = list(METRIC_NAMES)
        if n == 0:
            out = dict.fromkeys(keys, _NAN)
            out["num_samples"] = 0
            return out
        inter = np.asarray(self._data["intersection"], dtype=np.int64)[idx]
        union = np.asarray(self._data["union"], dtype=np.int64)[idx]
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        sum_i, sum_u = int(inter.sum()), int(union.sum())
        out["overall_iou"] = sum_i / sum_u if sum_u > 0 else 1.0
        out["mean_iou"] = math.fsum(iou.tolist()) / n
        # iou >= K/100  <=>  100 I >= K U  (exact; U = 0 gives I = 0 and passes: iou = 1)
        prec = {k: int(np.count_nonzero(100 * inter >= k * union)) / n for k in MAP_THRESHOLDS}
        for k in PK_THRESHOLDS:
            out[f"P@{k / 100:.1f}"] = prec[k]
        out["mAP@0.5:0.95"] = math.fsum(prec.values()) / len(MAP_THRESHOLDS)
        out["coco_mAP@0.5:0.95"], out["coco_AP@0.5"] = self._coco_ap(idx) if coco else (_NAN, _NAN)
        f = np.asarray(self._data["f"], dtype=np.float64)[idx]
        tracks = [self._data["track"][i] for i in idx.tolist()]
        out["J"] = _track_mean(iou.tolist(), tracks)
        out["F"] = _track_mean(f.tolist(), tracks)
        out["J&F"] = (out["J"] + out["F"]) / 2
        out["num_samples"] = n
        return out

    def _coco_ap(self, idx: np.ndarray) -> tuple[float, float]:
        """COCO segmentation AP@[.5:.95] and AP@.5, categories ignored, via pycocotools."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        d = self._data
        # Canonical order (content, not arrival order): COCOeval breaks score ties by image
        # order, so this makes the result independent of how samples were sharded.
        order = sorted(
            idx.tolist(),
            key=lambda i: (
                -d["score"][i],
                d["gt_rle"][i],
                d["pred_rle"][i],
                d["height"][i],
                d["width"][i],
            ),
        )
        images, gts, dts = [], [], []
        for image_id, i in enumerate(order, start=1):
            h, w = int(d["height"][i]), int(d["width"][i])
            images.append({"id": image_id, "height": h, "width": w})
            if d["gt_area"][i] > 0:
                gts.append(_coco_ann(len(gts) + 1, image_id, d["gt_rle"][i], h, w))
            if d["pred_area"][i] > 0:
                ann = _coco_ann(len(dts) + 1, image_id, d["pred_rle"][i], h, w)
                ann["score"] = float(d["score"][i])
                dts.append(ann)
        if not gts:
            return _NAN, _NAN
        if not dts:
            return 0.0, 0.0
        categories = [{"id": 1, "name": "object"}]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress prints
            coco_gt = COCO()
            coco_gt.dataset = {"images": images, "annotations": gts, "categories": categories}
            coco_gt.createIndex()
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "annotations": dts, "categories": categories}
            coco_dt.createIndex()
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.params.useCats = 0
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return float(ev.stats[0]), float(ev.stats[1])


def _id_order(obj_id: str) -> tuple[int, int, str]:
    """Object ids in numeric order when they are numbers (``"2" < "10"``), else by text."""
    text = str(obj_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def merge_object_masks(
    masks: Mapping[str, Any], probs: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """One label map from the per-object masks of a frame (Ref-DAVIS17, as in ReferFormer's
    ``inference_davis.py``): a pixel covered by several objects' masks goes to the object
    with the highest probability there (ties, or no ``probs``: the first object in id
    order); uncovered pixels are background::

        label(x) = argmax_{o : M_o(x)} P_o(x)   if any M_o(x), else background

    Returns the disjoint masks ``{object id: label == o}``. With an absolute threshold of
    0.5 this equals ReferFormer's rule (probabilities below 0.5 zeroed, background 0.1,
    argmax).
    """
    ids = sorted((str(k) for k in masks), key=_id_order)
    if not ids:
        return {}
    by_id = {str(k): v for k, v in masks.items()}
    stack = np.stack([to_bool_mask(by_id[k], f"mask {k}") for k in ids])
    covered = stack.any(axis=0)
    p_by_id = {str(k): v for k, v in (probs or {}).items()}
    if len(ids) == 1 or any(p_by_id.get(k) is None for k in ids):  # no (complete) probabilities
        winner = np.argmax(stack, axis=0)
    else:
        score = np.stack([np.asarray(p_by_id[k], dtype=np.float64) for k in ids])
        if score.shape != stack.shape:
            raise ValueError(f"probability maps {score.shape} and masks {stack.shape} differ")
        winner = np.argmax(np.where(stack, score, -np.inf), axis=0)
    return {k: covered & (winner == i) for i, k in enumerate(ids)}


def _encode(mask: np.ndarray) -> bytes:
    """COCO compressed RLE counts of a boolean mask (the size is stored separately)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return bytes(rle["counts"])


def _coco_ann(ann_id: int, image_id: int, counts: bytes, h: int, w: int) -> dict[str, Any]:
    rle = {"size": [h, w], "counts": counts}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
    }


def _track_mean(values: list[float], tracks: list[str | None]) -> float:
    """Mean over tracks of the per-track mean (a sample without a track is its own track)."""
    per_track: dict[str, list[float]] = {}
    singles: list[float] = []
    for v, t in zip(values, tracks):
        if t is None:
            singles.append(v)
        else:
            per_track.setdefault(t, []).append(v)
    means = singles + [math.fsum(vs) / len(vs) for vs in per_track.values()]
    return math.fsum(means) / len(means)


def average_over_groups(
    by_group: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] = ("J", "F", "J&F"),
) -> dict[str, float]:
    """Unweighted mean of metrics over groups (the Ref-DAVIS17 protocol: J&F per expression
    set, then averaged over the sets): ``avg_k = (1/|S|) Σ_{s ∈ S} metric_k(s)``.

    ``by_group`` is :meth:`ReferringMetrics.compute_by_group`'s result. NaN when empty.
    """
    out: dict[str, float] = {}
    for k in keys:
        vals = [float(m[k]) for m in by_group.values()]
        out[k] = math.fsum(vals) / len(vals) if vals else _NAN
    return out
