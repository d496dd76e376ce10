"""``lstc demo`` end to end at the smallest scale, run twice as a real command, plus the summary.

The slow test runs ``python -m pipelines.cli demo --scale tiny train.epochs=1 ...`` (the
``lstc`` console script) in a temp folder with its own SQLite MLflow store and Ray Train
storage, joined to the session's Ray instance through ``RAY_ADDRESS``; then runs the same
command again. The first run must write ``demo_summary.json`` / ``.md`` whose metrics are
those of the eval MLflow run; the second must keep every finished stage (no new epoch, no new
model version, the same eval run) and rewrite a summary with the same figures. A third run
with a recipe the finished training run cannot resume under must stop cleanly (exit code 2)
and leave the summary alone.

The fast tests check the markdown and command-line rendering on hand-made values.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL = "lstc-demo-test"
EXPERIMENT = "lstc-demo-test"


# --------------------------------------------------------------------------- fast: rendering


def _summary(**changes):
    """A complete summary as run_demo writes it, with hand-chosen values."""
    s = {
        "date_utc": "2026-01-02T03:04:05+00:00",
        "command": "lstc demo --scale tiny train.epochs=1",
        "recipe": "configs/refer_shapes_tiny.yaml",
        "recipe_overrides": ["train.epochs=1"],
        "tracking_uri": "sqlite:////tmp/x/mlflow.db",
        "eval": {
            "split": "test",
            "num_samples": 18,
            "mlflow_run_id": "e123",
            "metrics": {  # out of order on purpose: the table follows METRIC_NAMES
                "coco_AP@0.5": None,  # NaN in the run: not logged, shown as "-"
                "P@0.5": 0.3889,
                "num_samples": 18,
                "mean_iou": 0.538149,
                "overall_iou": 0.48404,
                "motion/mean_iou": 0.4715,
                "motion/num_samples": 470,
                "appearance/num_samples": 338,
                "appearance/mean_iou": 0.62691,
                "appearance/P@0.5": 0.574,
            },
        },
        "train": {
            "mlflow_run_id": "t456",
            "epochs": 4,
            "best_epoch": 3,
            "best_val": {"mean_iou": 0.5, "overall_iou": 0.25, "J&F": 0.617},
            "num_workers": 2,
            "use_gpu": False,
            "samples_per_s_last_epoch": 12.345,
        },
        "registered_model": {"name": "m", "version": "2", "alias": "champion"},
        "stages": {
            "synth": {"status": "kept", "seconds": 0.01, "seconds_when_run": 16.2},
            "prep": {"status": "ran", "seconds": 14.04},
            "train": {"status": "ran", "seconds": 1230.0},
            "eval": {"status": "ran", "seconds": 40.0},
        },
        "wall_seconds": 1300.0,
        "machine": {
            "cpu": "Some CPU",
            "logical_cores": 2,
            "ram_gib": 7.8,
            "os": "Linux-x",
            "python": "3.11.9",
            "versions": {"torch": "2.14.1", "ray": "2.60.0", "mlflow": "3.17.2"},
            "gpus": [],
        },
        "git": {"commit": "abc123", "dirty": True},
    }
    s.update(changes)
    return s


def test_markdown_shows_every_figure_in_percent():
    from pipelines.demo import format_markdown

    md = format_markdown(_summary())
    assert md.startswith("### `lstc demo --scale tiny train.epochs=1` — 2026-01-02T03:04:05+00:00")
    assert "Registered model `m` version 2 (alias `champion` at registration)" in md
    assert "`test` split, 18 samples" in md
    assert "| overall IoU | 48.40 |" in md
    assert "| mean IoU | 53.81 |" in md
    assert "| P@0.5 | 38.89 |" in md
    assert "| COCO AP@0.5 | - |" in md
    rows = [md.index(f"| {k} |") for k in ("overall IoU", "mean IoU", "P@0.5", "COCO AP@0.5")]
    assert rows == sorted(rows)
    assert "num_samples |" not in md  # a count, not a percentage
    # per label: its own table, samples as a count, labels sorted, only the logged columns
    assert "| label | samples | mean IoU | P@0.5 |" in md
    assert "| appearance | 338 | 62.69 | 57.40 |" in md
    assert "| motion | 470 | 47.15 | - |" in md
    assert md.index("| appearance |") < md.index("| motion |")
    assert "| motion/" not in md and "| appearance/" not in md
    assert "Best validation (epoch 3 of 4): mean IoU 50.00, overall IoU 25.00, J&F 61.70." in md
    assert "12.3 samples/s in the last epoch on 2 Ray Train workers (CPU)" in md
    assert "| synth | kept | 0.0 s (ran earlier in 16.2 s) |" in md
    assert "| prep | ran | 14.0 s |" in md
    assert "| train | ran | 20.5 min |" in md
    assert "| total (wall) | | 21.7 min |" in md
    assert "Some CPU, 2 logical cores, 7.8 GiB RAM, no GPU" in md
    assert "torch 2.14.1, ray 2.60.0, mlflow 3.17.2" in md
    assert "git commit `abc123` (tree dirty)" in md
    assert "with overrides `train.epochs=1`" in md
    assert "train run `t456`, eval run `e123`" in md


def test_markdown_without_registration_names_the_checkpoint():
    from pipelines.demo import format_markdown

    md = format_markdown(_summary(registered_model=None))
    assert "Best checkpoint (not registered) evaluated on the `test` split" in md


def test_command_line_spells_non_default_flags_only():
    from pipelines.demo import DEFAULT_RECIPE, DemoOptions, command_line

    assert command_line(DemoOptions()) == "lstc demo"
    opts = DemoOptions(
        workdir="/tmp/a b",
        scale="tiny",
        seed=3,
        recipe=str(DEFAULT_RECIPE),
        overrides=["train.epochs=1", "model.lasp=off"],
    )
    assert command_line(opts) == (
        "lstc demo --workdir '/tmp/a b' --scale tiny --seed 3 train.epochs=1 model.lasp=off"
    )


# --------------------------------------------------------------------------- slow: the demo


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def demo_runs(ray_local, tmp_path_factory):
    """The demo command run twice in the same folder: ``(env, [(rc, output, summary)] * 2)``."""
    base = tmp_path_factory.mktemp("demo")
    env = {
        "base": base,
        "work": base / "work",
        "uri": f"sqlite:///{base / 'mlflow.db'}",
        "storage": base / "runs",
    }
    overrides = [
        "train.epochs=1",
        "data.val_limit=4",
        f"train.storage_path={env['storage']}",
        f"tracking.uri={env['uri']}",
        f"tracking.experiment={EXPERIMENT}",
        f"registry.model_name={MODEL}",
    ]
    args = ["demo", "--workdir", str(env["work"]), "--scale", "tiny", *overrides]
    env["args"], env["overrides"] = args, overrides
    proc_env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc_env.pop("MLFLOW_TRACKING_URI", None)  # it would win over the recipe's tracking.uri
    runs = []
    for i in range(2):
        env.setdefault("started", []).append(datetime.now(UTC).replace(microsecond=0))
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *args],
            cwd=base,
            env=proc_env,
            capture_output=True,
            text=True,
            timeout=1800,  # a bound: the whole pipeline, any step 10x its idle time under load
        )
        out = proc.stdout + proc.stderr
        (base / f"demo-{i + 1}.log").write_text(out)
        js = env["work"] / "demo_summary.json"
        summary = json.loads(js.read_text()) if js.is_file() else None
        runs.append((proc.returncode, out, summary))
    env["finished"] = datetime.now(UTC)
    return env, runs


def _client(env):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=env["uri"], registry_uri=env["uri"])


@pytest.mark.slow
def test_demo_writes_a_summary_that_matches_mlflow(demo_runs):
    from pipelines.mlops.tracking import metric_key

    env, runs = demo_runs
    rc, out, summary = runs[0]
    assert rc == 0, out[-4000:]
    md = env["work"] / "demo_summary.md"
    assert md.is_file() and summary is not None
    assert f"summary: {md.resolve()}" in out

    # the metrics are those of the eval MLflow run, key by key (NaN metrics are not logged)
    client = _client(env)
    ev = summary["eval"]
    run = client.get_run(ev["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lstc.kind"] == "eval"
    logged = {k: v for k, v in run.data.metrics.items() if k != "eval/seconds"}
    expected = {f"eval/{metric_key(k)}": v for k, v in ev["metrics"].items() if v is not None}
    assert logged == expected
    assert ev["num_samples"] == run.data.metrics["eval/num_samples"] > 0
    assert 0.0 <= ev["metrics"]["mean_iou"] <= 1.0
    assert ev["split"] == run.data.tags["eval.split"] == "test"

    # the registered model: version 1 of MODEL, made by the train run, evaluated above
    reg = summary["registered_model"]
    assert (reg["name"], reg["version"], reg["alias"]) == (MODEL, "1", "champion")
    mv = client.get_model_version(MODEL, "1")
    assert mv.run_id == summary["train"]["mlflow_run_id"]
    assert run.data.tags["model_version"] == "1" and run.data.tags["model_name"] == MODEL
    assert ev["model_uri"] == f"models:/{MODEL}/1"

    # best validation metrics = the train run's validation metrics at the best epoch
    tr = summary["train"]
    assert tr["epochs"] == 1 and tr["best_epoch"] == 1
    hist = client.get_metric_history(tr["mlflow_run_id"], "val/mean_iou")
    assert [(m.step, m.value) for m in hist] == [(1, tr["best_val"]["mean_iou"])]
    assert tr["samples_per_s_last_epoch"] > 0

    # timings: every stage ran, took time, and fits in the wall time
    stages = summary["stages"]
    assert list(stages) == ["synth", "prep", "train", "eval"]
    assert all(s["status"] == "ran" and s["seconds"] > 0 for s in stages.values()), stages
    assert summary["wall_seconds"] >= sum(s["seconds"] for s in stages.values())

    # provenance: date, commit, machine, command line
    date = datetime.fromisoformat(summary["date_utc"])
    assert env["started"][0] <= date <= env["finished"]
    assert summary["git"]["commit"] == _git("rev-parse", "HEAD")
    assert isinstance(summary["git"]["dirty"], bool)
    m = summary["machine"]
    assert m["cpu"] and m["logical_cores"] == os.cpu_count() and m["ram_gib"] > 0
    assert m["python"] == platform.python_version()
    assert m["versions"] == {n: version(n) for n in ("torch", "ray", "mlflow")}
    assert isinstance(m["gpus"], list)
    assert summary["command"] == shlex.join(["lstc", *env["args"]])
    assert summary["recipe_overrides"] == env["overrides"]
    assert summary["argv"][1:] == env["args"]
    assert summary["tracking_uri"] == env["uri"]

    # the markdown quotes the same figures
    text = md.read_text()
    assert f"| mean IoU | {100 * ev['metrics']['mean_iou']:.2f} |" in text
    assert f"| overall IoU | {100 * ev['metrics']['overall_iou']:.2f} |" in text
    assert summary["git"]["commit"] in text and summary["command"] in text


@pytest.mark.slow
def test_second_run_keeps_finished_stages(demo_runs):
    from pipelines.train.loop import read_events

    env, runs = demo_runs
    (rc1, _, first), (rc2, out, second) = runs
    assert rc1 == 0 and rc2 == 0, out[-4000:]
    assert "already generated" in out
    assert "already trained and registered" in out
    assert "already evaluated" in out

    # no new training epoch, no new model version, no new eval run
    run_dir = Path(second["train"]["run_dir"])
    epochs = [e["epoch"] for e in read_events(run_dir) if e["event"] == "epoch_start"]
    assert epochs == [1]
    client = _client(env)
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    kinds = [r.data.tags.get("lstc.kind") for r in client.search_runs([exp.experiment_id])]
    assert kinds.count("eval") == 1

    # the rewritten summary: same figures and runs, stages marked kept with their first times
    for key in ("eval", "train", "registered_model", "git", "command", "recipe_hash"):
        assert second[key] == first[key], key
    for name, st in second["stages"].items():
        assert st["status"] == "kept", (name, st)
        assert st["seconds"] > 0
        assert st["seconds_when_run"] == pytest.approx(first["stages"][name]["seconds"])
    assert first["date_utc"] <= second["date_utc"]
    assert datetime.fromisoformat(second["date_utc"]) >= env["started"][1]
    assert second["wall_seconds"] < first["wall_seconds"]
    text = (env["work"] / "demo_summary.md").read_text()
    assert "| train | kept |" in text and "ran earlier in" in text


@pytest.mark.slow
def test_recorded_training_is_reused_only_when_it_still_holds(demo_runs):
    """The reuse check of the train stage against the real store: a changed recipe, a
    missing checkpoint or a model absent from the registry all mean train again."""
    import shutil

    from pipelines.demo import STATE_FILE, _kept_train

    env, _ = demo_runs
    record = json.loads((env["work"] / STATE_FILE).read_text())["train"]
    key, uri = record["key"], env["uri"]
    assert _kept_train(record, key, uri, True)["mlflow_run_id"] == record["result"]["mlflow_run_id"]
    assert _kept_train(record, key + "x", uri, True) is None
    assert _kept_train({**record, "model_name": "no-such-model"}, key, uri, True) is None
    unregistered = {**record, "result": {**record["result"], "registered": None}}
    assert _kept_train(unregistered, key, uri, True) is None
    assert _kept_train(unregistered, key, uri, False) is not None  # registry off: fine

    moved = env["base"] / "best-moved"
    best = Path(record["result"]["best_checkpoint"])
    shutil.move(best, moved)
    try:
        assert _kept_train(record, key, uri, True) is None
    finally:
        shutil.move(moved, best)
    assert not math.isnan(float(record["result"]["best_metrics"]["val/mean_iou"]))


@pytest.mark.slow
def test_changed_recipe_is_refused_and_keeps_the_summary(demo_runs, ray_local):
    """The same work dir with a recipe the finished run cannot resume under (another lr):
    exit code 2 with the changed key named, nothing trained, the summary left as it was."""
    env, _ = demo_runs
    js = env["work"] / "demo_summary.json"
    before = js.read_bytes()
    proc_env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc_env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *env["args"], "optim.lr=0.5"],
        cwd=env["base"],
        env=proc_env,
        capture_output=True,
        text=True,
        timeout=1200,  # a bound (joins Ray, reads the run; a loaded 2-core box is slow)
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "optim.lr" in proc.stderr and "train.run_name" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert js.read_bytes() == before
