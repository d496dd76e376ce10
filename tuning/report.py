"""What a sweep's MLflow parent run holds: the trials table, the best trial, Optuna's plots.

Written (again) at the end of every ``lstc sweep`` invocation, so a resumed sweep's parent
run always shows the whole study: ``sweep/trials.csv`` (one row per trial: number, state,
value, params, MLflow run id, epochs run, the trial it retries, error - a trial failed for a
stopped heartbeat says so and names its retry), ``sweep/best.json`` (best trial number,
value, params) and ``sweep/plots/*.png``: optimisation history, parallel coordinates and,
with at least two complete trials, parameter importances (``optuna.visualization.matplotlib``).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

#: user attributes the sweep driver sets on every trial (also the trials table's columns)
ATTR_RUN_ID = "lstc.mlflow_run_id"
ATTR_RUN_NAME = "lstc.run_name"
ATTR_EPOCHS = "lstc.epochs_run"
ATTR_ERROR = "lstc.error"
ATTR_CHECKPOINT = "lstc.best_checkpoint"
ATTR_METRICS = "lstc.best_metrics"
ATTR_RETRY_OF = "lstc.retry_of"
#: the error of a trial failed because its heartbeat stopped (tuning.heartbeat)
HEARTBEAT_STOPPED = "heartbeat stopped (its sweep driver was killed or lost)"


def trials_table(study: Any) -> Any:
    """A pandas DataFrame with one row per trial (see the module docstring)."""
    import pandas as pd

    trials = study.get_trials(deepcopy=False)
    # heartbeat retries (tuning.heartbeat) name their stale trial in Optuna's system attrs
    retried_as = {
        t.system_attrs["retry_history"][-1]: t.number
        for t in trials
        if t.system_attrs.get("retry_history")
    }
    rows = []
    for t in trials:
        error = t.user_attrs.get(ATTR_ERROR)
        if error is None and t.number in retried_as:
            error = f"{HEARTBEAT_STOPPED}; retried as trial {retried_as[t.number]}"
        history = t.system_attrs.get("retry_history") or []
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "mlflow_run_id": t.user_attrs.get(ATTR_RUN_ID),
            "run_name": t.user_attrs.get(ATTR_RUN_NAME),
            "epochs_run": t.user_attrs.get(ATTR_EPOCHS),
            "retry_of": t.user_attrs.get(ATTR_RETRY_OF, history[-1] if history else None),
            "error": error,
        }
        row.update({f"params.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def best_summary(study: Any) -> dict[str, Any] | None:
    """``{"number", "value", "params", "mlflow_run_id"}`` of the best complete trial."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    return {
        "number": best.number,
        "value": best.value,
        "params": dict(best.params),
        "mlflow_run_id": best.user_attrs.get(ATTR_RUN_ID),
    }


def _plots(study: Any, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    makers = [("optimization_history", ovm.plot_optimization_history)]
    if complete >= 1:
        makers.append(("parallel_coordinate", ovm.plot_parallel_coordinate))
    if complete >= 2:
        makers.append(("param_importances", ovm.plot_param_importances))
    out = []
    for name, make in makers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning
                ax = make(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot never fails the sweep
            warnings.warn(f"sweep plot {name} skipped ({type(exc).__name__}: {exc})", stacklevel=2)
    return out


def log_report(study: Any, tracker: Any) -> dict[str, Any] | None:
    """Write the trials table, best trial and plots into the parent run; returns the best."""
    best = best_summary(study)
    with tempfile.TemporaryDirectory(prefix="lstc-sweep-report-") as tmp:
        folder = Path(tmp)
        table = folder / "trials.csv"
        trials_table(study).to_csv(table, index=False)
        tracker.log_artifact(table, "sweep")
        (folder / "best.json").write_text(json.dumps(best, indent=2, default=str))
        tracker.log_artifact(folder / "best.json", "sweep")
        plots = folder / "plots"
        plots.mkdir()
        for path in _plots(study, plots):
            tracker.log_artifact(path, "sweep/plots")
    if best is not None:
        tracker.set_tags(
            {
                "lstc.best_trial": str(best["number"]),
                "lstc.best_value": str(best["value"]),
                **{f"best.{k}": str(v) for k, v in best["params"].items()},
            }
        )
    return best


__all__ = [
    "ATTR_CHECKPOINT",
    "ATTR_EPOCHS",
    "ATTR_ERROR",
    "ATTR_METRICS",
    "ATTR_RETRY_OF",
    "ATTR_RUN_ID",
    "ATTR_RUN_NAME",
    "HEARTBEAT_STOPPED",
    "best_summary",
    "log_report",
    "trials_table",
]
