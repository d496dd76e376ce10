"""Load the model to evaluate: a registered ``models:/`` URI or a checkpoint (folder or URI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EvalError(ValueError):
    """The evaluation cannot start (bad model spec, missing split, ...); the message says why."""


def load_model(spec: str, tracking_uri: str | None) -> tuple[Any, Any, dict[str, str]]:
    """``(model, recipe, tags)`` of a ``models:/`` URI or a checkpoint (a local directory or
    a URI such as ``s3://bucket/runs/<name>/best``, downloaded to a temporary folder)."""
    from pipelines.checkpoint import load_model_from_checkpoint

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
    from data_prep.storage import is_uri
    from pipelines.checkpoint import IncompleteCheckpointError, checkpoint_problem, describe

    remote = is_uri(spec)
    problem = checkpoint_problem(spec)
    if problem is not None:
        raise EvalError(
            f"--model {describe(spec)!r} is neither a models:/<name>@<alias> URI nor a complete "
            f"checkpoint directory or URI (model.pt + recipe.yaml + _COMPLETE): {problem}"
        )
    try:
        model, recipe = load_model_from_checkpoint(spec)
    except IncompleteCheckpointError as exc:  # changed between the check and the download
        raise EvalError(f"--model {describe(spec)!r}: {exc}") from None
    where = describe(spec) if remote else str(Path(spec).resolve())
    return model, recipe, {"model_uri": where, "checkpoint": where}
