"""Writing one shard: decode → resize (OpenCV area) → JPEG → Parquet, inside one Ray task.

A shard plan is a JSON-able dict (see :func:`data_prep.plan.plan_shards`): the clips of the
shard, each with its video reference, target frame and objects (mask reference +
expressions). The writer decodes each video once for all its clips in the shard, encodes
every needed frame once, writes ``<split>/part-NNNNN.parquet`` atomically through
:mod:`data_prep.storage` (locally a temporary file renamed into place; on an object store one
upload to the final key), then, only after the shard is in place, its progress record (sha256,
size, counts, rejects) the same way. The output folder may be a local path or a URI
(``s3://``, ``gs://``, ``file://``). Bad input becomes rejects; the task itself only fails on
bugs or system errors (an unreachable output store among them).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from itertools import groupby
from typing import Any

import numpy as np

from data_prep.clipspec import ClipSpec, resize_frame
from data_prep.decode import DecodeError, open_video
from data_prep.masks import MaskError, MaskLoader, mask_png
from data_prep.samples import MaskRef, Reject, VideoRef
from data_prep.schema import CLIP_SCHEMA, SCHEMA_VERSION, clip_frame_indices
from data_prep.storage import atomic_path, join, write_json


def encode_jpeg(frame: np.ndarray, spec: ClipSpec) -> bytes:
    """Resize (:func:`resize_frame`) and JPEG-encode (4:2:0) one RGB frame, deterministically.

    libjpeg-turbo through simplejpeg (about 2x faster than PIL's encoder); PIL if absent.
    """
    frame = np.ascontiguousarray(resize_frame(frame, spec))
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - simplejpeg is a pinned dependency
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=spec.jpeg_quality)
        return buf.getvalue()
    return simplejpeg.encode_jpeg(
        frame, quality=spec.jpeg_quality, colorspace="RGB", colorsubsampling="420"
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def progress_path(out: str | os.PathLike[str], rel: str) -> str:
    """Where a finished shard's record lives (path or URI, like ``out``); its presence, with a
    matching checksum of the shard, marks the shard as done."""
    return join(out, "_progress", rel.replace("/", "-") + ".json")


def _clip_rows(
    clips: list[dict[str, Any]],
    spec: ClipSpec,
    rejects: list[Reject],
    stats: dict[str, int],
    masks: MaskLoader,
) -> Iterator[dict[str, Any]]:
    """Rows of the clips of one video (all share ``clips[0]['video']``)."""
    ref = VideoRef.from_dict(clips[0]["video"])
    source = "prep"
    try:
        src = open_video(ref)
        n = src.num_frames
    except DecodeError as exc:
        for c in clips:
            rejects.append(
                Reject(source, f"{ref.path}#{c['target_frame']}", f"{exc}; re-encode or replace it")
            )
        return
    ok: list[tuple[dict[str, Any], list[int], int]] = []
    for c in clips:
        t = int(c["target_frame"])
        if n < spec.min_video_frames:
            why = f"video {ref.path} has {n} frames, fewer than the {spec.min_video_frames} required; use a longer video or lower --min-video-frames"
        elif t >= n:
            why = (
                f"video {ref.path} decodes to {n} frames but frame {t + 1} (1-based) is annotated; "
                "the video is truncated or its annotation is wrong: re-download the video"
            )
        else:
            idx, t_idx = clip_frame_indices(t, n, spec.num_frames, spec.stride)
            ok.append((c, idx, t_idx))
            continue
        rejects.append(Reject(source, f"{ref.path}#{t}", why))
    if not ok:
        return
    union = sorted({i for _, idx, _ in ok for i in idx})
    try:
        decoded = src.get(union)
    except DecodeError as exc:
        for c, _, _ in ok:
            rejects.append(
                Reject(source, f"{ref.path}#{c['target_frame']}", f"{exc}; re-encode or replace it")
            )
        return
    stats["frames_decoded"] += len(union)
    h0, w0 = int(decoded.shape[1]), int(decoded.shape[2])
    jpeg = {f: encode_jpeg(decoded[k], spec) for k, f in enumerate(union)}
    del decoded
    for c, idx, t_idx in ok:
        objects = []
        for obj in c["objects"]:
            mref = MaskRef.from_dict(obj["mask"])
            mask = b""
            if mref is not None:
                try:
                    mask, (mh, mw) = mask_png(masks, mref)
                    if (mh, mw) != (h0, w0):
                        raise MaskError(
                            f"mask {mref.path} is {mw}x{mh} but the frames of {ref.path} are {w0}x{h0}"
                        )
                except MaskError as exc:
                    rejects.append(
                        Reject(
                            source,
                            f"{mref.path}#{obj['object_id']}",
                            f"{exc}; restore or fix the mask file ({len(obj['expressions'])} expression(s) of "
                            f"object {obj['object_id']} in {c['clip_id']} skipped)",
                        )
                    )
                    continue
            objects.append(
                {"object_id": obj["object_id"], "mask": mask, "expressions": obj["expressions"]}
            )
        if not objects:
            continue
        stats["clips"] += 1
        stats["objects"] += len(objects)
        stats["samples"] += sum(len(o["expressions"]) for o in objects)
        stats["frames_stored"] += len(idx)
        yield {
            "schema_version": SCHEMA_VERSION,
            "dataset": c["dataset"],
            "split": c["split"],
            "video_id": c["video_id"],
            "clip_id": c["clip_id"],
            "target_frame": int(c["target_frame"]),
            "target_index": t_idx,
            "frame_indices": idx,
            "orig_height": h0,
            "orig_width": w0,
            "frames": [jpeg[i] for i in idx],
            "objects": objects,
        }


def _plan_clips(plan: dict[str, Any], reader: Any) -> tuple[list[dict[str, Any]], list[Reject]]:
    """The clips of a plan: given, or built here from the plan's index units."""
    if "units" not in plan:
        return plan["clips"], []
    from data_prep.clips import build_clips
    from data_prep.readers.base import IndexUnit, split_records

    if reader is None:
        raise ValueError(f"plan {plan['path']} lists index units but no reader was given")
    samples, rejects = split_records(
        r for u in plan["units"] for r in reader.unit_records(IndexUnit(**u))
    )
    by_split = build_clips(samples)
    return [c for split in sorted(by_split) for c in by_split[split]], rejects


def _source_digest(clips: list[dict[str, Any]], root: str) -> str:
    """What this shard was made from: clip specs (paths relative to the root) and video sizes."""
    sizes = {}
    for c in clips:
        v = c["video"]
        if v["kind"] == "mp4" and v["path"] not in sizes:
            try:
                sizes[v["path"]] = os.stat(v["path"]).st_size
            except OSError:
                sizes[v["path"]] = -1
    payload = json.dumps([clips, sorted(sizes.items())], sort_keys=True, ensure_ascii=False)
    if root:
        payload = payload.replace(root, "<root>")
    return hashlib.sha256(payload.encode()).hexdigest()


def write_shard(
    plan: dict[str, Any], spec: ClipSpec, out: str, reader: Any = None
) -> dict[str, Any]:
    """Write one shard and its progress record; returns the record (counts, sha256, rejects).

    ``out`` is a local folder or a URI. ``reader`` is needed for plans made of index units
    (:meth:`Reader.unit_records` runs here).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips, rejects = _plan_clips(plan, reader)
    stats = dict.fromkeys(("clips", "objects", "samples", "frames_stored", "frames_decoded"), 0)
    rows: list[dict[str, Any]] = []
    masks = MaskLoader()
    for _, group in groupby(clips, key=lambda c: c["video_id"]):
        rows.extend(_clip_rows(list(group), spec, rejects, stats, masks))
    table = pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)
    with atomic_path(join(out, plan["path"])) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="snappy",
            use_dictionary=["dataset", "split", "video_id"],
            write_statistics=["schema_version", "target_frame", "video_id"],
            row_group_size=max(len(rows), 1),
        )
        digest = sha256_file(tmp)
        size = os.path.getsize(tmp)
    # the shard is in place (renamed, or uploaded in one piece): only now is it recorded
    record = {
        "path": plan["path"],
        "split": plan["split"],
        "plan_hash": plan["plan_hash"],
        "config_hash": plan.get("config_hash", ""),
        "sha256": digest,
        "bytes": size,
        **stats,
        "rejects": [r.to_dict() for r in rejects],
        "source_digest": _source_digest(clips, plan.get("root", "")),
    }
    write_json(progress_path(out, plan["path"]), record)
    return record
