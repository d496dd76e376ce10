"""Compare MLflow runs: a table of chosen params and final metrics, and overlaid metric curves.

What ``lstc runs list|compare`` is built on. Runs are chosen by exactly one of

* an experiment name (every active run in it),
* a parent run id (its children: runs tagged ``mlflow.parentRunId = <id>``, e.g. a sweep's
  trials),
* a list of run ids,

against any tracking URI (SQLite store or ``mlflow server``), through public
:class:`mlflow.MlflowClient` calls only (``search_runs``, ``get_run``, ``get_metric_history``,
``log_artifact``).

The table (:func:`runs_table`) has one row per run: ``run_id``, ``run_name``, ``status``,
``start`` (UTC), ``duration_s`` (end - start; empty while a run has not ended), then
``params.<key>`` columns (default: the params with more than one value among the runs that
log them, so a run without params, e.g. an eval run, adds no columns) and ``metrics.<key>`` columns with each run's
final value (MLflow's latest value: the highest step; default: every ``val/*`` metric any run
has). Rows are sorted by one column (default: the first metric, best first = descending).

Curves (:func:`metric_curves`): per metric, ``{run_id: (steps, values)}`` from the full metric
history, sorted by step; a step logged twice (a resumed run logs the epochs after its
checkpoint again) keeps the value logged last. Every key has one step axis
(``pipelines.mlops.tracking.METRIC_FAMILIES``: ``val/*`` and ``train/epoch/*`` are logged per
epoch, ``train/step/*`` per optimizer step), so all runs of one chart share the x axis, and
:func:`axis_label` names it. :func:`curve_figure` draws one matplotlib figure (Agg, no
pyplot) per metric from exactly that data; :func:`write_report` writes ``runs.csv``,
``curves.json`` (the plotted data) and ``curves/<metric>.png``; :func:`log_report` uploads
them to a run as artifacts.

Errors a user can cause (unknown experiment, run id not found, a metric or param none of the
runs has, a sort column not in the table, a missing SQLite file) raise :class:`RunsError`
with what exists and how to fix it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.mlops.tracking import (
    EPOCH_AXIS,
    HTTP_DEFAULTS,
    ONCE_AXIS,
    STEP_AXIS,
    SUMMARY_AXIS,
    SYSTEM_AXIS,
    is_local_uri,
    metric_family,
    metric_key,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

PARENT_TAG = "mlflow.parentRunId"
DEFAULT_METRIC_PREFIX = "val/"
FIXED_COLUMNS = ("run_id", "run_name", "status", "start", "duration_s")
PARAM_PREFIX = "params."
METRIC_PREFIX = "metrics."
CSV_NAME = "runs.csv"
CURVES_JSON = "curves.json"
CURVES_DIR = "curves"
DEFAULT_ARTIFACT_PATH = "runs_compare"
_PAGE = 1000  # search_runs page size

_AXIS_LABELS = {
    EPOCH_AXIS: "epoch",
    STEP_AXIS: "global optimizer step",
    SUMMARY_AXIS: "epoch of the best checkpoint",
    ONCE_AXIS: "step (0: one value per run)",
    SYSTEM_AXIS: "system metrics sample",
}


class RunsError(ValueError):
    """A selection, metric, param or sort column that the tracking store does not have."""


Curve = tuple[list[int], list[float]]


@dataclasses.dataclass
class RunsReport:
    """What ``lstc runs`` shows: the table, the chosen columns and, for ``compare``, the curves.

    ``curves[metric][run_id] = (steps, values)``; ``axes[metric]`` is the x-axis label.
    ``files`` lists what :func:`write_report` wrote.
    """

    table: pd.DataFrame
    params: list[str]
    metrics: list[str]
    curves: dict[str, dict[str, Curve]] = dataclasses.field(default_factory=dict)
    axes: dict[str, str] = dataclasses.field(default_factory=dict)
    run_names: dict[str, str] = dataclasses.field(default_factory=dict)
    files: list[Path] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------- client


def tracking_uri_for(uri: str | None) -> str:
    """The tracking URI to read: ``uri`` when given (a relative SQLite path made absolute),
    else the training resolution (env ``MLFLOW_TRACKING_URI`` > ``sqlite:///<cwd>/mlflow.db``).

    Raises :class:`RunsError` for a SQLite file that does not exist (MLflow would create an
    empty store there and report no runs).
    """
    if uri:
        resolved = uri
        if uri.startswith("sqlite:///"):
            path = uri[len("sqlite:///") :]
            if path and not path.startswith("/") and path != ":memory:":
                resolved = f"sqlite:///{Path(path).resolve()}"
    else:
        resolved = resolve_tracking_uri(None)
    if resolved.startswith("sqlite:///"):
        db = resolved[len("sqlite:///") :]
        if db != ":memory:" and not Path(db).is_file():
            raise RunsError(
                f"no MLflow database at {db}: pass --tracking-uri sqlite:///PATH/mlflow.db (or "
                "http://HOST:PORT for a tracking server), set MLFLOW_TRACKING_URI, or run from "
                "the folder where training wrote mlflow.db"
            )
    return resolved


def make_client(uri: str | None) -> MlflowClient:
    """An ``MlflowClient`` on :func:`tracking_uri_for` ``(uri)`` (short HTTP retries for servers,
    unless the user set MLflow's own variables)."""
    from mlflow import MlflowClient

    resolved = tracking_uri_for(uri)
    if not is_local_uri(resolved):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=resolved)


# --------------------------------------------------------------------------- selection


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def _get_run(client: MlflowClient, run_id: str) -> Run:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if _not_found(exc) or "not found" in str(exc).lower():
            raise RunsError(
                f"run id {run_id!r} not found in {client.tracking_uri}: check the id (the MLflow "
                "UI or `lstc runs list --experiment NAME` shows them) and --tracking-uri"
            ) from None
        raise


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=_PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def select_runs(
    client: MlflowClient,
    *,
    experiment: str | None = None,
    parent: str | None = None,
    run_ids: Sequence[str] | None = None,
) -> list[Run]:
    """The runs of an experiment, the children of a parent run, or the given run ids (exactly
    one of the three), oldest first (given ids: in the given order)."""
    chosen = [x for x in (experiment, parent, run_ids) if x]
    if len(chosen) != 1:
        raise RunsError("choose the runs with exactly one of --experiment, --parent, --runs")
    if run_ids:
        seen: dict[str, Run] = {}
        for rid in run_ids:
            if rid not in seen:
                seen[rid] = _get_run(client, rid)
        return list(seen.values())
    if parent:
        parent_run = _get_run(client, parent)
        children = _search_all(
            client, [parent_run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'"
        )
        if not children:
            raise RunsError(
                f"run {parent} ({parent_run.info.run_name}) has no child runs (no run tagged "
                f"{PARENT_TAG}={parent}): pass a sweep's parent run, or use --runs / --experiment"
            )
        return children
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise RunsError(
            f"unknown experiment {experiment!r} in {client.tracking_uri}; experiments there: "
            f"{names or 'none'}"
        )
    runs = _search_all(client, [exp.experiment_id], "")
    if not runs:
        raise RunsError(f"experiment {experiment!r} has no active runs")
    return runs


# --------------------------------------------------------------------------- table


def _available(runs: Sequence[Run], what: str) -> list[str]:
    keys: set[str] = set()
    for r in runs:
        keys.update(getattr(r.data, what))
    return sorted(keys)


def default_params(runs: Sequence[Run]) -> list[str]:
    """Params with more than one value among the runs that log them."""
    out = []
    for key in _available(runs, "params"):
        values = {r.data.params[key] for r in runs if key in r.data.params}
        if len(values) > 1:
            out.append(key)
    return out


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """Every ``val/*`` metric that at least one run has."""
    return [k for k in _available(runs, "metrics") if k.startswith(DEFAULT_METRIC_PREFIX)]


def choose_metrics(runs: Sequence[Run], metrics: Sequence[str] | None) -> list[str]:
    """``metrics`` as MLflow keys (``val/J&F`` -> ``val/J_and_F``), or the default; a metric
    none of the runs has is a :class:`RunsError` naming the metrics that exist."""
    if not metrics:
        return default_metrics(runs)
    have = _available(runs, "metrics")
    keys = list(dict.fromkeys(metric_key(m) for m in metrics))
    missing = [k for k in keys if k not in have]
    if missing:
        raise RunsError(
            f"metric(s) {missing} not logged by any of the {len(runs)} chosen runs; "
            f"metrics they have: {have or 'none'}"
        )
    return keys


def choose_params(runs: Sequence[Run], params: Sequence[str] | None) -> list[str]:
    """``params`` (checked: each must be logged by at least one run), or the default."""
    if not params:
        return default_params(runs)
    have = _available(runs, "params")
    keys = list(dict.fromkeys(params))
    missing = [k for k in keys if k not in have]
    if missing:
        raise RunsError(
            f"param(s) {missing} not logged by any of the {len(runs)} chosen runs; "
            f"params they have: {have or 'none'}"
        )
    return keys


def _numeric(values: list[Any]) -> list[Any]:
    """Param strings as numbers when every present value is one (so they sort as numbers)."""
    out: list[Any] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        try:
            out.append(float(v) if re.search(r"[.eE]|inf|nan", v) else int(v))
        except ValueError:
            return values
    return out


def sort_column(table: pd.DataFrame, sort: str) -> str:
    """The table column ``sort`` names: a column, a metric key or a param key."""
    for cand in (sort, METRIC_PREFIX + metric_key(sort), PARAM_PREFIX + sort):
        if cand in table.columns:
            return cand
    raise RunsError(
        f"cannot sort by {sort!r}: not a column of the table; columns: {list(table.columns)} "
        "(a metric must also be chosen with --metrics)"
    )


def runs_table(
    runs: Sequence[Run],
    *,
    params: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    sort: str | None = None,
    ascending: bool = False,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The runs as a DataFrame (columns in the module docstring) and the chosen param and
    metric keys. Sorted by ``sort`` (default: the first metric; no metric: start time), NaN
    last."""
    import pandas as pd

    metric_keys = choose_metrics(runs, metrics)
    param_keys = choose_params(runs, params)
    rows: dict[str, list[Any]] = {c: [] for c in FIXED_COLUMNS}
    for r in runs:
        info = r.info
        rows["run_id"].append(info.run_id)
        rows["run_name"].append(info.run_name)
        rows["status"].append(info.status)
        rows["start"].append(pd.Timestamp(info.start_time, unit="ms", tz="UTC"))
        ended = info.end_time is not None and info.end_time >= info.start_time
        rows["duration_s"].append((info.end_time - info.start_time) / 1000 if ended else math.nan)
    data: dict[str, Any] = dict(rows)
    for key in param_keys:
        data[PARAM_PREFIX + key] = _numeric([r.data.params.get(key) for r in runs])
    for key in metric_keys:
        data[METRIC_PREFIX + key] = [float(r.data.metrics.get(key, math.nan)) for r in runs]
    table = pd.DataFrame(data)
    if sort:
        column = sort_column(table, sort)
    elif metric_keys:
        column = METRIC_PREFIX + metric_keys[0]
    else:
        column, ascending = "start", True
    table = table.sort_values(column, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True), param_keys, metric_keys


# --------------------------------------------------------------------------- curves


def axis_label(metric: str) -> str:
    """The x-axis of ``metric``'s curves (its family's step axis; plain ``step`` otherwise)."""
    fam = metric_family(metric)
    return _AXIS_LABELS.get(fam.axis, "step") if fam is not None else "step"


def metric_curves(
    client: MlflowClient, run_ids: Sequence[str], metrics: Sequence[str]
) -> dict[str, dict[str, Curve]]:
    """``{metric: {run_id: (steps, values)}}`` from each run's full history, sorted by step; a
    step logged twice keeps the value logged last (by timestamp, then log order). Runs that
    never logged a metric get no curve for it."""
    curves: dict[str, dict[str, Curve]] = {}
    for metric in metrics:
        per_run: dict[str, Curve] = {}
        for rid in run_ids:
            history = client.get_metric_history(rid, metric)
            if not history:
                continue
            last: dict[int, tuple[int, int, float]] = {}
            for order, m in enumerate(history):
                cand = (int(m.timestamp), order, float(m.value))
                if int(m.step) not in last or cand[:2] >= last[int(m.step)][:2]:
                    last[int(m.step)] = cand
            steps = sorted(last)
            per_run[rid] = (steps, [last[s][2] for s in steps])
        curves[metric] = per_run
    return curves


def curve_figure(report: RunsReport, metric: str) -> Figure:
    """One matplotlib figure: every run's curve of ``metric`` on the shared step axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100)
    ax = fig.add_subplot()
    for rid, (steps, values) in report.curves[metric].items():
        name = report.run_names.get(rid) or rid
        ax.plot(steps, values, marker="o", markersize=3, label=f"{name} ({rid[:8]})")
    ax.set_xlabel(report.axes.get(metric, "step"))
    ax.set_ylabel(metric)
    n = len(report.curves[metric])
    ax.set_title(f"{metric} ({n} run{'' if n == 1 else 's'})")
    ax.grid(True, alpha=0.3)
    if axis_label(metric) in (_AXIS_LABELS[EPOCH_AXIS], _AXIS_LABELS[STEP_AXIS]):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if report.curves[metric]:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def png_name(metric: str) -> str:
    """File name of ``metric``'s plot: ``val/mean_iou`` -> ``val_mean_iou.png``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric) + ".png"


# --------------------------------------------------------------------------- report


def build_report(
    client: MlflowClient,
    *,
    experiment: str | None = None,
    parent: str | None = None,
    run_ids: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    sort: str | None = None,
    ascending: bool = False,
    curves: bool = False,
) -> RunsReport:
    """Select runs, build the table and, with ``curves=True``, every chosen metric's curves."""
    runs = select_runs(client, experiment=experiment, parent=parent, run_ids=run_ids)
    table, param_keys, metric_keys = runs_table(
        runs, params=params, metrics=metrics, sort=sort, ascending=ascending
    )
    report = RunsReport(
        table=table,
        params=param_keys,
        metrics=metric_keys,
        run_names={r.info.run_id: r.info.run_name for r in runs},
    )
    if curves:
        if not metric_keys:
            raise RunsError(
                f"no metric to plot: the chosen runs have no {DEFAULT_METRIC_PREFIX}* metric; "
                f"pass --metrics (they have: {_available(runs, 'metrics') or 'none'})"
            )
        ordered = list(table["run_id"])  # legend in table order
        report.curves = metric_curves(client, ordered, metric_keys)
        report.axes = {m: axis_label(m) for m in metric_keys}
    return report


def curves_payload(report: RunsReport) -> dict[str, Any]:
    """The plotted data as JSON: ``{metric: {"axis": label, "runs": {id: {steps, values}}}}``."""
    return {
        metric: {
            "axis": report.axes.get(metric, "step"),
            "png": f"{CURVES_DIR}/{png_name(metric)}",
            "runs": {
                rid: {"name": report.run_names.get(rid), "steps": s, "values": v}
                for rid, (s, v) in per_run.items()
            },
        }
        for metric, per_run in report.curves.items()
    }


def write_report(report: RunsReport, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``runs.csv`` and, when the report has curves, ``curves.json`` and
    ``curves/<metric>.png`` under ``out_dir``; returns (and records) the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = report.table.copy()
    table["start"] = table["start"].map(lambda t: t.isoformat())
    csv = out / CSV_NAME
    table.to_csv(csv, index=False)
    files = [csv]
    if report.curves:
        (out / CURVES_DIR).mkdir(exist_ok=True)
        for metric in report.curves:
            png = out / CURVES_DIR / png_name(metric)
            curve_figure(report, metric).savefig(png)
            files.append(png)
        data = out / CURVES_JSON
        data.write_text(json.dumps(curves_payload(report), indent=1) + "\n")
        files.append(data)
    report.files = files
    return files


def log_report(
    client: MlflowClient,
    run_id: str,
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    artifact_path: str = DEFAULT_ARTIFACT_PATH,
) -> str:
    """Upload ``files`` (paths under ``out_dir``, layout kept) to run ``run_id`` under
    ``artifact_path``; returns that run's artifact URI of the folder."""
    _get_run(client, run_id)  # a clear error for a wrong id, before any upload
    base = Path(out_dir)
    for f in files:
        rel = Path(f).resolve().relative_to(base.resolve()).parent.as_posix()
        dest = artifact_path if rel == "." else f"{artifact_path}/{rel}"
        client.log_artifact(run_id, str(f), dest)
    return f"runs:/{run_id}/{artifact_path}"


def format_table(table: pd.DataFrame, max_colwidth: int = 40) -> str:
    """The table as text for the terminal (start to the second, floats at 4 decimals)."""
    import pandas as pd

    shown = table.copy()
    shown["start"] = shown["start"].map(lambda t: t.strftime("%Y-%m-%d %H:%M:%S"))
    with pd.option_context(
        "display.max_columns", None, "display.width", 250, "display.max_colwidth", max_colwidth
    ):
        return shown.to_string(index=False, float_format=lambda x: f"{x:.4g}")


__all__ = [
    "RunsError",
    "RunsReport",
    "axis_label",
    "build_report",
    "curve_figure",
    "curves_payload",
    "format_table",
    "log_report",
    "make_client",
    "metric_curves",
    "runs_table",
    "select_runs",
    "tracking_uri_for",
    "write_report",
]
