"""benchmarks/ablation.py: the table's statistics (hand-computed) and its resume lookup on a
real MLflow SQLite store."""

from __future__ import annotations

import itertools
import json
import re
import shlex
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


def test_the_settings_key_follows_the_recipe_text(tmp_path):
    """A changed recipe file is a new study: its runs are trained afresh, not found."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  lang_dim: 32\n")
    before = ablation._key(["train.epochs=2"], "/shards", recipe)
    assert before == ablation._key(["train.epochs=2"], "/shards", recipe)
    recipe.write_text("model:\n  lang_dim: 128\n")
    assert ablation._key(["train.epochs=2"], "/shards", recipe) != before
    # override order does not matter, their values do
    assert ablation._key(["a=1", "b=2"], "/s", recipe) == ablation._key(
        ["b=2", "a=1"], "/s", recipe
    )
    assert ablation._key(["a=1"], "/s", recipe) != ablation._key(["a=2"], "/s", recipe)


def test_the_settings_key_follows_the_schema_defaults(tmp_path, monkeypatch):
    """The same recipe file trains something else when a default changes or a key is added
    (a model change behind a new key): that is a new study too."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  lang_dim: 32\n")
    before = ablation._key([], "/s", recipe)
    defaults = ablation._schema_defaults()
    assert ("model.update_bound", "'tanh'") in defaults
    changed = [(k, "'none'" if k == "model.update_bound" else v) for k, v in defaults]
    monkeypatch.setattr(ablation, "_schema_defaults", lambda: changed)
    assert ablation._key([], "/s", recipe) != before
    monkeypatch.setattr(ablation, "_schema_defaults", lambda: [*defaults, ("model.new", "1")])
    assert ablation._key([], "/s", recipe) != before


def test_claims_compare_seed_means_against_their_margins():
    def runs(*values: float, key: str) -> list[dict]:
        return [{key: v} for v in values]

    motion, app, overall = "val/motion/mean_iou", "val/appearance/mean_iou", "val/overall_iou"
    results = {
        # motion: lstc mean 0.75, spatial mean 0.65 -> +10.0 points, margin 10 inclusive: holds
        "lstc": [
            {motion: 0.70, app: 0.80, overall: 0.60},
            {motion: 0.80, app: 0.80, overall: 0.60},
        ],
        "spatial_only": runs(0.64, 0.66, key=motion),
        # appearance: equal means -> +0.0, strict claim: does not hold
        "temporal_only": runs(0.79, 0.81, key=app),
    }
    lines = ablation.claims(results).splitlines()
    assert lines[0].endswith("+10.0 points (lstc 2 seeds, spatial_only 2 seeds): holds")
    assert lines[1].endswith("+0.0 points (lstc 2 seeds, temporal_only 2 seeds): does NOT hold")
    assert lines[2].endswith("not measured (lstc: 2 seeds, cstm: 0 seeds)")
    results["cstm"] = runs(0.61, key=overall)  # 60 vs 61: LSTC below the anchor
    assert (
        ablation.claims(results)
        .splitlines()[2]
        .endswith("-1.0 points (lstc 2 seeds, cstm 1 seeds): does NOT hold")
    )


