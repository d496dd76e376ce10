"""`lstc eval` and `pipelines.inference` on the tiny refer-shapes shards.

The checkpoint is a randomly initialised tiny preset evaluated at a threshold that makes its
masks non-trivial (see the fixture), and every metric `lstc eval` reports is checked against numbers computed
by hand from `predict_masks` on batches built independently from the shard rows.
"""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest

from pipelines.cli import main as lstc_main
from pipelines.mlops.tracking import metric_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_shards, tmp_path_factory):
    """(checkpoint dir, recipe, model, root, threshold) of a randomly initialised tiny model.

    Training it to useful masks takes minutes on 2 shared cores, so instead the evaluation
    threshold is set at the 80th percentile of its test probabilities: the masks then cover
    part of every frame and the IoUs are non-trivial, which is what the checks need.
    """
    import torch

    from data_prep.shards import iter_clip_rows, iter_samples
    from lstc.model import build_model
    from pipelines.checkpoint import save_checkpoint
    from pipelines.config import load_recipe
    from pipelines.data import eval_batches
    from pipelines.inference import forward_logits

    root = tmp_path_factory.mktemp("eval")
    recipe = load_recipe(
        "configs/refer_shapes_tiny.yaml",
        [
            f"data.root={tiny_shards}",
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            "registry.model_name=lstc-eval-test",
        ],
    )
    torch.manual_seed(0)
    model = build_model(recipe.model.without_pretrained()).eval()
    samples = [s for row in iter_clip_rows(tiny_shards, "test") for s in iter_samples(row)]
    probs = torch.cat(
        [torch.sigmoid(forward_logits(model, b)).flatten() for b in eval_batches(samples, recipe)]
    )
    threshold = float(torch.quantile(probs, 0.8))
    ckpt = save_checkpoint(root / "ckpt", model=model, recipe=recipe, epoch=1, global_step=1)
    return ckpt, recipe, model, root, threshold


def _hand_metrics(model, recipe, shards, threshold, split="test"):
    """Per-sample IoU from predict_masks on batches collated straight from the shard rows."""
    from data_prep.shards import iter_clip_rows, iter_samples
    from pipelines.data import collate, collate_kwargs
    from pipelines.inference import predict_masks

    kw = collate_kwargs(recipe)
    kw.pop("augment")
    inter, union, keys, tracks = [], [], [], []
    for row in iter_clip_rows(shards, split):
        samples = list(iter_samples(row))
        batch = collate(samples, train=False, **kw)
        for s, pred in zip(samples, predict_masks(model, batch, threshold=threshold)):
            gt = s["mask"] > 0
            assert pred.shape == gt.shape == tuple(s["orig_size"])
            inter.append(int((pred & gt).sum()))
            union.append(int((pred | gt).sum()))
            keys.append(f"{s['clip_id']}/{s['object_id']}/{s['expression_id']}")
            tracks.append(f"{s['video_id']}/{s['object_id']}/{s['expression_id']}")
    inter, union = np.array(inter), np.array(union)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    hand = {
        "overall_iou": inter.sum() / union.sum(),
        "mean_iou": iou.mean(),
        "num_samples": len(keys),
    }
    for k in (0.5, 0.6, 0.7, 0.8, 0.9):
        hand[f"P@{k}"] = float(np.mean(100 * inter >= round(100 * k) * union))
    hand["mAP@0.5:0.95"] = float(
        np.mean([np.mean(100 * inter >= t * union) for t in range(50, 100, 5)])
    )
    # DAVIS J: mean over object tracks (video/object/expression) of the mean IoU of their frames
    per_track: dict[str, list[float]] = {}
    for t, v in zip(tracks, iou):
        per_track.setdefault(t, []).append(float(v))
    hand["J"] = float(np.mean([np.mean(v) for v in per_track.values()]))
    assert len(per_track) < len(keys)  # several annotated frames per track
    return hand, iou


