"""Reruns of a training run name: the stored recipe, what may change on resume, fresh starts.

``lstc train`` with the ``train.run_name`` / ``train.storage_path`` of an existing run resumes
it (Ray Train restores its latest checkpoint, the driver re-attaches the MLflow run). That is
only right when the recipe is the one the run was started with, so the driver stores the
resolved recipe as ``<run_dir>/recipe.yaml`` before anything else and, on a rerun, compares
``Recipe.flatten()`` of the stored and the new recipe (:func:`check_rerun`). A change outside
:data:`RESUMABLE_KEYS` raises :class:`RecipeChangedError` before any training or MLflow logging;
it lists the changed keys (old -> new) and the ways on: the old values, ``--new-run`` (the old
run directory is moved aside to ``<name>.prev-<UTC time>`` by :func:`move_aside` and a fresh
run with a new MLflow run starts under the same name) or another ``--name``.

Run directories written before ``recipe.yaml`` existed are compared against the recipe of
their newest checkpoint.

The run directory may be local or on an object store (``train.storage_path=s3://bucket/runs``):
:func:`run_location` gives a ``Path`` for local folders (plain paths, ``file:`` URIs) and the
URI string otherwise, :func:`child` joins names onto either, and every read and write here goes
through :mod:`data_prep.storage` on the filesystem resolved from it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

from data_prep.storage import is_local, join, read_bytes, resolve

if TYPE_CHECKING:  # pragma: no cover
    from pipelines.config import Recipe

RECIPE_FILE = "recipe.yaml"
PREV_MARK = ".prev-"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's checkpoint manager state
_CKPT_DIR = re.compile(r"checkpoint_epoch_(\d+)$")

#: Recipe keys a resumed run may change, and why that is safe: none of them changes what the
#: run computes, only where and how it runs (``train.epochs`` under conditions, see
#: :func:`refused_changes`). Everything else (model, loss, data, optimiser, schedule, seed,
#: workers, resources per worker - Ray sizes each worker's thread pools from it -, tracking
#: experiment, registry) would silently mix two recipes in one run.
RESUMABLE_KEYS: dict[str, str] = {
    "description": "free text",
    "train.ray_address": "which cluster runs it, not what is computed",
    "train.log_level": "console verbosity of Ray Train",
    "train.max_failures": "how many worker failures are retried",
    "train.placement_strategy": "which nodes the workers run on, not what they compute",
    "tracking.uri": "the address of the MLflow store (it must hold the run's MLflow run id)",
    "train.compile": "how the same network is executed (fused kernels), not what it computes; "
    "float rounding may differ in the last bits",
    "train.compile_backend": "which torch.compile backend executes the same network",
    "train.channels_last": "the memory layout of the same tensors, not what is computed",
    "train.epochs": "extend or shorten the run when the LR schedule does not depend on the "
    "number of epochs (schedule.kind step or constant; not cosine) and not below the "
    "checkpoint's epoch",
}


class RecipeChangedError(RuntimeError):
    """A rerun of a run name with a recipe that differs in keys a resume may not change."""

    def __init__(self, run_name: str, run_dir: Location, refused: dict[str, tuple[str, str, str]]):
        self.run_name = run_name
        self.run_dir = run_dir
        self.refused = refused  # key -> (old, new, why refused)
        lines = [
            f"run {run_name!r} ({run_dir}) was started with another recipe; changed keys "
            "(old -> new):"
        ]
        for key, (old, new, why) in sorted(refused.items()):
            lines.append(f"  {key}: {old} -> {new}" + (f"  ({why})" if why else ""))
        lines += [
            "Resuming would continue the old checkpoint and MLflow run with the old values, so "
            "nothing was started. To go on, either:",
            "  * rerun with the old values to resume the run,",
            f"  * add --new-run (train(recipe, new_run=True)) to start afresh as {run_name!r}: "
            f"the old run directory is kept as {run_name}{PREV_MARK}<time> and a new MLflow run "
            "is created,",
            "  * or give the new recipe another run name (--name NAME).",
            "Keys a resume may change: " + ", ".join(sorted(RESUMABLE_KEYS)) + ".",
        ]
        super().__init__("\n".join(lines))


#: a run folder or a file in it: a local ``Path`` or a URI string (see :func:`run_location`)
Location = Path | str


def run_location(path_or_uri: str | os.PathLike) -> Location:
    """``Path`` (absolute, resolved) for a plain path or a ``file:`` URI; the URI as given
    (query included) for an object store."""
    fs, path = resolve(path_or_uri)
    return Path(path).resolve() if is_local(fs) else os.fspath(path_or_uri)


def child(loc: Location, *parts: str) -> Location:
    """``loc`` with the relative ``parts`` appended (a URI keeps its query)."""
    return loc.joinpath(*parts) if isinstance(loc, Path) else join(loc, *parts)


def read_text(loc: Location) -> str | None:
    """The text of the file ``loc``; None when there is none."""
    try:
        return read_bytes(loc).decode("utf-8")
    except FileNotFoundError:
        return None


def _exists(loc: Location) -> bool:
    """A file or a folder (a non-empty prefix on an object store) is at ``loc``."""
    fs, path = resolve(loc)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return True
    if is_local(fs):
        return False
    sel = pafs.FileSelector(path.rstrip("/"), recursive=False, allow_not_found=True)
    return bool(fs.get_file_info(sel))


@dataclass(frozen=True)
class ResumePoint:
    """What a rerun of an existing run directory resumes from."""

    run_dir: Location
    stored: Recipe | None  # the recipe the run was started (or last resumed) with
    epoch: int  # epoch of the checkpoint Ray Train restores (0: none yet, starts at epoch 1)
    checkpoint: Location | None
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # allowed changes


def recipe_changes(old: Recipe, new: Recipe) -> dict[str, tuple[str, str]]:
    """``{key: (old, new)}`` for every flattened recipe key whose value differs."""
    a, b = old.flatten(), new.flatten()
    return {
        k: (a.get(k, "<absent>"), b.get(k, "<absent>"))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    }


def refused_changes(
    old: Recipe, new: Recipe, changes: dict[str, tuple[str, str]], checkpoint_epoch: int
) -> dict[str, tuple[str, str, str]]:
    """The changes a resume may not make, each with the reason (empty reason: not resumable)."""
    refused: dict[str, tuple[str, str, str]] = {}
    for key, (a, b) in changes.items():
        if key not in RESUMABLE_KEYS:
            refused[key] = (a, b, "")
        elif key == "train.epochs":
            if "cosine" in (old.schedule.kind, new.schedule.kind):
                refused[key] = (
                    a,
                    b,
                    "the cosine schedule spans train.epochs: the epochs already trained "
                    "followed another curve",
                )
            elif new.train.epochs < checkpoint_epoch:
                refused[key] = (a, b, f"the checkpoint is already at epoch {checkpoint_epoch}")
    return refused


def stored_recipe(run_dir: Location) -> Recipe | None:
    """The recipe stored in ``run_dir`` (``recipe.yaml``, else the newest checkpoint's)."""
    from pipelines.checkpoint import is_checkpoint, load_recipe_from_checkpoint
    from pipelines.config import Recipe, yaml_load

    path = child(run_dir, RECIPE_FILE)
    text = read_text(path)
    if text is not None:
        return Recipe.from_dict(yaml_load(text), source=str(path))
    ckpts = sorted(_checkpoint_dirs(run_dir), key=lambda ec: ec[0], reverse=True)
    for _, ckpt in ckpts:
        if is_checkpoint(ckpt, need_marker=False):
            return load_recipe_from_checkpoint(ckpt)
    return None


def write_recipe(run_dir: Location, recipe: Recipe) -> Location:
    """Store the resolved recipe as ``<run_dir>/recipe.yaml`` (atomic replace)."""
    from data_prep.storage import write_text

    path = child(run_dir, RECIPE_FILE)
    write_text(path, recipe.to_yaml())
    return path


def _checkpoint_dirs(run_dir: Location) -> list[tuple[int, Location]]:
    """``(epoch, location)`` of the ``checkpoint_epoch_NNNN`` folders in ``run_dir``."""
    fs, path = resolve(run_dir)
    sel = pafs.FileSelector(path.rstrip("/"), recursive=False, allow_not_found=True)
    try:
        infos = fs.get_file_info(sel)
    except NotADirectoryError:
        return []
    out = []
    for info in infos:
        m = _CKPT_DIR.match(info.base_name)
        if m and info.type == pafs.FileType.Directory:
            out.append((int(m.group(1)), child(run_dir, info.base_name)))
    return out


def latest_checkpoint(run_dir: Location) -> tuple[int, Location] | None:
    """``(epoch, location)`` of the checkpoint Ray Train restores on a rerun, from its
    checkpoint manager snapshot (Ray records a checkpoint there only once its upload is
    complete); ``None`` when Ray Train has none (the run starts at epoch 1)."""
    from pipelines.checkpoint import is_checkpoint

    text = read_text(child(run_dir, SNAPSHOT_FILE))
    if text is None:
        return None
    try:
        name = (json.loads(text).get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (ValueError, AttributeError):
        name = None
    candidates = sorted(_checkpoint_dirs(run_dir), key=lambda ec: ec[0], reverse=True)
    for epoch, path in candidates:
        base = _CKPT_DIR.search(str(path).split("?", 1)[0])
        dir_name = base.group(0) if base else ""
        if (dir_name == name if name else dir_name in text) and is_checkpoint(
            path, need_marker=False
        ):
            return epoch, path
    return None


def _has_run(run_dir: Location) -> bool:
    from data_prep.storage import file_size

    return any(
        file_size(child(run_dir, n)) is not None
        for n in (RECIPE_FILE, SNAPSHOT_FILE, "mlflow_run_id")
    )


def check_rerun(recipe: Recipe, run_dir: Location) -> ResumePoint | None:
    """``None`` for a fresh run; else the point a rerun resumes from. Raises
    :class:`RecipeChangedError` when ``recipe`` changes keys a resume may not change. Reads
    only; writes nothing."""
    if not _has_run(run_dir):
        return None
    from pipelines.config import ConfigError

    latest = latest_checkpoint(run_dir)
    epoch, ckpt = latest if latest else (0, None)
    try:
        old = stored_recipe(run_dir)
    except ConfigError as exc:
        refused = {"<recipe>": ("unreadable", "this code", f"stored recipe: {exc}")}
        raise RecipeChangedError(recipe.train.run_name, run_dir, refused) from None
    if old is None:
        return ResumePoint(run_dir, None, epoch, ckpt)
    changes = recipe_changes(old, recipe)
    refused = refused_changes(old, recipe, changes, epoch)
    if refused:
        raise RecipeChangedError(recipe.train.run_name, run_dir, refused)
    return ResumePoint(run_dir, old, epoch, ckpt, changes)


def move_aside(run_dir: Location, *, now: datetime | None = None) -> Location | None:
    """Move an existing ``run_dir`` to ``<name>.prev-<UTC time>`` (``-N`` appended when taken);
    returns the new location, ``None`` when there was nothing to move. Locally a rename; on
    an object store (no rename) a copy of every object, then the old prefix is deleted."""
    if not _exists(run_dir):
        return None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")

    def sibling(suffix: str) -> Location:
        if isinstance(run_dir, Path):
            return run_dir.with_name(f"{run_dir.name}{PREV_MARK}{suffix}")
        head, sep, query = run_dir.partition("?")
        return f"{head.rstrip('/')}{PREV_MARK}{suffix}{sep}{query}"

    target = sibling(stamp)
    n = 1
    while _exists(target):
        target = sibling(f"{stamp}-{n}")
        n += 1
    if isinstance(run_dir, Path):
        os.replace(run_dir, target)
        return target
    fs, src = resolve(run_dir)
    _, dst = resolve(target)
    pafs.copy_files(src.rstrip("/"), dst, source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir(src.rstrip("/"))
    return target


def resume_message(name: str, point: ResumePoint, mlflow_run_id: str | None) -> str:
    """The console line of a resumed run."""
    run = f"MLflow run {mlflow_run_id}" if mlflow_run_id else "no MLflow run: tracking unavailable"
    from pipelines.checkpoint import describe

    if point.checkpoint is None:
        return f"resuming run {name}: no checkpoint yet, starting at epoch 1 ({run})"
    where = describe(point.checkpoint)
    return f"resuming run {name} from epoch {point.epoch} checkpoint {where} ({run})"


def describe_changes(changes: dict[str, tuple[str, str]]) -> str:
    return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(changes.items()))


__all__ = [
    "Location",
    "PREV_MARK",
    "RECIPE_FILE",
    "RESUMABLE_KEYS",
    "RecipeChangedError",
    "ResumePoint",
    "check_rerun",
    "child",
    "describe_changes",
    "latest_checkpoint",
    "move_aside",
    "recipe_changes",
    "refused_changes",
    "read_text",
    "resume_message",
    "run_location",
    "stored_recipe",
    "write_recipe",
]
