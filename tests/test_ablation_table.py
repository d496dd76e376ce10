"""benchmarks/ablation.py: the table's statistics (hand-computed) and its resume lookup on a
real MLflow SQLite store."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import ablation  # noqa: E402


def test_mean_and_sample_std_in_percent():
    assert ablation.mean_std([1.0]) == (1.0, 0.0)
    m, s = ablation.mean_std([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and s == pytest.approx(0.1)  # sqrt((0.01+0+0.01)/2)
    runs = [
        {"val/overall_iou": 0.5, "val/mean_iou": 0.4, "val/motion/mean_iou": 0.2},
        {"val/overall_iou": 0.7, "val/mean_iou": 0.6, "val/motion/mean_iou": 0.4},
    ]
    lines = ablation.table({"lstc": runs}).splitlines()
    assert lines[0].startswith("| variant | seeds | overall IoU | mean IoU | mAP | motion mIoU")
    # 50/70 -> 60 ± 14.1 (sqrt(200)); no mAP logged -> a dash; 20/40 -> 30 ± 14.1
    assert lines[2] == "| lstc | 2 | 60.0 ± 14.1 | 50.0 ± 14.1 | – | 30.0 ± 14.1 | – | – |"


def test_a_finished_run_is_found_by_variant_seed_and_settings(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment(ablation.EXPERIMENT)
    key = ablation._key(["train.epochs=2"], "/shards")

    def run(seed: int, status: str, k: str = key) -> None:
        r = client.create_run(
            exp, tags={"ablation_variant": "lstc", "ablation_seed": str(seed), "ablation_key": k}
        )
        client.log_metric(r.info.run_id, "val/mean_iou", 0.1 * (seed + 1))
        client.set_terminated(r.info.run_id, status)

    run(0, "FINISHED")
    run(1, "KILLED")  # interrupted: run again
    run(2, "FINISHED", k=ablation._key([], "/shards"))  # other settings: run again
    assert ablation._finished(client, exp, "lstc", 0, key) == {"val/mean_iou": 0.1}
    assert ablation._finished(client, exp, "lstc", 1, key) is None
    assert ablation._finished(client, exp, "lstc", 2, key) is None
    assert ablation._finished(client, exp, "cmam", 0, key) is None
    assert key == ablation._key(["train.epochs=2"], "/shards")  # stable across calls


def test_motion_study_logs_the_metric_names_mlflow_rejects(tmp_path):
    """motion_study's runs carry the training metrics, "J&F" and "mAP@0.5" included (MLflow
    rejects '&' and '@': the run used to end FAILED with nothing logged)."""
    import motion_study
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_id = motion_study._mlflow(
        uri,
        "t",
        {"only_label": "motion"},
        {"J&F": 0.5, "mAP@0.5": 0.25, "motion/mean_iou": 0.4},
        {},
    )
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"J_and_F": 0.5, "mAP_at_0.5": 0.25, "motion/mean_iou": 0.4}
    assert run.data.params == {"only_label": "motion"}