def test_eval_checkpoint_matches_hand_computed_metrics(trained_checkpoint, tiny_shards, tmp_path):
    from mlflow import MlflowClient

    ckpt, recipe, model, root, th = trained_checkpoint
    uri = f"sqlite:///{root}/mlflow.db"
    out = tmp_path / "metrics.json"
    rc = lstc_main(
        ["eval", "--model", str(ckpt), "--data", str(tiny_shards), "--split", "test"]
        + ["--tracking-uri", uri, "--experiment", "eval-test", "--output", str(out)]
        + ["--threshold", repr(th)]
    )
    assert rc == 0
    got = json.loads(out.read_text())
    hand, iou = _hand_metrics(model, recipe, tiny_shards, th)
    assert 0 < hand["mean_iou"] < 1 and len(set(np.round(iou, 6))) > 3  # non-trivial predictions
    assert got["num_samples"] == hand["num_samples"] > 6
    for k, v in hand.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    for k in ("F", "J&F", "coco_mAP@0.5:0.95", "coco_AP@0.5"):
        assert 0.0 <= got[k] <= 1.0, k

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("eval-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["lstc.kind"] == "eval"
    assert run.data.tags["checkpoint"] == str(ckpt.resolve())
    assert run.data.tags["eval.split"] == "test"
    assert run.data.metrics[metric_key("eval/mean_iou")] == pytest.approx(hand["mean_iou"])
    assert run.data.metrics[metric_key("eval/P@0.5")] == pytest.approx(hand["P@0.5"])


def test_eval_registered_model_tags_version_and_writes_submission(
    trained_checkpoint, tiny_shards, tmp_path
):
    from mlflow import MlflowClient

    from pipelines.mlops.registry import register_checkpoint

    ckpt, recipe, model, root, th = trained_checkpoint
    uri = f"sqlite:///{root}/mlflow.db"
    version, alias = register_checkpoint(
        ckpt, recipe=recipe, run_id=None, metrics={"mean_iou": 0.2}
    )
    assert alias == "champion"
    sub = tmp_path / "out" / "submission.zip"
    out = tmp_path / "metrics.json"
    rc = lstc_main(
        ["eval", "--model", "models:/lstc-eval-test@champion", "--data", str(tiny_shards)]
        + ["--tracking-uri", uri, "--experiment", "eval-reg", "--output", str(out)]
        + ["--submission", str(sub), "--batch-size", "4", "--threshold", repr(th)]
    )
    assert rc == 0
    hand, _ = _hand_metrics(model, recipe, tiny_shards, th)
    got = json.loads(out.read_text())
    assert got["mean_iou"] == pytest.approx(hand["mean_iou"], abs=1e-12)  # same as the checkpoint

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval-reg").experiment_id])
    assert run.data.tags["model_name"] == "lstc-eval-test"
    assert run.data.tags["model_version"] == version
    assert run.data.tags["model_alias"] == "champion"
    assert run.data.tags["submission"] == str(sub)

    with zipfile.ZipFile(sub) as zf:
        names = zf.namelist()
    assert len(names) == hand["num_samples"]
    assert all(n.startswith("Annotations/") and n.endswith(".png") for n in names)
    assert not list(sub.parent.glob("lstc-submission-*"))  # staging folder removed


def test_groups_are_scored_per_set_and_averaged(trained_checkpoint, tiny_shards):
    """Ref-DAVIS17 protocol: J&F per expression set, then the unweighted mean over sets."""
    from data_prep.shards import iter_clip_rows, iter_samples
    from pipelines.data import eval_batches
    from pipelines.inference import evaluate, summarize

    ckpt, recipe, model, root, th = trained_checkpoint
    samples = [s for row in iter_clip_rows(tiny_shards, "test") for s in iter_samples(row)]
    for i, s in enumerate(samples):  # pretend these are DAVIS samples of two sets
        s["meta"] = json.dumps({"expression_set": "annot1" if i % 3 == 0 else "annot2"})
    acc = evaluate(model, eval_batches(samples, recipe, batch_size=4), device="cpu", threshold=th)
    res = summarize(acc)
    n1, n2 = res["annot1/num_samples"], res["annot2/num_samples"]
    assert (n1, n2) == (len(range(0, len(samples), 3)), len(samples) - n1)
    for k in ("J", "F", "J&F", "mean_iou"):
        assert res[f"groups_avg/{k}"] == pytest.approx(
            (res[f"annot1/{k}"] + res[f"annot2/{k}"]) / 2
        )
    # the set average weighs sets equally, unlike the pooled number
    pooled = (n1 * res["annot1/mean_iou"] + n2 * res["annot2/mean_iou"]) / (n1 + n2)
    assert res["mean_iou"] == pytest.approx(pooled)


def test_evaluate_drops_duplicate_samples_and_restores_train_mode(trained_checkpoint, tiny_shards):
    from data_prep.shards import iter_clip_rows, iter_samples
    from pipelines.data import eval_batches
    from pipelines.inference import evaluate

    ckpt, recipe, model, root, th = trained_checkpoint
    samples = [s for row in iter_clip_rows(tiny_shards, "test") for s in iter_samples(row)]
    model.train()
    acc = evaluate(
        model, eval_batches(samples + samples[:3], recipe, batch_size=4), device="cpu", threshold=th
    )
    assert model.training
    model.eval()
    once = evaluate(model, eval_batches(samples, recipe, batch_size=5), device="cpu", threshold=th)
    assert len(acc) == len(once) == len(samples)
    a, b = acc.compute(), once.compute()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-12), k


