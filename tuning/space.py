"""The search space: Optuna distributions over recipe keys, sampled per trial.

Parameter names are the recipe keys themselves (``optim.lr``), so a trial's params, its
recipe overrides and the params of its MLflow run all use one vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuning.spec import ParamSpec


def distribution(dim: ParamSpec) -> Any:
    """The Optuna distribution of one dimension."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if dim.type == "categorical":
        return CategoricalDistribution(list(dim.choices or ()))
    if dim.type == "int":
        return IntDistribution(
            int(dim.low or 0), int(dim.high or 0), log=dim.log, step=int(dim.step or 1)
        )
    return FloatDistribution(float(dim.low or 0), float(dim.high or 0), log=dim.log, step=dim.step)


def suggest(trial: Any, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Sample every dimension of ``space`` for ``trial`` (an enqueued trial gets its fixed
    values back), in the spec's order."""
    out: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "categorical":
            out[key] = trial.suggest_categorical(key, list(dim.choices or ()))
        elif dim.type == "int":
            out[key] = trial.suggest_int(
                key, int(dim.low or 0), int(dim.high or 0), step=int(dim.step or 1), log=dim.log
            )
        else:
            out[key] = trial.suggest_float(
                key, float(dim.low or 0), float(dim.high or 0), step=dim.step, log=dim.log
            )
    return out


__all__ = ["distribution", "suggest"]
