"""Inference and evaluation shared by training-time validation and ``lstc eval``.

One code path, so that ``lstc eval`` reproduces the validation metrics logged during training:

* :func:`predict` / :func:`predict_masks`: forward the model on a collated batch
  (``pipelines.data.collate``: ``clip`` float ``[B,3,T,H,W]``, ``text``, ``orig_size``), resize
  the target-frame **logits** bilinearly (``align_corners=False``) to each sample's original
  frame size, then threshold ``sigmoid(logit) > threshold``. The confidence ``score`` of a
  prediction (ranking for COCO AP) is the mean probability over its foreground pixels, or the
  maximum probability when the mask is empty.
* :func:`evaluate`: runs :func:`predict` over batches and feeds ``lstc.metrics.ReferringMetrics``
  with ``key = clip_id/object_id/expression_id`` (so merging states of several workers drops
  padded duplicates), ``group`` = the sample's ``expression_set`` meta (Ref-DAVIS17's four
  sets) and ``track = video/object/expression`` (DAVIS averages J and F per track first).
  Samples without ground truth are skipped (they belong to :mod:`pipelines.eval.submission`).

A DDP-wrapped model is unwrapped first: evaluation never runs collectives, so ranks with
different numbers of batches cannot hang.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.checkpoint import unwrap

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lstc.metrics import ReferringMetrics


@dataclass(frozen=True)
class Prediction:
    """One sample's prediction at the original frame size."""

    mask: np.ndarray  # bool [H0, W0]
    score: float  # mean foreground probability (max probability when empty)


def model_device(model: Any) -> torch.device:
    import torch

    try:
        return next(unwrap(model).parameters()).device
    except StopIteration:
        return torch.device("cpu")


def parse_meta(meta: Any) -> dict[str, Any]:
    """A sample's ``meta`` (JSON string, mapping or None) as a dict; unparsable → empty."""
    if meta is None:
        return {}
    if isinstance(meta, Mapping):
        return dict(meta)
    if isinstance(meta, bytes):
        meta = meta.decode("utf-8", "replace")
    if isinstance(meta, str) and meta.strip().startswith("{"):
        try:
            out = json.loads(meta)
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}
    return {}


def _orig_sizes(batch: Mapping[str, Any], n: int) -> list[tuple[int, int]]:
    sizes = batch.get("orig_size")
    if sizes is None:
        raise KeyError("batch has no 'orig_size' (original frame size of every sample)")
    if hasattr(sizes, "tolist"):
        sizes = sizes.tolist()
    out = [(int(s[0]), int(s[1])) for s in sizes]
    if len(out) != n:
        raise ValueError(f"batch has {n} clips but {len(out)} original sizes")
    return out


