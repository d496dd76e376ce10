"""Training checkpoints (docs/INTERFACES.md section 5), on local disk or on object storage.

A checkpoint is a directory::

    model.pt         state dict of the bare LSTC module (no DDP prefix)
    train_state.pt   optimizer, scheduler, epoch (completed), global step,
                     RNG states (python, numpy, torch CPU, torch CUDA when present), extra
    recipe.yaml      the resolved recipe
    metrics.json     metrics of the epoch that produced it
    _COMPLETE        completion marker: JSON ``{"format": 1, "files": {name: size}}``, written
                     last, listing every other file with its size in bytes

:func:`save_checkpoint` writes everything into a sibling temporary directory and renames it
into place (``data_prep.storage.atomic_dir``), so a crash never leaves a half-written
checkpoint under the final name. (Checkpoints written before the grad scaler was dropped hold
a ``scaler`` entry in ``train_state.pt``; it is ignored.)

**Completeness.** An object store has no directory rename: a checkpoint uploaded there (by
Ray Train, or by :func:`copy_checkpoint`) appears file by file, and an upload that failed part
way leaves some files - possibly a truncated one (pyarrow completes a multipart upload on
close even after an error). A checkpoint is therefore *complete* only when its ``_COMPLETE``
marker is there and every file it lists is present with the listed size; the check does not
depend on the order in which an uploader wrote the files. Every ``load_*`` entry point that
takes a location (:func:`load_model_from_checkpoint`, :func:`local_checkpoint`,
:func:`require_checkpoint`) refuses an incomplete checkpoint with
:class:`IncompleteCheckpointError` naming what is missing. Ray Train's own checkpoints
(``checkpoint_epoch_NNNN``) are valid once Ray has recorded them in its checkpoint manager
snapshot (it records a checkpoint only after its upload returned); checkpoints written before
the marker existed are accepted there (``need_marker=False``), never by the loaders.

**Locations.** Functions that take a checkpoint accept a local path, a URI (``s3://``,
``gs://``, ``file://``; :func:`data_prep.storage.resolve`) or a ``(pyarrow filesystem,
path)`` pair (what ``ray.train.Checkpoint.filesystem`` / ``.path`` give). Libraries that need
local files (``torch.load``, MLflow's ``log_model``) get a verified local copy from
:func:`local_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
COMPLETE_FILE = "_COMPLETE"


def unwrap(model: Any) -> Any:
    """The bare ``LSTC`` module under DDP / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    import torch

    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _json_safe(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[str(k)] = v
    return out


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: Any,
    recipe: Any,
    epoch: int,
    global_step: int,
    optimizer: Any = None,
    scheduler: Any = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at the local ``path`` atomically; returns ``path``.

    ``model`` may be DDP-wrapped (the bare module is saved). ``epoch`` = completed epochs.
    An existing directory at ``path`` is replaced. The ``_COMPLETE`` marker is written last.
    """
    import torch

    from data_prep.storage import atomic_dir

    final = Path(path)
    with atomic_dir(final) as tmp:
        torch.save(unwrap(model).state_dict(), tmp / MODEL_FILE)
        torch.save(
            {
                "epoch": int(epoch),
                "global_step": int(global_step),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
                "extra": dict(extra or {}),
            },
            tmp / STATE_FILE,
        )
        (tmp / RECIPE_FILE).write_text(
            recipe.to_yaml() if hasattr(recipe, "to_yaml") else str(recipe), encoding="utf-8"
        )
        (tmp / METRICS_FILE).write_text(
            json.dumps(_json_safe({"epoch": epoch, **(metrics or {})}), indent=2, sort_keys=True),
            encoding="utf-8",
        )
        write_marker((pafs.LocalFileSystem(), str(tmp)))
    return final


# ------------------------------------------------------------------------- locations

#: a checkpoint's place: local path, URI, or ``(pyarrow filesystem, path on it)``
Where = str | os.PathLike | tuple[Any, str]


class IncompleteCheckpointError(FileNotFoundError):
    """A checkpoint location that holds no complete checkpoint (partial upload, no marker)."""


def fs_path(where: Where) -> tuple[Any, str]:
    """``(pyarrow filesystem, path)`` of a local path, a URI or an ``(fs, path)`` pair."""
    from data_prep.storage import resolve

    if isinstance(where, tuple):
        fs, path = where
        return fs, str(path).rstrip("/")
    fs, path = resolve(where)
    return fs, path.rstrip("/")


def describe(where: Where) -> str:
    """A location for messages: the path or URI (credentials in a URI left out)."""
    from data_prep.storage import is_uri

    if isinstance(where, tuple):
        fs, path = where
        return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"
    text = os.fspath(where)
    if not is_uri(text):
        return text
    head, sep, query = text.partition("?")
    if "://" in head and "@" in head.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = head.split("://", 1)
        head = f"{scheme}://{rest.split('@', 1)[1]}"
    secret = ("access_key=", "secret_key=", "session_token=")
    kept = [q for q in query.split("&") if q and not q.startswith(secret)]
    return head + (sep + "&".join(kept) if kept else "")


def _list(fs: Any, path: str) -> dict[str, int]:
    """``{relative name: size}`` of every file below ``path`` (``{}`` when absent)."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = path + "/"
    return {
        i.path[len(prefix) :]: int(i.size)
        for i in infos
        if i.type == pafs.FileType.File and i.path.startswith(prefix)
    }


def _read(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_marker(where: Where, files: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Write the ``_COMPLETE`` marker of the checkpoint at ``where`` listing ``files``
    (``{name: size}``; default: every file there now, the marker excluded); returns it."""
    fs, path = fs_path(where)
    listed = dict(files) if files is not None else _list(fs, path)
    listed.pop(COMPLETE_FILE, None)
    marker = {"format": 1, "files": dict(sorted(listed.items()))}
    data = (json.dumps(marker, indent=1) + "\n").encode("utf-8")
    with fs.open_output_stream(f"{path}/{COMPLETE_FILE}") as out:
        out.write(data)
    return marker


def read_marker(where: Where) -> dict[str, Any] | None:
    """The parsed ``_COMPLETE`` marker, or None when absent or unreadable."""
    fs, path = fs_path(where)
    try:
        marker = json.loads(_read(fs, f"{path}/{COMPLETE_FILE}"))
    except (FileNotFoundError, ValueError):
        return None
    files = marker.get("files") if isinstance(marker, dict) else None
    return marker if isinstance(files, dict) else None


def checkpoint_problem(where: Where, *, need_marker: bool = True) -> str | None:
    """Why ``where`` holds no complete checkpoint, or None when it does.

    Complete: the ``_COMPLETE`` marker is present and every file it lists is there with the
    listed size (``model.pt`` and ``recipe.yaml`` among them). ``need_marker=False`` accepts a
    checkpoint without marker when ``model.pt`` and ``recipe.yaml`` are there (Ray Train's
    recorded checkpoints of older runs); a marker that is present is always checked.
    """
    fs, path = fs_path(where)
    present = _list(fs, path)
    if not present:
        return "nothing there"
    marker = read_marker((fs, path))
    if marker is None:
        if COMPLETE_FILE in present:
            return f"its {COMPLETE_FILE} marker is unreadable"
        if need_marker:
            return (
                f"no {COMPLETE_FILE} marker (an upload or copy that did not finish, or a "
                "checkpoint written before markers existed)"
            )
        missing = [f for f in (MODEL_FILE, RECIPE_FILE) if f not in present]
        return f"missing {', '.join(missing)}" if missing else None
    listed = {str(k): int(v) for k, v in marker["files"].items()}
    for name in (MODEL_FILE, RECIPE_FILE):
        if name not in listed:
            return f"its {COMPLETE_FILE} marker does not list {name}"
    missing = sorted(n for n in listed if n not in present)
    if missing:
        return f"missing {', '.join(missing)} (listed in {COMPLETE_FILE})"
    wrong = sorted(n for n, size in listed.items() if present[n] != size)
    if wrong:
        return "size differs from the marker for " + ", ".join(
            f"{n} ({present[n]} != {listed[n]} bytes)" for n in wrong
        )
    return None


def is_checkpoint(where: Where, *, need_marker: bool = True) -> bool:
    """True when ``where`` holds a complete checkpoint (see :func:`checkpoint_problem`)."""
    return checkpoint_problem(where, need_marker=need_marker) is None


def require_checkpoint(where: Where, *, need_marker: bool = True) -> None:
    """Raise :class:`IncompleteCheckpointError` unless ``where`` holds a complete checkpoint."""
    problem = checkpoint_problem(where, need_marker=need_marker)
    if problem is not None:
        raise IncompleteCheckpointError(
            f"{describe(where)} is not a checkpoint, or not a complete one: {problem}. A "
            f"checkpoint holds {MODEL_FILE}, {STATE_FILE}, {RECIPE_FILE}, {METRICS_FILE} and, "
            f"written last, {COMPLETE_FILE}; use the run's best/ or last/ copy or a "
            "checkpoint Ray Train recorded"
        )


@contextlib.contextmanager
def local_checkpoint(where: Where, *, need_marker: bool = True) -> Iterator[Path]:
    """A verified local directory holding the checkpoint at ``where``: the directory itself
    when it is local, else a temporary download (removed when the block ends). Raises
    :class:`IncompleteCheckpointError` for an incomplete checkpoint - checked on the local
    files, i.e. on exactly what the caller will read."""
    fs, path = fs_path(where)
    if isinstance(fs, pafs.LocalFileSystem):
        require_checkpoint((fs, path), need_marker=need_marker)
        yield Path(path)
        return
    require_checkpoint((fs, path), need_marker=need_marker)  # fail before downloading
    with tempfile.TemporaryDirectory(prefix="lstc-ckpt-dl-") as tmp:
        local = Path(tmp) / "checkpoint"
        local.mkdir()
        pafs.copy_files(
            path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
        try:
            require_checkpoint((pafs.LocalFileSystem(), str(local)), need_marker=need_marker)
        except IncompleteCheckpointError as exc:  # changed while being downloaded
            raise IncompleteCheckpointError(f"{describe(where)}: {exc}") from None
        yield local


def copy_checkpoint(src: Where, dst: str | os.PathLike) -> None:
    """Copy the checkpoint at ``src`` (any location; a Ray Train checkpoint without marker is
    accepted) to ``dst`` (local path or URI), ending with the ``_COMPLETE`` marker.

    Locally the copy is atomic (a sibling folder renamed into place). On an object store the
    old marker at ``dst`` is deleted first, then the old files, then the files are copied one
    by one and the marker written last: a reader sees the old or the new checkpoint complete,
    or an incomplete one that every loader refuses - never a mix taken as valid.
    """
    from data_prep.storage import atomic_dir, resolve

    sfs, spath = fs_path(src)
    require_checkpoint((sfs, spath), need_marker=False)
    marker = read_marker((sfs, spath))
    files = _list(sfs, spath)
    files.pop(COMPLETE_FILE, None)
    listed = {str(k): int(v) for k, v in marker["files"].items()} if marker else files
    dfs, dpath = resolve(dst)
    dpath = dpath.rstrip("/")

    def copy_into(fs: Any, base: str) -> None:
        for name in sorted(listed):
            pafs.copy_files(
                f"{spath}/{name}",
                f"{base}/{name}",
                source_filesystem=sfs,
                destination_filesystem=fs,
            )
        write_marker((fs, base), listed)

    if isinstance(dfs, pafs.LocalFileSystem):
        with atomic_dir(dpath) as tmp:
            copy_into(dfs, str(tmp))
        return
    with contextlib.suppress(FileNotFoundError):
        dfs.delete_file(f"{dpath}/{COMPLETE_FILE}")
    if dfs.get_file_info(dpath).type != pafs.FileType.NotFound:
        dfs.delete_dir_contents(dpath, missing_dir_ok=True)
    copy_into(dfs, dpath)


# --------------------------------------------------------------------------- loading


def load_recipe_from_checkpoint(where: Where) -> Any:
    """The recipe stored in the checkpoint at ``where`` (no completeness check)."""
    from pipelines.config import Recipe, yaml_load

    fs, path = fs_path(where)
    text = _read(fs, f"{path}/{RECIPE_FILE}").decode("utf-8")
    return Recipe.from_dict(yaml_load(text), source=f"{describe(where)}/{RECIPE_FILE}")


def load_metrics(where: Where) -> dict[str, Any]:
    """``metrics.json`` of the checkpoint at ``where``; ``{}`` when absent."""
    fs, path = fs_path(where)
    try:
        return json.loads(_read(fs, f"{path}/{METRICS_FILE}"))
    except FileNotFoundError:
        return {}


def load_train_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``train_state.pt`` of the local checkpoint directory ``path``."""
    import torch

    return torch.load(Path(path) / STATE_FILE, map_location=map_location, weights_only=False)


def load_model_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``model.pt`` of the local checkpoint directory ``path``."""
    import torch

    return torch.load(Path(path) / MODEL_FILE, map_location=map_location, weights_only=True)


def load_model_from_checkpoint(
    where: Where, map_location: Any = "cpu", *, need_marker: bool = True
) -> tuple[Any, Any]:
    """``(LSTC in eval mode, Recipe)`` from a complete checkpoint (local path or URI; an
    incomplete one raises :class:`IncompleteCheckpointError`). ``need_marker=False`` is for
    checkpoints whose completeness another store vouches for (the copy inside a registered
    MLflow model, possibly logged before markers existed: MLflow registers a model only
    after its artifacts were logged).

    The network is built without downloading (pretrained specs are replaced by random init,
    then every weight is loaded from ``model.pt``).
    """
    from lstc.model import build_model

    with local_checkpoint(where, need_marker=need_marker) as p:
        recipe = load_recipe_from_checkpoint(p)
        model = build_model(recipe.model.without_pretrained())
        model.load_state_dict(load_model_state(p, map_location=map_location))
    model.to(map_location if map_location not in (None, "cpu") else "cpu")
    model.eval()
    return model, recipe


__all__ = [
    "COMPLETE_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "RECIPE_FILE",
    "STATE_FILE",
    "IncompleteCheckpointError",
    "Where",
    "checkpoint_problem",
    "copy_checkpoint",
    "describe",
    "fs_path",
    "is_checkpoint",
    "load_metrics",
    "load_model_from_checkpoint",
    "load_model_state",
    "load_recipe_from_checkpoint",
    "load_train_state",
    "local_checkpoint",
    "read_marker",
    "require_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_marker",
]
