"""Ground-truth mask loading for every benchmark format.

``load_mask(ref)`` returns ``uint8 [H, W]`` with values {0, 1} at the original frame size.
The format quirks live here and only here:

* A2D ``.h5``: ``reMask`` is stored transposed, ``(W, H)`` for a single instance or
  ``(N, W, H)`` for several; the instance order is that of the ``instance`` dataset.
* J-HMDB ``puppet_mask.mat``: ``part_mask`` is ``(H, W, T)`` (MATLAB v5, read with scipy;
  v7.3 files are HDF5 and come back axis-reversed from h5py).
* Palette PNGs (YTVOS, DAVIS): pixel value = object id.
"""

from __future__ import annotations

import io

import numpy as np

from data_prep.samples import MaskRef


class MaskError(RuntimeError):
    """A mask file is missing, unreadable, or does not hold the requested object."""


def a2d_instances(path: str) -> list[str]:
    """Instance ids (as strings of ints) listed in an A2D per-frame ``.h5`` file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            ids = np.asarray(f["instance"]).reshape(-1)
    except FileNotFoundError as exc:
        raise MaskError(f"mask file {path} does not exist") from exc
    except Exception as exc:
        raise MaskError(f"cannot read mask file {path}: {exc}") from exc
    return [str(int(round(float(v)))) for v in ids]


def _load_a2d(ref: MaskRef) -> np.ndarray:
    import h5py

    ids = a2d_instances(ref.path)
    if ref.object_id not in ids:
        raise MaskError(f"instance {ref.object_id!r} is not listed in {ref.path} (has {ids})")
    k = ids.index(ref.object_id)
    try:
        with h5py.File(ref.path, "r") as f:
            re_mask = np.asarray(f["reMask"])
    except Exception as exc:
        raise MaskError(f"cannot read reMask of {ref.path}: {exc}") from exc
    if re_mask.ndim == 2:
        if len(ids) != 1:
            raise MaskError(f"{ref.path} lists {len(ids)} instances but reMask is 2-D")
        m = re_mask
    elif re_mask.ndim == 3 and re_mask.shape[0] == len(ids):
        m = re_mask[k]
    else:
        raise MaskError(
            f"reMask of {ref.path} has shape {re_mask.shape}, expected (W,H) or (N,W,H)"
        )
    return (m.T > 0).astype(np.uint8)


def load_part_mask(path: str) -> np.ndarray:
    """The ``part_mask`` array of a J-HMDB ``puppet_mask.mat`` as ``(H, W, T)``."""
    try:
        import scipy.io

        return np.asarray(scipy.io.loadmat(path)["part_mask"])
    except FileNotFoundError as exc:
        raise MaskError(f"mask file {path} does not exist") from exc
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return np.asarray(f["part_mask"]).transpose(2, 1, 0)
        except Exception as exc:
            raise MaskError(f"cannot read part_mask from {path}: {exc}") from exc
    except Exception as exc:
        raise MaskError(f"cannot read part_mask from {path}: {exc}") from exc


def _load_png(ref: MaskRef) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(ref.path) as im:
            arr = np.asarray(im)
    except FileNotFoundError as exc:
        raise MaskError(f"mask file {ref.path} does not exist") from exc
    except Exception as exc:
        raise MaskError(f"cannot read mask image {ref.path}: {exc}") from exc
    if ref.kind == "palette_png":
        if arr.ndim != 2:
            raise MaskError(f"{ref.path} is not a palette/greyscale PNG (shape {arr.shape})")
        return (arr == int(ref.object_id)).astype(np.uint8)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return (arr > 0).astype(np.uint8)


def load_mask(ref: MaskRef) -> np.ndarray:
    """The object's mask as ``uint8 [H, W]`` in {0, 1}; raises :class:`MaskError`."""
    if ref.kind == "a2d_h5":
        return _load_a2d(ref)
    if ref.kind == "jhmdb_mat":
        pm = load_part_mask(ref.path)
        if pm.ndim != 3 or not 0 <= ref.frame < pm.shape[2]:
            raise MaskError(f"{ref.path} has no mask for frame {ref.frame} (part_mask {pm.shape})")
        return (pm[:, :, ref.frame] > 0).astype(np.uint8)
    if ref.kind in ("palette_png", "binary_png"):
        return _load_png(ref)
    raise MaskError(f"unknown mask kind {ref.kind!r}")


def encode_png(mask: np.ndarray) -> bytes:
    """Lossless, deterministic PNG of a {0,1} uint8 mask."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im, dtype=np.uint8).copy()