def forward_logits(model: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    """Target-frame mask logits ``[B,1,H,W]`` at the model's input size (no grad)."""
    import torch

    core = unwrap(model)
    device = model_device(core)
    clip = batch["clip"]
    if not isinstance(clip, torch.Tensor):
        clip = torch.as_tensor(np.asarray(clip))
    clip = clip.to(device=device, dtype=torch.float32, non_blocking=True)
    texts = list(batch["text"])
    tokens = core.tokenizer(texts)
    tokens = {k: v.to(device) for k, v in tokens.items()}
    with torch.no_grad():
        out = core(clip, tokens["input_ids"], tokens["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out
    return logits.float()


def predict(model: Any, batch: Mapping[str, Any], *, threshold: float = 0.5) -> list[Prediction]:
    """Masks (bool, original size) and scores for every sample of a collated batch."""
    import torch
    import torch.nn.functional as F

    logits = forward_logits(model, batch)
    sizes = _orig_sizes(batch, logits.shape[0])
    preds: list[Prediction] = []
    with torch.no_grad():
        for i, (h, w) in enumerate(sizes):
            up = F.interpolate(logits[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
            prob = torch.sigmoid(up[0, 0])
            mask = prob > threshold
            score = prob[mask].mean() if bool(mask.any()) else prob.max()
            preds.append(Prediction(mask.cpu().numpy(), float(score)))
    return preds


def predict_masks(
    model: Any, batch: Mapping[str, Any], *, threshold: float = 0.5
) -> list[np.ndarray]:
    """``sigmoid(resize(logits, original size)) > threshold`` for every sample (bool arrays)."""
    return [p.mask for p in predict(model, batch, threshold=threshold)]


def _column(batch: Mapping[str, Any], name: str, n: int) -> list[Any]:
    values = batch.get(name)
    if values is None:
        return [None] * n
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != n:
        raise ValueError(f"batch column {name!r} has {len(values)} entries, expected {n}")
    return values


def sample_ids(batch: Mapping[str, Any], n: int) -> list[tuple[str | None, str | None, str | None]]:
    """``(key, group, track)`` for every sample of a batch (see module docstring)."""
    keys = _column(batch, "key", n)
    metas = [parse_meta(m) for m in _column(batch, "meta", n)]
    videos = _column(batch, "video_id", n)
    objects = _column(batch, "object_id", n)
    expressions = _column(batch, "expression_id", n)
    out = []
    for key, meta, vid, obj, exp in zip(keys, metas, videos, objects, expressions):
        if isinstance(key, (list, tuple)):
            key = "/".join(str(k) for k in key)
        group = meta.get("expression_set")
        group = (
            None if group in (None, "") else f"set{group}" if str(group).isdigit() else str(group)
        )
        track = None
        if vid is not None and obj is not None:
            track = f"{vid}/{obj}/{exp}" if exp is not None else f"{vid}/{obj}"
        out.append((None if key is None else str(key), group, track))
    return out


def evaluate(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    device: Any = None,
    threshold: float = 0.5,
    metrics: ReferringMetrics | None = None,
    use_tracks: bool = True,
    on_batch: Callable[[Mapping[str, Any], list[Prediction]], None] | None = None,
) -> ReferringMetrics:
    """Accumulate ``ReferringMetrics`` over collated ``batches`` (samples without GT skipped).

    ``device``: where to run (the model is moved there; ``None`` keeps its device). The model's
    train/eval mode is restored afterwards. Pass ``metrics`` to keep accumulating into it.
    ``on_batch(batch, predictions)`` is called for every batch (e.g. to write a submission or
    overlays from the very predictions that were scored).
    """
    import torch

    from lstc.metrics import ReferringMetrics

    core = unwrap(model)
    if device is not None:
        core.to(torch.device(device))
    m = metrics if metrics is not None else ReferringMetrics()
    was_training = core.training
    core.eval()
    try:
        for batch in batches:
            preds = predict(core, batch, threshold=threshold)
            if on_batch is not None:
                on_batch(batch, preds)
            gts = _column(batch, "gt_mask_orig", len(preds))
            for pred, gt, (key, group, track) in zip(preds, gts, sample_ids(batch, len(preds))):
                if gt is None:
                    continue
                m.process(
                    pred.mask,
                    np.asarray(gt),
                    score=pred.score,
                    group=group,
                    key=key,
                    track=track if use_tracks else None,
                )
    finally:
        core.train(was_training)
    return m


def summarize(m: ReferringMetrics, *, average_groups: bool = True) -> dict[str, float]:
    """``m.compute()`` plus, when samples carry groups, per-group metrics as ``<group>/<name>``
    and their unweighted averages as ``groups_avg/J``, ``groups_avg/F``, ``groups_avg/J&F``
    (the Ref-DAVIS17 protocol: score each expression set, then average over sets)."""
    from lstc.metrics import average_over_groups

    out = dict(m.compute())
    if average_groups and m.groups():
        by_group = m.compute_by_group()
        for g, vals in by_group.items():
            for k, v in vals.items():
                out[f"{g}/{k}"] = v
        avg_keys: Sequence[str] = [k for k in next(iter(by_group.values())) if k != "num_samples"]
        for k, v in average_over_groups(by_group, keys=avg_keys).items():
            out[f"groups_avg/{k}"] = v
    return out