def test_table_only_writes_the_finished_runs_and_names_the_missing(tmp_path):
    """``--table-only`` trains nothing: the document holds the finished (variant, seed) runs of
    these settings, the orderings, and the runs still to train."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(ablation.EXPERIMENT)
    key = ablation._key(["train.num_workers=1"], "/shards")
    for variant, seed, value in (("lstc", 0, 0.8), ("lstc", 1, 0.6), ("spatial_only", 0, 0.5)):
        r = client.create_run(
            exp,
            tags={"ablation_variant": variant, "ablation_seed": str(seed), "ablation_key": key},
        )
        client.log_metric(r.info.run_id, "val/motion/mean_iou", value)
        client.set_terminated(r.info.run_id, "FINISHED")
    out, ledger = tmp_path / "ablation.md", tmp_path / "runs.jsonl"
    argv = ["--table-only", "--shards", "/shards", "--out", str(out), "--ledger", str(ledger)]
    argv += ["--variants", "lstc", "spatial_only", "--seeds", "0", "1", "--", "train.num_workers=1"]
    assert ablation.main(["--tracking-uri", uri, *argv]) == 0
    doc = out.read_text()
    assert "| lstc | 2 | – | – | – | 70.0 ± 14.1 | – | – |" in doc
    assert "| spatial_only | 1 | – | – | – | 50.0 ± 0.0 | – | – |" in doc
    assert "by >= 10 points: +20.0 points (lstc 2 seeds, spatial_only 1 seeds): holds" in doc
    assert "(rerun the command without --table-only to train them): (spatial_only, seed 1)" in doc
    assert "train.num_workers=1" in doc.split("Command:")[1]
    assert f"Settings key: {key} " in doc
    assert f"Runs trained on: {ablation.cpu_model()} (3 runs). Table written on: " in doc

    # the three finished runs went to the ledger (seed-major), with their provenance
    rows = ablation.read_ledger(ledger)
    assert [(r["variant"], r["seed"], r["key"]) for r in rows] == [
        ("lstc", 0, key),
        ("spatial_only", 0, key),
        ("lstc", 1, key),
    ]
    assert rows[0]["metrics"] == {"val/motion/mean_iou": 0.8}
    assert rows[1]["overrides"] == ["model.streams=spatial", "train.num_workers=1"]
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in client.search_runs([exp])}

    # another machine: an empty MLflow store and the committed ledger give the same table,
    # and nothing is recorded twice
    out.unlink()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert ablation.main(["--tracking-uri", other, *argv]) == 0
    assert out.read_text().split("Table written on:")[0] == doc.split("Table written on:")[0]
    assert ablation.read_ledger(ledger) == rows


def test_a_broken_ledger_line_is_named_with_the_fix(tmp_path):
    ledger = tmp_path / "runs.jsonl"
    good = {"variant": "lstc", "seed": 0, "key": "k", "metrics": {"val/mean_iou": 0.5}}
    ledger.write_text(json.dumps(good) + "\n\n" + '{"variant": "lstc", "seed": 1\n')
    with pytest.raises(SystemExit, match=r"runs.jsonl:3 is not JSON .*fix or delete that line"):
        ablation.read_ledger(ledger)
    ledger.write_text(json.dumps(good) + "\n" + json.dumps({"variant": "lstc"}) + "\n")
    with pytest.raises(SystemExit, match=r"runs.jsonl:2 lacks one of the fields variant, seed"):
        ablation.read_ledger(ledger)
    ledger.write_text(json.dumps(good) + "\n")
    assert ablation.ledger_metrics(ablation.read_ledger(ledger), "lstc", 0, "k") == {
        "val/mean_iou": 0.5
    }
    assert ablation.ledger_metrics(ablation.read_ledger(ledger), "lstc", 0, "other") is None
    assert ablation.read_ledger(tmp_path / "absent.jsonl") == []


def test_the_shards_id_follows_their_content_not_their_folder(tmp_path):
    from data_prep.schema import SCHEMA_VERSION

    def shards(folder: str, sha: str) -> str:
        root = tmp_path / folder
        root.mkdir()
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": "c1",
            "shards": [
                {"path": "train/0.parquet", "split": "train", "sha256": sha},
                {"path": "test/0.parquet", "split": "test", "sha256": "t0"},
            ],
        }
        (root / "manifest.json").write_text(json.dumps(manifest))
        return str(root)

    a, b, c = shards("a", "s0"), shards("b", "s0"), shards("c", "s1")
    assert ablation.shards_id(a) == ablation.shards_id(b)  # same bytes, other folder
    assert ablation.shards_id(a).startswith("shards:")
    assert ablation.shards_id(a) != ablation.shards_id(c)  # one shard differs
    assert ablation.shards_id(str(tmp_path / "none")) == str(tmp_path / "none")


def test_the_committed_table_is_what_the_committed_ledger_gives():
    """docs/ablation.md's rows and orderings are recomputed from docs/ablation_runs.jsonl (the
    rows of the settings key the document names, for the seeds of its command)."""
    doc = (ablation.REPO / "docs" / "ablation.md").read_text()
    key = re.search(r"^Settings key: (\w+) ", doc, re.M)
    assert key, "docs/ablation.md names no settings key: rerun benchmarks/ablation.py"
    command = re.search(r"^Command: `python benchmarks/ablation.py (.*)`$", doc, re.M).group(1)
    words = shlex.split(command)
    seeds = [0, 1, 2]
    if "--seeds" in words:
        after = words[words.index("--seeds") + 1 :]
        seeds = [int(w) for w in itertools.takewhile(str.isdigit, after)]
    rows = [
        r
        for r in ablation.read_ledger(ablation.LEDGER)
        if r["key"] == key.group(1) and r["seed"] in seeds
    ]
    variants = re.findall(r"^\| (\w+) \| \d+ \|", doc, re.M)
    assert variants
    results = {}
    for variant in variants:
        got = [
            r["metrics"] for r in sorted(rows, key=lambda r: r["seed"]) if r["variant"] == variant
        ]
        results[variant] = got
    for line in ablation.table(results).splitlines()[2:]:
        assert line in doc
    for line in ablation.claims(results).splitlines():
        assert line in doc
