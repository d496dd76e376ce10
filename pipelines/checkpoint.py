"""Training checkpoints (docs/INTERFACES.md section 5).

A checkpoint is a directory::

    model.pt         state dict of the bare LSTC module (no DDP prefix)
    train_state.pt   optimizer, scheduler, epoch (completed), global step,
                     RNG states (python, numpy, torch CPU, torch CUDA when present), extra
    recipe.yaml      the resolved recipe
    metrics.json     metrics of the epoch that produced it

:func:`save_checkpoint` writes everything into a sibling temporary directory and renames it
into place (``data_prep.storage.atomic_dir``), so a crash never leaves a half-written
checkpoint under the final name. (Checkpoints written before the grad scaler was dropped hold
a ``scaler`` entry in ``train_state.pt``; it is ignored.)
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"


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
    """Write a checkpoint directory at ``path`` atomically; returns ``path``.

    ``model`` may be DDP-wrapped (the bare module is saved). ``epoch`` = completed epochs.
    An existing directory at ``path`` is replaced.
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
    return final


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / MODEL_FILE).is_file() and (p / RECIPE_FILE).is_file()


def load_recipe_from_checkpoint(path: str | os.PathLike) -> Any:
    from pipelines.config import Recipe, yaml_load

    p = Path(path)
    return Recipe.from_dict(
        yaml_load((p / RECIPE_FILE).read_text(encoding="utf-8")), source=str(p / RECIPE_FILE)
    )


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / METRICS_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def load_train_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    import torch

    return torch.load(Path(path) / STATE_FILE, map_location=map_location, weights_only=False)


def load_model_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    import torch

    return torch.load(Path(path) / MODEL_FILE, map_location=map_location, weights_only=True)


def load_model_from_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[Any, Any]:
    """``(LSTC in eval mode, Recipe)`` from a checkpoint directory.

    The network is built without downloading (pretrained specs are replaced by random init,
    then every weight is loaded from ``model.pt``).
    """
    from lstc.model import build_model

    p = Path(path)
    if not is_checkpoint(p):
        raise FileNotFoundError(
            f"{p} is not a checkpoint directory (expected {MODEL_FILE} and {RECIPE_FILE} in it)"
        )
    recipe = load_recipe_from_checkpoint(p)
    model = build_model(recipe.model.without_pretrained())
    model.load_state_dict(load_model_state(p, map_location=map_location))
    model.to(map_location if map_location not in (None, "cpu") else "cpu")
    model.eval()
    return model, recipe


__all__ = [
    "METRICS_FILE",
    "MODEL_FILE",
    "RECIPE_FILE",
    "STATE_FILE",
    "is_checkpoint",
    "load_metrics",
    "load_model_from_checkpoint",
    "load_model_state",
    "load_recipe_from_checkpoint",
    "load_train_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
