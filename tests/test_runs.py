"""`lstc runs list|compare` against a real SQLite MLflow store and a real `mlflow server`.

The runs are written directly through MLflow with known params, per-epoch ``val/*`` metrics,
start/end times and a re-logged epoch (what a resumed training run does), so every cell of the
table, the sort order and every point of the curves is known by hand. No MLflow object is
mocked; the plots are checked through the data the figure draws (its Line2D data), not pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.mlops import runs as R

T0 = 1_780_000_000_000  # ms, start of the parent run


@dataclass(frozen=True)
class Trial:
    name: str
    params: dict[str, str]
    curves: dict[str, list[tuple[int, float, int]]]  # key -> [(step, value, ts offset ms)]
    start: int  # ms after T0
    end: int  # ms after T0
    status: str


COMMON = {"data.root": "/shards/refer_shapes", "train.epochs": "3"}
TRIALS = (
    Trial(
        "trial-0",
        {**COMMON, "optim.lr": "0.001", "model.cmam": "cmam"},
        {
            "val/mean_iou": [(1, 0.30, 10), (2, 0.45, 20), (3, 0.50, 30)],
            "val/overall_iou": [(1, 0.35, 10), (2, 0.50, 20), (3, 0.55, 30)],
            "train/epoch/loss": [(1, 0.9, 10), (2, 0.7, 20), (3, 0.6, 30)],
        },
        start=1_000,
        end=61_000,
        status="FINISHED",
    ),
    Trial(
        "trial-1",
        {**COMMON, "optim.lr": "0.0005", "model.cmam": "cmam_plus"},
        {
            # epoch 3 logged, then logged again after a resume from the epoch-2 checkpoint
            "val/mean_iou": [(1, 0.40, 10), (2, 0.60, 20), (3, 0.55, 30), (3, 0.62, 90)],
            "val/overall_iou": [(1, 0.45, 10), (2, 0.62, 20), (3, 0.66, 30)],
            "train/epoch/loss": [(1, 0.8, 10), (2, 0.5, 20), (3, 0.4, 30)],
        },
        start=2_000,
        end=92_000,
        status="FINISHED",
    ),
    Trial(
        "trial-2",  # stopped after 2 epochs, never logged val/overall_iou
        {**COMMON, "optim.lr": "0.0002", "model.cmam": "cmam"},
        {"val/mean_iou": [(1, 0.20, 10), (2, 0.35, 20)]},
        start=3_000,
        end=33_000,
        status="FAILED",
    ),
)
# hand-computed: final (last-step, last-logged) values and curves after de-duplication
FINAL_MEAN_IOU = {"trial-0": 0.50, "trial-1": 0.62, "trial-2": 0.35}
CURVE_MEAN_IOU = {
    "trial-0": ([1, 2, 3], [0.30, 0.45, 0.50]),
    "trial-1": ([1, 2, 3], [0.40, 0.60, 0.62]),
    "trial-2": ([1, 2], [0.20, 0.35]),
}


@dataclass(frozen=True)
class Store:
    uri: str
    experiment: str
    parent: str
    ids: dict[str, str]  # run name -> run id (trials and "baseline")


def populate(client, experiment: str, artifact_location: str | None) -> Store:
    """A sweep parent with 3 children, and one standalone run, in a new experiment."""
    from mlflow.entities import Metric, Param

    exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    parent = client.create_run(exp_id, start_time=T0, run_name="sweep").info.run_id
    client.log_batch(parent, params=[Param("sweep.n_trials", "3")])
    ids: dict[str, str] = {}
    for t in TRIALS:
        rid = client.create_run(
            exp_id, start_time=T0 + t.start, run_name=t.name, tags={R.PARENT_TAG: parent}
        ).info.run_id
        metrics = [
            Metric(key, value, T0 + t.start + ts, step)
            for key, points in t.curves.items()
            for step, value, ts in points
        ]
        client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in t.params.items()])
        client.set_terminated(rid, status=t.status, end_time=T0 + t.end)
        ids[t.name] = rid
    client.set_terminated(parent, end_time=T0 + 100_000)
    base = client.create_run(exp_id, start_time=T0 + 200_000, run_name="baseline").info.run_id
    client.log_batch(
        base,
        metrics=[Metric("val/mean_iou", 0.1, T0 + 200_010, 1)],
        params=[Param("optim.lr", "0.001"), Param("model.cmam", "none"), Param("note", "x")],
    )
    client.set_terminated(base, end_time=T0 + 201_000)
    ids["baseline"] = base
    return Store(client.tracking_uri, experiment, parent, ids)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout


@pytest.fixture(scope="module", autouse=True)
def _boot_server_early(request) -> None:
    """Start the session's mlflow server (when a selected test here needs it) before the SQLite
    tests, so that its ~30 s boot overlaps them instead of following them."""
    if any("mlflow_server" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("mlflow_server_process")


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> Store:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("runs-sqlite")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return populate(client, "runs-sweep", (root / "mlartifacts").as_uri())


def _names(table: pd.DataFrame, store: Store) -> list[str]:
    by_id = {v: k for k, v in store.ids.items()}
    return [by_id.get(rid, "sweep") for rid in table["run_id"]]


# ------------------------------------------------------------------------------- table


def test_list_children_of_a_sweep_sorted_with_final_values(sqlite_store, tmp_path):
    s = sqlite_store
    client = R.make_client(s.uri)
    report = R.build_report(client, parent=s.parent)
    t = report.table
    # default columns: the params that differ (not data.root / train.epochs), every val/* metric
    assert report.params == ["model.cmam", "optim.lr"]
    assert report.metrics == ["val/mean_iou", "val/overall_iou"]
    assert list(t.columns) == [
        *R.FIXED_COLUMNS,
        "params.model.cmam",
        "params.optim.lr",
        "metrics.val/mean_iou",
        "metrics.val/overall_iou",
    ]
    # default sort: first metric, largest first; final value = the last-logged value of the last step
    assert _names(t, s) == ["trial-1", "trial-0", "trial-2"]
    assert t["metrics.val/mean_iou"].tolist() == pytest.approx([0.62, 0.50, 0.35])
    assert t["metrics.val/overall_iou"].iloc[:2].tolist() == pytest.approx([0.66, 0.55])
    assert math.isnan(t["metrics.val/overall_iou"].iloc[2])
    assert t["params.optim.lr"].tolist() == pytest.approx([0.0005, 0.001, 0.0002])  # numeric
    assert t["params.model.cmam"].tolist() == ["cmam_plus", "cmam", "cmam"]
    assert t["status"].tolist() == ["FINISHED", "FINISHED", "FAILED"]
    assert t["duration_s"].tolist() == pytest.approx([90.0, 60.0, 30.0])
    assert t["start"].tolist() == [
        pd.Timestamp(T0 + ms, unit="ms", tz="UTC") for ms in (2_000, 1_000, 3_000)
    ]
    assert t["run_name"].tolist() == ["trial-1", "trial-0", "trial-2"]

    def order(**kw) -> list[str]:
        return _names(R.build_report(client, parent=s.parent, **kw).table, s)

    assert order(ascending=True) == ["trial-2", "trial-0", "trial-1"]
    # a run without the metric sorts last both ways
    assert order(sort="val/overall_iou") == ["trial-1", "trial-0", "trial-2"]
    assert order(sort="val/overall_iou", ascending=True) == ["trial-0", "trial-1", "trial-2"]
    assert order(sort="optim.lr", ascending=True) == ["trial-2", "trial-1", "trial-0"]
    assert order(sort="duration_s") == ["trial-1", "trial-0", "trial-2"]

    # CSV round trip
    files = R.write_report(report, tmp_path / "out")
    assert files == [tmp_path / "out" / "runs.csv"]
    back = pd.read_csv(files[0])
    assert back["run_id"].tolist() == t["run_id"].tolist()
    assert back["metrics.val/mean_iou"].tolist() == pytest.approx([0.62, 0.50, 0.35])
    assert back["params.optim.lr"].tolist() == pytest.approx([0.0005, 0.001, 0.0002])
    assert back["duration_s"].tolist() == pytest.approx([90.0, 60.0, 30.0])
    assert pd.to_datetime(back["start"]).tolist() == t["start"].tolist()


def test_select_by_experiment_and_by_ids(sqlite_store):
    s = sqlite_store
    client = R.make_client(s.uri)
    report = R.build_report(client, experiment=s.experiment, metrics=["val/mean_iou"])
    assert set(report.table["run_id"]) == {s.parent, *s.ids.values()}  # parent + 3 + baseline
    # default params: more than one value among the runs that log them (sweep.n_trials, note and
    # data.root are logged by some runs only, with one value each)
    assert report.params == ["model.cmam", "optim.lr"]
    cmam = report.table["params.model.cmam"].tolist()
    assert cmam[:4] == ["cmam_plus", "cmam", "cmam", "none"] and pd.isna(cmam[4])  # parent: none
    assert _names(report.table, s) == ["trial-1", "trial-0", "trial-2", "baseline", "sweep"]

    chosen = [s.ids["trial-2"], s.ids["trial-0"], s.ids["trial-2"]]  # duplicates once
    report = R.build_report(
        client, run_ids=chosen, params=["optim.lr"], metrics=["val/overall_iou"], sort="start"
    )
    assert _names(report.table, s) == ["trial-2", "trial-0"]  # latest start first
    assert report.params == ["optim.lr"] and report.metrics == ["val/overall_iou"]
    assert report.table["metrics.val/overall_iou"].iloc[1] == pytest.approx(0.55)


# ------------------------------------------------------------------------------- curves


def _check_curves(report: R.RunsReport, s: Store) -> None:
    curves = report.curves["val/mean_iou"]
    assert set(curves) == {s.ids[n] for n in CURVE_MEAN_IOU}  # one curve per run
    for name, (steps, values) in CURVE_MEAN_IOU.items():
        got_steps, got_values = curves[s.ids[name]]
        assert got_steps == steps
        assert got_values == pytest.approx(values)
    assert report.axes["val/mean_iou"] == "epoch"


def test_compare_curves_figure_files_and_logging_back(sqlite_store, tmp_path):
    s = sqlite_store
    client = R.make_client(s.uri)
    report = R.build_report(
        client, parent=s.parent, metrics=["val/mean_iou", "train/epoch/loss"], curves=True
    )
    _check_curves(report, s)
    loss = report.curves["train/epoch/loss"]
    assert set(loss) == {s.ids["trial-0"], s.ids["trial-1"]}  # trial-2 never logged it
    assert loss[s.ids["trial-1"]] == ([1, 2, 3], pytest.approx([0.8, 0.5, 0.4]))

    # the figure draws exactly that data, one line per run, on the labelled epoch axis
    fig = R.curve_figure(report, "val/mean_iou")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val/mean_iou"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(lines) == 3
    for name, (steps, values) in CURVE_MEAN_IOU.items():
        line = lines[f"{name} ({s.ids[name][:8]})"]
        assert list(line.get_xdata()) == steps
        assert list(line.get_ydata()) == pytest.approx(values)

    out = tmp_path / "cmp"
    files = R.write_report(report, out)
    rel = sorted(f.relative_to(out).as_posix() for f in files)
    assert rel == [
        "curves.json",
        "curves/train_epoch_loss.png",
        "curves/val_mean_iou.png",
        "runs.csv",
    ]
    for f in files:
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000
    data = json.loads((out / "curves.json").read_text())
    assert data["val/mean_iou"]["axis"] == "epoch"
    assert data["val/mean_iou"]["runs"][s.ids["trial-2"]] == {
        "name": "trial-2",
        "steps": [1, 2],
        "values": [0.20, 0.35],
    }

    where = R.log_report(client, s.parent, files, out)
    assert where == f"runs:/{s.parent}/runs_compare"
    top = {f.path for f in client.list_artifacts(s.parent, "runs_compare")}
    assert top == {"runs_compare/runs.csv", "runs_compare/curves.json", "runs_compare/curves"}
    pngs = {f.path for f in client.list_artifacts(s.parent, "runs_compare/curves")}
    assert pngs == {
        "runs_compare/curves/val_mean_iou.png",
        "runs_compare/curves/train_epoch_loss.png",
    }
    got = client.download_artifacts(s.parent, "runs_compare/runs.csv", str(tmp_path / "dl"))
    assert Path(got).read_bytes() == (out / "runs.csv").read_bytes()


# ------------------------------------------------------------------------------- errors


def test_clear_errors(sqlite_store, tmp_path):
    s = sqlite_store
    client = R.make_client(s.uri)
    with pytest.raises(R.RunsError, match=r"unknown experiment 'nope'.*runs-sweep"):
        R.build_report(client, experiment="nope")
    with pytest.raises(R.RunsError, match="run id '0123abcd' not found"):
        R.build_report(client, run_ids=[s.ids["trial-0"], "0123abcd"])
    with pytest.raises(
        R.RunsError,
        match=r"\['val/J_and_F'\] not logged by any of the 3 chosen runs; metrics they have: "
        r"\['train/epoch/loss', 'val/mean_iou', 'val/overall_iou'\]",
    ):
        R.build_report(client, parent=s.parent, metrics=["val/mean_iou", "val/J&F"])
    with pytest.raises(R.RunsError, match=r"param\(s\) \['optim.wd'\].*'optim.lr'"):
        R.build_report(client, parent=s.parent, params=["optim.wd"])
    with pytest.raises(R.RunsError, match="cannot sort by 'val/J_and_F'.*--metrics"):
        R.build_report(client, parent=s.parent, sort="val/J_and_F")
    with pytest.raises(R.RunsError, match="has no child runs"):
        R.build_report(client, parent=s.ids["baseline"])
    with pytest.raises(R.RunsError, match="exactly one of --experiment, --parent, --runs"):
        R.build_report(client, experiment=s.experiment, parent=s.parent)
    with pytest.raises(R.RunsError, match="no MLflow database at .*missing.db"):
        R.make_client(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()


# ------------------------------------------------------------------------------- CLI


def test_cli_list_and_compare(sqlite_store, tmp_path, capsys):
    s = sqlite_store
    base = ["--tracking-uri", s.uri, "--parent", s.parent]
    rc = main(["runs", "list", *base, "--sort", "optim.lr", "--ascending", "--out", "lst"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3 runs; table:" in out and "trial-1" in out and "cmam_plus" in out
    table = pd.read_csv(tmp_path / "lst" / "runs.csv")
    assert table["run_name"].tolist() == ["trial-2", "trial-1", "trial-0"]
    assert not (tmp_path / "lst" / "curves").exists()

    log_run = s.ids["baseline"]
    rc = main(["runs", "compare", *base, "--metrics", "val/mean_iou", "--log-to", log_run])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "val/mean_iou (epoch, 3 curves)" in out and f"runs:/{log_run}/runs_compare" in out
    cmp_dir = tmp_path / "outputs" / "runs"  # the default --out, under the cwd
    table = pd.read_csv(cmp_dir / "runs.csv")
    assert table["run_name"].tolist() == ["trial-1", "trial-0", "trial-2"]
    assert table.columns.tolist()[-1] == "metrics.val/mean_iou"
    data = json.loads((cmp_dir / "curves.json").read_text())["val/mean_iou"]["runs"]
    assert {v["name"]: (v["steps"], v["values"]) for v in data.values()} == CURVE_MEAN_IOU
    client = R.make_client(s.uri)
    logged = {f.path for f in client.list_artifacts(log_run, "runs_compare/curves")}
    assert logged == {"runs_compare/curves/val_mean_iou.png"}

    assert main(["runs", "compare", "--runs", s.ids["trial-0"], "--log", "--out", "x"]) == 2
    assert "--log logs to the --parent run" in capsys.readouterr().err
    assert main(["runs", "list", *base, "--metrics", "val/nope", "--out", "x"]) == 2
    assert "metrics they have: ['train/epoch/loss'" in capsys.readouterr().err
    assert main(["runs", "list", "--tracking-uri", s.uri, "--experiment", "nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------- server


def test_compare_against_a_tracking_server(mlflow_server, tmp_path, capsys):
    from mlflow import MlflowClient

    s = populate(MlflowClient(tracking_uri=mlflow_server), "runs-server", None)
    report = R.build_report(R.make_client(mlflow_server), parent=s.parent, curves=True)
    _check_curves(report, s)
    assert _names(report.table, s) == ["trial-1", "trial-0", "trial-2"]
    assert report.table["metrics.val/mean_iou"].tolist() == pytest.approx(
        [FINAL_MEAN_IOU[n] for n in ("trial-1", "trial-0", "trial-2")]
    )

    argv = ["runs", "compare", "--tracking-uri", mlflow_server, "--parent", s.parent]
    assert main([*argv, "--out", "srv", "--log"]) == 0
    assert "val/overall_iou (epoch, 2 curves)" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=mlflow_server)
    got = client.download_artifacts(s.parent, "runs_compare", str(tmp_path / "dl"))
    for rel in ("runs.csv", "curves.json", "curves/val_mean_iou.png", "curves/val_overall_iou.png"):
        assert (Path(got) / rel).read_bytes() == (tmp_path / "srv" / rel).read_bytes(), rel
