"""The data path of training and evaluation (docs/INTERFACES.md section 5).

* :func:`build_train_dataset` — Ray Data: shard reading + clip/mask decoding
  (``data_prep.shards.read_samples``, in Ray Data tasks), samples without ground truth dropped.
  Ray Train splits it over the workers (``get_dataset_shard("train")``).
* :func:`build_val_clips` — the *undecoded* clip rows of the validation split, for training-time
  validation: every worker sees all rows, keeps the clips of its rank (``clip_index % world ==
  rank``, in the dataset's deterministic order) and decodes only those; the union over ranks is
  the whole split, with no padding and no duplicates, so merged metrics equal one process's
  (:func:`select_val_rows`, then :func:`decode_val_rows`).
* :func:`collate` — decoded samples -> model batch: frame selection (``num_frames`` around the
  target), resize to the model size and, when ``train``, the **joint clip + mask augmentation**:

  - random resized crop with probability ``crop_prob``: area fraction ``s ~ U(crop_scale)``,
    aspect ``r ~ logU(crop_ratio)``, box ``(w, h) = (sqrt(s r), sqrt(s / r))`` of the normalised
    frame, position uniform; the *same* normalised box is cut from every frame (prep size) and
    from the mask (original size), so they stay aligned.
  - horizontal flip with probability ``hflip``, of all frames and the mask together. A flip
    mirrors "left"/"right" (position *and* motion direction), so the expression's left/right
    words are swapped (:func:`swap_left_right`); with ``swap_left_right: false`` samples whose
    expression mentions left/right are not flipped.

  Frames are resized bilinearly with antialiasing (``align_corners=False``) in train and eval
  alike; the training mask is resized bilinearly and thresholded at 0.5 (float {0,1}).

Determinism: the augmentation of a sample is drawn from ``numpy.random.default_rng([seed,
crc32(key)])`` where ``seed`` mixes the recipe seed and the epoch (:func:`epoch_seed`), so it
does not depend on which worker or in which order the sample is processed (a resumed run draws
the same augmentation as an uninterrupted one).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import ray.data
    import torch

    from pipelines.config import AugmentConfig, Recipe

_LR = re.compile(r"\b(left|right)(most|ward|wards|hand|-hand)?\b", re.IGNORECASE)


# ------------------------------------------------------------------------------ datasets


def _has_mask(row: Mapping[str, Any]) -> bool:
    m = row.get("mask")
    return m is not None and np.asarray(m).size > 0


def _samples_with_mask(row: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The decoded samples of one clip row that have ground truth."""
    from data_prep.shards import iter_samples

    for s in iter_samples(row):
        if _has_mask(s):
            yield s


def build_train_dataset(recipe: Recipe) -> ray.data.Dataset:
    """Decoded training samples (with ground truth) of ``recipe.data.train_split``.

    Samples without ground truth are dropped inside the decoding ``flat_map`` rather than by a
    ``Dataset.filter`` with a Python function, which Ray Data warns about on every run (it
    wants ``filter(expr=...)``, and an expression cannot test a decoded mask's size)."""
    from data_prep.shards import read_clips

    return read_clips(recipe.data.root, recipe.data.train_split).flat_map(_samples_with_mask)


def build_val_clips(recipe: Recipe) -> ray.data.Dataset:
    """Undecoded clip rows of the validation split (decoded per rank, see module docstring)."""
    from data_prep.shards import read_clips

    return read_clips(recipe.data.root, recipe.data.val_split)


def count_samples(root: str, split: str, *, with_mask: bool = True) -> int:
    """Referring samples of a split from the manifest (no decoding); falls back to a count."""
    from data_prep.shards import load_manifest

    try:
        manifest = load_manifest(root)
    except Exception:  # noqa: BLE001 - fall back to counting
        manifest = {}
    counts = manifest.get("counts", {}) if isinstance(manifest, Mapping) else {}
    entry = counts.get(split)
    if isinstance(entry, Mapping):
        for name in ("samples_with_mask", "samples") if with_mask else ("samples",):
            if isinstance(entry.get(name), int):
                return int(entry[name])
    elif isinstance(entry, int):
        return entry
    from data_prep.shards import read_clips

    def n(row: Mapping[str, Any]) -> dict[str, Any]:
        total = 0
        for obj in row["objects"]:
            if with_mask and not obj["mask"]:
                continue
            total += len(obj["expressions"])
        return {"n": np.int64(total)}

    ds = read_clips(root, split).select_columns(["objects"]).map(n)
    return int(ds.sum("n") or 0)


# ------------------------------------------------------------------------ row plumbing


