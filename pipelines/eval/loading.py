"""Load the model to evaluate: a registered ``models:/`` URI or a checkpoint directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EvalError(ValueError):
    """The evaluation cannot start (bad model spec, missing split, ...); the message says why."""


def load_model(spec: str, tracking_uri: str | None) -> tuple[Any, Any, dict[str, str]]:
    """``(model, recipe, tags)`` of a ``models:/`` URI or a checkpoint directory."""
    from pipelines.checkpoint import is_checkpoint, load_model_from_checkpoint

    if spec.startswith("models:/"):
        from pipelines.mlops.registry import get_version, load_registered, parse_model_uri

        name, alias, _ = parse_model_uri(spec)
        mv = get_version(spec, tracking_uri=tracking_uri)
        model, recipe = load_registered(f"models:/{name}/{mv.version}", tracking_uri=tracking_uri)
        tags = {
            "model_uri": spec,
            "model_name": name,
            "model_version": str(mv.version),
            "model_alias": alias or "",
            "model_source_run_id": str(mv.run_id or ""),
        }
        return model, recipe, tags
    path = Path(spec)
    if not is_checkpoint(path):
        raise EvalError(
            f"--model {spec!r} is neither a models:/<name>@<alias> URI nor a "
            "checkpoint directory (model.pt + recipe.yaml)"
        )
    model, recipe = load_model_from_checkpoint(path)
    return model, recipe, {"model_uri": str(path.resolve()), "checkpoint": str(path.resolve())}