def test_parallel_eval_equals_in_process(trained_checkpoint, tiny_shards, ray_local):
    from pipelines.data import eval_batches
    from pipelines.eval.parallel import evaluate_parallel
    from pipelines.eval.runner import iter_eval_samples
    from pipelines.inference import evaluate

    ckpt, recipe, model, root, th = trained_checkpoint
    # one actor (its start-up dominates on 2 cores), 2 clips per task: several states merged
    par = evaluate_parallel(
        str(ckpt),
        str(tiny_shards),
        "test",
        num_workers=1,
        batch_size=4,
        threshold=th,
        clips_per_task=2,
    )
    seq = evaluate(
        model,
        eval_batches(iter_eval_samples(str(tiny_shards), "test"), recipe),
        device="cpu",
        threshold=th,
    )
    a, b = par.compute(), seq.compute()
    assert a["num_samples"] == b["num_samples"] > 6
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9), k


def test_ytvos_valid_submission_layout(trained_checkpoint, ray_local, tmp_path):
    """Ref-YouTube-VOS valid (no ground truth): every listed frame of every expression of the
    valid videos (valid - test) is written at the original size, validated against the
    official meta_expressions.json, and zipped."""
    from data_fakes import H, W, make_ytvos
    from PIL import Image

    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep

    ckpt, recipe, model, root, th = trained_checkpoint
    make_ytvos(tmp_path / "ytvos")
    shards = tmp_path / "shards"
    run_prep(
        PrepConfig(
            dataset="ytvos",
            root=str(tmp_path / "ytvos"),
            out=str(shards),
            clip=ClipSpec(num_frames=4, stride=1, height=64, width=64),
            splits=("valid",),
            progress=False,
        )
    )
    sub = tmp_path / "submission.zip"
    meta = tmp_path / "ytvos" / "meta_expressions" / "valid" / "meta_expressions.json"
    rc = lstc_main(
        ["eval", "--model", str(ckpt), "--data", str(shards), "--split", "valid"]
        + ["--submission", str(sub), "--meta-expressions", str(meta), "--no-tracking"]
    )
    assert rc == 0
    with zipfile.ZipFile(sub) as zf:
        names = sorted(zf.namelist())
        png = zf.read("Annotations/vC/1/00005.png")
    assert names == [
        "Annotations/vC/0/00000.png",
        "Annotations/vC/0/00005.png",
        "Annotations/vC/1/00000.png",
        "Annotations/vC/1/00005.png",
        "Annotations/vD/0/00000.png",
    ]  # vT is a test video: not in valid
    import io

    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "L" and im.size == (W, H)
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