def rows_from_batch(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A column batch (Ray Data numpy/pandas format) as a list of row dicts."""
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        return batch.to_dict("records")
    cols = list(batch.keys())
    if not cols:
        return []
    n = len(batch[cols[0]])
    return [{c: batch[c][i] for c in cols} for i in range(n)]


def sample_key(sample: Mapping[str, Any]) -> str:
    return f"{sample['clip_id']}/{sample['object_id']}/{sample['expression_id']}"


def _detach(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


def select_val_rows(
    clip_rows: Iterable[Mapping[str, Any]],
    *,
    rank: int = 0,
    world_size: int = 1,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """This rank's clip rows (``clip_index % world_size == rank``; clips beyond ``limit``
    skipped), copied out of Ray's buffers so they can be cached across epochs."""
    for i, row in enumerate(clip_rows):
        if limit is not None and i >= limit:
            break
        if i % world_size == rank:
            yield {k: _detach(v) for k, v in row.items()}


def decode_val_rows(rows: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Decoded samples (with ground truth) of clip rows."""
    for row in rows:
        yield from _samples_with_mask(row)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


# ----------------------------------------------------------------------------- augmentation


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the augmentation / shuffle draws of one epoch (0-based)."""
    return int(seed) * 100_003 + int(epoch) + 1


def sample_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])


def mentions_left_right(text: str) -> bool:
    return _LR.search(text) is not None


def swap_left_right(text: str) -> str:
    """Swap left<->right words (``leftmost``, ``rightward`` ... too), keeping the case."""

    def repl(m: re.Match[str]) -> str:
        word, suffix = m.group(1), m.group(2) or ""
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            new = new.upper()
        elif word[0].isupper():
            new = new.capitalize()
        return new + suffix

    return _LR.sub(repl, text)


def draw_augmentation(rng: np.random.Generator, aug: AugmentConfig, text: str) -> dict[str, Any]:
    """One sample's augmentation: normalised crop box ``(y0, x0, y1, x1)`` and flip flag.

    The draws are made in a fixed order whatever the outcome, so equal seeds give equal
    augmentations regardless of the config's probabilities being hit.
    """
    u_crop, u_scale, u_ratio, u_y, u_x, u_flip = rng.random(6)
    box = (0.0, 0.0, 1.0, 1.0)
    if aug.enabled and u_crop < aug.crop_prob:
        lo, hi = aug.crop_scale
        scale = lo + (hi - lo) * u_scale
        rlo, rhi = math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])
        ratio = math.exp(rlo + (rhi - rlo) * u_ratio)
        w = min(1.0, math.sqrt(scale * ratio))
        h = min(1.0, math.sqrt(scale / ratio))
        y0 = (1.0 - h) * u_y
        x0 = (1.0 - w) * u_x
        box = (y0, x0, y0 + h, x0 + w)
    flip = bool(aug.enabled and u_flip < aug.hflip)
    if flip and not aug.swap_left_right and mentions_left_right(text):
        flip = False
    return {"box": box, "flip": flip}


def _pixel_box(box: Sequence[float], h: int, w: int) -> tuple[int, int, int, int]:
    y0 = min(max(int(round(box[0] * h)), 0), h - 1)
    x0 = min(max(int(round(box[1] * w)), 0), w - 1)
    y1 = min(max(int(round(box[2] * h)), y0 + 1), h)
    x1 = min(max(int(round(box[3] * w)), x0 + 1), w)
    return y0, x0, y1, x1


def select_frames(
    num_stored: int, stored_target: int, num_frames: int | None, target_index: int | None
) -> list[int]:
    """Positions in the stored clip of ``num_frames`` frames with the target at
    ``target_index`` (clamped at the clip ends); all frames when ``num_frames`` is None."""
    if num_frames is None:
        return list(range(num_stored))
    t = num_frames // 2 if target_index is None else target_index
    return [min(max(stored_target - t + i, 0), num_stored - 1) for i in range(num_frames)]


