"""Reading prepared shards back (docs/INTERFACES.md, section 2).

* :func:`load_manifest` — the manifest dict of a shard root.
* :func:`read_clips` — Ray Dataset with one row per clip (the stored columns).
* :func:`iter_samples` — expand one clip row into referring samples, decoding frames and mask.
* :func:`read_samples` — Ray Dataset of samples (``flat_map`` of :func:`iter_samples`).
* :func:`iter_clip_rows` — the same clip rows without Ray (pyarrow), for tools and tests.
* :func:`shard_files` / :func:`shard_paths` / :func:`read_shard_table` — the shard list of a
  split and one shard as an Arrow table.

Every function takes a local shard root or a URI (``s3://bucket/prefix``, ``gs://...``,
``file://...``, resolved by :func:`data_prep.storage.resolve`; see there for endpoints and
credentials).
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.schema import SCHEMA_VERSION
from data_prep.storage import is_local, is_uri, join, read_bytes, resolve


class ShardError(RuntimeError):
    """The shard root is missing, incomplete or of another schema version."""


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """``<root>/manifest.json`` (raises :class:`ShardError` if absent, unreadable or of another
    schema). ``root`` is a local folder or a URI (``s3://bucket/prefix``, ``gs://``, ...)."""
    path = join(root, "manifest.json")
    try:
        manifest = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise ShardError(f"{path} does not exist: run `lstc prep` (to the end) first") from None
    except ValueError as exc:
        raise ShardError(f"{path} is not a readable manifest ({exc}): re-run `lstc prep`") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ShardError(
            f"{path} has schema version {version}, this code reads "
            f"{SCHEMA_VERSION}: re-run `lstc prep`"
        )
    return manifest


def _split_shards(manifest: Mapping[str, Any], root: Any, split: str) -> list[str]:
    """Relative paths of the shards of ``split`` in manifest order (ShardError when none)."""
    rels = [s["path"] for s in manifest["shards"] if s["split"] == split]
    if not rels:
        known = sorted(manifest.get("counts", {}))
        raise ShardError(f"no shards for split {split!r} under {root}; splits there: {known}")
    return rels


def shard_files(root: str | os.PathLike[str], split: str) -> list[str]:
    """The shards of ``split``, in manifest order: absolute paths for a local root, URIs (with
    the root's query) for a URI root. ``pyarrow.parquet.read_table`` accepts either."""
    rels = _split_shards(load_manifest(root), root, split)
    if is_uri(root):
        return [join(root, r) for r in rels]
    return [str(Path(root).resolve() / r) for r in rels]


def shard_paths(root: str | os.PathLike[str], split: str) -> tuple[Any, list[str]]:
    """``(pyarrow filesystem, [path of each shard of split])`` for readers that take a
    filesystem (``pyarrow.parquet``, Ray Data); the filesystem pickles to Ray workers."""
    fs, base = resolve(root)
    rels = _split_shards(load_manifest(root), root, split)
    return fs, [f"{base.rstrip('/')}/{r}" for r in rels]


def read_shard_table(fs: Any, path: str, columns: Sequence[str] | None = None) -> Any:
    """One shard as a ``pyarrow.Table`` of ``CLIP_SCHEMA`` (or of ``columns``). From an object
    store the object is fetched in one GET, then parsed in memory (a random-access Parquet
    read would cost a request per column chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_prep.schema import CLIP_SCHEMA

    cols = list(columns) if columns is not None else None
    if is_local(fs):
        return pq.read_table(path, schema=CLIP_SCHEMA, columns=cols, filesystem=fs)
    with fs.open_input_stream(path) as f:
        data = f.read()
    return pq.read_table(pa.BufferReader(data), schema=CLIP_SCHEMA, columns=cols)


@functools.lru_cache(maxsize=8)
def _unpickle_fs(blob: bytes) -> Any:
    return pickle.loads(blob)


class _SharedFs:
    """A filesystem that travels to Ray tasks pickled and is rebuilt once per worker process:
    every task of a dataset otherwise unpickles its own copy, and a fresh S3 client costs
    ~40 ms per shard (measured against a loopback S3; a shard read itself ~15 ms)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_shared_fs, (pickle.dumps(self.fs),))


def _shared_fs(blob: bytes) -> _SharedFs:
    return _SharedFs(_unpickle_fs(blob))


def read_clips(root: str | os.PathLike[str], split: str) -> Any:
    """``ray.data.Dataset`` with one row per clip, columns of ``CLIP_SCHEMA``.

    Lazy and streaming: one read task per shard file, in manifest order; ``root`` may be a
    URI, the read tasks then use the filesystem resolved from it. (Built from the manifest's
    file list rather than ``ray.data.read_parquet``, whose planning pass costs seconds per
    dataset and lists or reads every file's metadata from the driver first.)
    """
    import pyarrow as pa
    import ray.data

    from data_prep.schema import CLIP_SCHEMA

    fs, files = shard_paths(root, split)
    shared = _SharedFs(fs)

    def read_batch(batch: Any) -> Any:
        """``map_batches`` body: a batch of shard paths -> the clip rows of those shards."""
        tables = [read_shard_table(shared.fs, p) for p in batch.column("path").to_pylist()]
        return pa.concat_tables(tables) if tables else CLIP_SCHEMA.empty_table()

    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(read_batch, batch_size=1, batch_format="pyarrow")


def iter_clip_rows(root: str | os.PathLike[str], split: str) -> Iterator[dict[str, Any]]:
    """Clip rows as Python dicts, shard by shard, without Ray (``root``: path or URI)."""
    import pyarrow.parquet as pq

    fs, files = shard_paths(root, split)
    for f in files:
        if is_local(fs):
            batches = pq.ParquetFile(f).iter_batches(batch_size=16)
        else:
            batches = read_shard_table(fs, f).to_batches(max_chunksize=16)
        for batch in batches:
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
    """Stored frames → ``uint8 [T, H, W, 3]``, decoded as one batch: the output array is
    allocated once (size from the frames' JPEG headers) and every frame is decoded straight
    into its slice (no per-frame array, no stacking copy). Pixel-identical to decoding the
    frames one by one with :func:`decode_jpeg`; frames of unequal size fall back to that."""
    if len(frames) == 0:
        raise ValueError("a clip needs at least one frame")
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - simplejpeg is a pinned dependency
        return np.stack([decode_jpeg(bytes(f)) for f in frames])
    data = [f if isinstance(f, bytes | bytearray | memoryview) else bytes(f) for f in frames]
    sizes = {simplejpeg.decode_jpeg_header(d)[:2] for d in data}
    if len(sizes) != 1:
        return np.stack([decode_jpeg(bytes(d)) for d in data])
    (h, w) = sizes.pop()
    out = np.empty((len(data), h, w, 3), np.uint8)
    for i, d in enumerate(data):
        simplejpeg.decode_jpeg(d, colorspace="RGB", buffer=out[i])
    return out


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
