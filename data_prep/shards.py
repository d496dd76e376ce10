"""Reading prepared shards back (docs/INTERFACES.md, section 2).

* :func:`load_manifest` — the manifest dict of a shard root.
* :func:`read_clips` — Ray Dataset with one row per clip (the stored columns).
* :func:`iter_samples` — expand one clip row into referring samples, decoding frames and mask.
* :func:`read_samples` — Ray Dataset of samples (``flat_map`` of :func:`iter_samples`).
* :func:`iter_clip_rows` — the same clip rows without Ray (pyarrow), for tools and tests.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.schema import SCHEMA_VERSION


class ShardError(RuntimeError):
    """The shard root is missing, incomplete or of another schema version."""


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """``<root>/manifest.json`` (raises :class:`ShardError` if absent or of another schema)."""
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path} does not exist: run `lstc prep` (to the end) first") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(
            f"{path} has schema version {manifest.get('schema_version')}, this code reads "
            f"{SCHEMA_VERSION}: re-run `lstc prep`"
        )
    return manifest


def shard_files(root: str | os.PathLike[str], split: str) -> list[str]:
    """Absolute paths of the shards of ``split``, in manifest order."""
    manifest = load_manifest(root)
    files = [
        str(Path(root).resolve() / s["path"]) for s in manifest["shards"] if s["split"] == split
    ]
    if not files:
        known = sorted(manifest.get("counts", {}))
        raise ShardError(f"no shards for split {split!r} under {root}; splits there: {known}")
    return files


def _read_shard_batch(batch: Any) -> Any:
    """``map_batches`` body: a batch of shard paths -> the clip rows of those shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.schema import CLIP_SCHEMA

    tables = [pq.read_table(p, schema=CLIP_SCHEMA) for p in batch.column("path").to_pylist()]
    return pa.concat_tables(tables) if tables else CLIP_SCHEMA.empty_table()


def read_clips(root: str | os.PathLike[str], split: str) -> Any:
    """``ray.data.Dataset`` with one row per clip, columns of ``CLIP_SCHEMA``.

    Lazy and streaming: one read task per shard file. (Built from the manifest's file list
    rather than ``ray.data.read_parquet``, whose planning pass costs seconds per dataset.)
    """
    import ray.data

    files = shard_files(root, split)
    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(_read_shard_batch, batch_size=1, batch_format="pyarrow")


def iter_clip_rows(root: str | os.PathLike[str], split: str) -> Iterator[dict[str, Any]]:
    """Clip rows as Python dicts, shard by shard, without Ray."""
    import pyarrow.parquet as pq

    for f in shard_files(root, split):
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=16):
            yield from batch.to_pylist()


def decode_jpeg(data: bytes) -> np.ndarray:
    """A stored JPEG frame → ``uint8 [H, W, 3]`` (libjpeg-turbo via simplejpeg; PIL if absent)."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - simplejpeg is a pinned dependency
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def decode_clip(frames: Sequence[bytes]) -> np.ndarray:
    """Stored frames → ``uint8 [T, H, W, 3]``."""
    return np.stack([decode_jpeg(bytes(f)) for f in frames])


def decode_mask(data: bytes | None) -> np.ndarray | None:
    """Stored mask → ``uint8 [H0, W0]`` in {0, 1}, or None when there is no ground truth."""
    if data is None or len(data) == 0:
        return None
    from data_prep.masks import decode_png

    return decode_png(bytes(data))


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v.tolist() if isinstance(v, np.ndarray) and v.dtype != object else v)


def iter_samples(row: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Expand a clip row into referring samples.

    Yields ``{"clip": uint8 [T,H,W,3], "mask": uint8 [H0,W0] or None, "text", "video_id",
    "clip_id", "object_id", "expression_id", "target_index", "orig_size": (H0, W0), "meta"}``.
    The clip is decoded once and shared by the samples of the row.
    """
    clip = decode_clip(_as_list(row["frames"]))
    orig = (int(row["orig_height"]), int(row["orig_width"]))
    for obj in _as_list(row["objects"]):
        mask = decode_mask(obj["mask"])
        for e in _as_list(obj["expressions"]):
            yield {
                "clip": clip,
                "mask": mask,
                "text": e["text"],
                "video_id": row["video_id"],
                "clip_id": row["clip_id"],
                "object_id": obj["object_id"],
                "expression_id": e["expression_id"],
                "target_index": int(row["target_index"]),
                "orig_size": orig,
                "meta": e["meta"],
            }


def read_samples(root: str | os.PathLike[str], split: str) -> Any:
    """``ray.data.Dataset`` of referring samples (see :func:`iter_samples`)."""
    return read_clips(root, split).flat_map(iter_samples)