# ----------------------------------------------------------------------------------- collate


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def collate(
    samples: Sequence[Mapping[str, Any]],
    *,
    size: tuple[int, int],
    train: bool,
    rng: np.random.Generator | int | None = None,
    augment: AugmentConfig | None = None,
    num_frames: int | None = None,
    target_index: int | None = None,
    uint8: bool = False,
) -> dict[str, Any]:
    """Decoded samples -> batch (keys as in docs/INTERFACES.md section 5, plus ``has_mask``,
    ``clip_id``, ``video_id``, ``object_id``, ``expression_id`` and ``flipped``).

    ``rng``: an int seed (per-sample generators from ``(seed, key)``, order independent), a
    ``numpy.random.Generator`` (consumed in sample order) or None (seed 0). Augmentation is
    applied only when ``train`` and ``augment`` is enabled.

    ``uint8``: the clip stays ``uint8`` 0..255 (training: 4x less to copy and transfer; the
    device divides by 255, ``pipelines.train.speed.model_input``), laid out channels-last-3d
    (``[B, 3, T, H, W]`` with the 3 channels innermost, as decoded). Crop + resize then run on
    uint8 (torch's fixed-point antialiased bilinear, ~10x cheaper than float on CPU); the
    resampled values are rounded to integers, so ``clip / 255`` differs from the float path
    by at most 1/255 where a resize happens and is identical where none does.
    """
    import torch

    if not samples:
        raise ValueError("collate needs at least one sample")
    size = (int(size[0]), int(size[1]))
    do_aug = bool(train and augment is not None and augment.enabled)
    clips, masks, texts, has_mask, flipped = [], [], [], [], []
    for s in samples:
        key = sample_key(s)
        text = str(s["text"])
        clip = np.asarray(s["clip"])
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"sample {key}: clip must be uint8 [T,H,W,3], got {clip.shape}")
        idx = select_frames(clip.shape[0], int(s["target_index"]), num_frames, target_index)
        frames = torch.from_numpy(np.ascontiguousarray(clip[idx]))  # [T,H,W,3] uint8
        x = frames.permute(0, 3, 1, 2)  # [T,3,H,W], channels-last strides
        if not uint8:
            x = x.float().div_(255.0)
        mask = s.get("mask")
        m = None if mask is None or np.asarray(mask).size == 0 else np.asarray(mask)
        aug = {"box": (0.0, 0.0, 1.0, 1.0), "flip": False}
        if do_aug:
            gen = (
                rng
                if isinstance(rng, np.random.Generator)
                else sample_rng(0 if rng is None else int(rng), key)
            )
            aug = draw_augmentation(gen, augment, text)
        fh, fw = x.shape[-2], x.shape[-1]
        y0, x0, y1, x1 = _pixel_box(aug["box"], fh, fw)
        x = _resize(x[..., y0:y1, x0:x1], size)
        target = torch.zeros(1, *size)
        if m is not None:
            mt = torch.from_numpy((m > 0).astype(np.float32))[None, None]
            # the mask is cut with the frame's (rounded) box, so both stay aligned
            exact = (y0 / fh, x0 / fw, y1 / fh, x1 / fw)
            my0, mx0, my1, mx1 = _pixel_box(exact, mt.shape[-2], mt.shape[-1])
            mt = _resize(mt[..., my0:my1, mx0:mx1], size, antialias=False)
            target = (mt[0] > 0.5).float()
        if aug["flip"]:
            x = x.flip(-1)
            target = target.flip(-1)
            text = swap_left_right(text)
        clips.append(x)  # [T,3,H,W]
        masks.append(target)
        texts.append(text)
        has_mask.append(m is not None)
        flipped.append(aug["flip"])
    orig = [tuple(int(v) for v in s["orig_size"]) for s in samples]
    return {
        "clip": _stack_uint8(clips)
        if uint8
        else torch.stack([c.permute(1, 0, 2, 3) for c in clips]).clamp_(0.0, 1.0),
        "mask": torch.stack(masks),
        "has_mask": torch.tensor(has_mask),
        "text": texts,
        "orig_size": torch.tensor(orig, dtype=torch.long),
        "gt_mask_orig": [
            None
            if s.get("mask") is None or np.asarray(s["mask"]).size == 0
            else np.asarray(s["mask"])
            for s in samples
        ],
        "key": [sample_key(s) for s in samples],
        "meta": [s.get("meta", "") or "" for s in samples],
        "clip_id": [str(s["clip_id"]) for s in samples],
        "video_id": [str(s.get("video_id", "")) for s in samples],
        "object_id": [str(s["object_id"]) for s in samples],
        "expression_id": [str(s["expression_id"]) for s in samples],
        "flipped": flipped,
    }


def _stack_uint8(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[T,3,H,W]`` uint8 clips -> ``[B,3,T,H,W]`` with channels-last-3d strides (one copy
    each, straight from the decoded ``[T,H,W,3]`` layout)."""
    import torch

    t, _, h, w = clips[0].shape
    out = torch.empty((len(clips), t, h, w, 3), dtype=torch.uint8)
    for i, x in enumerate(clips):
        out[i].copy_(x.permute(0, 2, 3, 1))
    return out.permute(0, 4, 1, 2, 3)


def collate_kwargs(recipe: Recipe) -> dict[str, Any]:
    """``collate`` keyword arguments fixed by a recipe (size, frames, augmentation)."""
    return {
        "size": tuple(recipe.model.input_size),
        "augment": recipe.data.augment,
        "num_frames": recipe.num_frames,
        "target_index": recipe.model.target_index,
    }


def eval_batches(
    samples: Iterable[Mapping[str, Any]], recipe: Recipe, *, batch_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Evaluation batches (no augmentation) of decoded samples, in order."""
    kw = collate_kwargs(recipe)
    for chunk in batched(samples, batch_size or recipe.data.eval_batch_size):
        yield collate(chunk, train=False, **kw)


__all__ = [
    "batched",
    "build_train_dataset",
    "build_val_clips",
    "collate",
    "collate_kwargs",
    "count_samples",
    "draw_augmentation",
    "epoch_seed",
    "eval_batches",
    "decode_val_rows",
    "select_val_rows",
    "rows_from_batch",
    "sample_key",
    "select_frames",
    "swap_left_right",
]
