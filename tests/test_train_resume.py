"""Reruns of a run name without Ray: which recipe changes a resume accepts, where Ray Train
resumes from, the stored recipe, moving a run aside (``pipelines.train.resume``).

The end-to-end behaviour (the driver stopping before anything starts, ``--new-run``, the
console line of a resumed run) is in tests/test_train_e2e.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.config import load_recipe
from pipelines.train.resume import (
    RECIPE_FILE,
    RecipeChangedError,
    ResumePoint,
    check_rerun,
    latest_checkpoint,
    move_aside,
    recipe_changes,
    refused_changes,
    resume_message,
    stored_recipe,
    write_recipe,
)

TINY = Path(__file__).resolve().parent.parent / "configs" / "refer_shapes_tiny.yaml"


def recipe(*overrides: str):
    return load_recipe(TINY, ["train.epochs=4", *overrides])


def fake_checkpoint(run_dir: Path, epoch: int, rec) -> Path:
    """A folder that passes ``is_checkpoint`` (model file + recipe), as Ray Train names it."""
    d = run_dir / f"checkpoint_epoch_{epoch:04d}"
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(b"")
    (d / "recipe.yaml").write_text(rec.to_yaml())
    return d


def snapshot(run_dir: Path, latest: str | None) -> None:
    state = {"latest_checkpoint_result": {"checkpoint_dir_name": latest} if latest else None}
    (run_dir / "checkpoint_manager_snapshot.json").write_text(json.dumps(state))


# ---------------------------------------------------------------------- what may change


def test_changes_list_old_and_new_values():
    old = recipe()
    new = old.replace(["optim.lr=0.005", "model.lasp=off"])
    assert recipe_changes(old, new) == {
        "model.lasp": ("on", "off"),
        "optim.lr": (str(old.optim.lr), "0.005"),
    }
    assert recipe_changes(old, old.replace([])) == {}


def test_run_settings_may_change_but_not_what_is_computed():
    old = recipe()
    new = old.replace(
        [
            "train.max_failures=7",
            "train.log_level=INFO",
            "train.ray_address=ray://head:10001",
            "tracking.uri=http://mlflow:5000",
            "description=another text",
            "train.compile=default",  # execution, not maths: resuming may switch it
            "train.compile_backend=aot_eager",
            "train.channels_last=true",
            "train.cpus_per_worker=2",  # Ray sizes each worker's thread pools from it
            "train.seed=1",
        ]
    )
    refused = refused_changes(old, new, recipe_changes(old, new), checkpoint_epoch=2)
    assert sorted(refused) == ["train.cpus_per_worker", "train.seed"]


def test_epochs_change_only_with_a_schedule_that_does_not_span_them():
    cosine = recipe("schedule.kind=cosine")
    longer = cosine.replace(["train.epochs=6"])
    refused = refused_changes(cosine, longer, recipe_changes(cosine, longer), 2)
    assert list(refused) == ["train.epochs"] and "cosine" in refused["train.epochs"][2]

    step = recipe("schedule.kind=step")
    for epochs, ckpt_epoch, ok in ((6, 2, True), (3, 2, True), (2, 2, True), (1, 2, False)):
        new = step.replace([f"train.epochs={epochs}"])
        refused = refused_changes(step, new, recipe_changes(step, new), ckpt_epoch)
        assert (refused == {}) is ok, (epochs, refused)
    assert "already at epoch 2" in refused["train.epochs"][2]


# ------------------------------------------------------------------ reading the run folder


def test_fresh_run_and_unchanged_rerun(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    old = recipe()
    assert check_rerun(old, run_dir) is None  # nothing there: a fresh run
    write_recipe(run_dir, old)
    assert stored_recipe(run_dir) == old
    assert check_rerun(old, run_dir) == ResumePoint(run_dir, old, 0, None, {})
    point = check_rerun(old.replace(["train.max_failures=5"]), run_dir)
    assert point.changed == {"train.max_failures": (str(old.train.max_failures), "5")}


def test_changed_rerun_raises_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "r"
    old = recipe()
    write_recipe(run_dir, old)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(RecipeChangedError) as err:
        check_rerun(old.replace(["optim.lr=0.123", "train.max_failures=5"]), run_dir)
    assert err.value.refused == {"optim.lr": (str(old.optim.lr), "0.123", "")}
    text = str(err.value)
    assert f"optim.lr: {old.optim.lr} -> 0.123" in text
    assert "--new-run" in text and "--name" in text and "train.max_failures" in text
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_run_folder_of_older_code_is_compared_with_its_checkpoint_recipe(tmp_path):
    run_dir = tmp_path / "r"
    old = recipe()
    fake_checkpoint(run_dir, 1, old.replace(["optim.lr=0.5"]))  # older checkpoint
    fake_checkpoint(run_dir, 2, old)
    snapshot(run_dir, "checkpoint_epoch_0002")
    assert not (run_dir / RECIPE_FILE).exists()
    assert stored_recipe(run_dir) == old
    point = check_rerun(old, run_dir)
    assert (point.epoch, point.checkpoint) == (2, run_dir / "checkpoint_epoch_0002")


def test_latest_checkpoint_is_the_one_ray_train_restores(tmp_path):
    run_dir = tmp_path / "r"
    old = recipe()
    assert latest_checkpoint(run_dir) is None
    first = fake_checkpoint(run_dir, 1, old)
    partial = run_dir / "checkpoint_epoch_0002"  # killed while being written: not reported
    partial.mkdir()
    assert latest_checkpoint(run_dir) is None  # no snapshot: Ray Train starts from scratch
    snapshot(run_dir, "checkpoint_epoch_0001")
    assert latest_checkpoint(run_dir) == (1, first)
    snapshot(run_dir, None)
    assert latest_checkpoint(run_dir) is None


# ---------------------------------------------------------------------------- new runs


def test_move_aside_keeps_the_old_folder_under_a_new_name(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    run_dir = tmp_path / "r"
    assert move_aside(run_dir, now=now) is None
    run_dir.mkdir()
    (run_dir / "mlflow_run_id").write_text("abc\n")
    first = move_aside(run_dir, now=now)
    assert first == tmp_path / "r.prev-20260102T030405Z" and not run_dir.exists()
    assert (first / "mlflow_run_id").read_text() == "abc\n"
    run_dir.mkdir()
    assert move_aside(run_dir, now=now) == tmp_path / "r.prev-20260102T030405Z-1"


def test_resume_message():
    point = ResumePoint(Path("/runs/r"), None, 3, Path("/runs/r/checkpoint_epoch_0003"))
    assert resume_message("r", point, "abc") == (
        "resuming run r from epoch 3 checkpoint /runs/r/checkpoint_epoch_0003 (MLflow run abc)"
    )
    empty = ResumePoint(Path("/runs/r"), None, 0, None)
    assert resume_message("r", empty, None) == (
        "resuming run r: no checkpoint yet, starting at epoch 1 "
        "(no MLflow run: tracking unavailable)"
    )
