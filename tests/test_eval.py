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
    inter, union, keys, tracks, labels = [], [], [], [], []
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
            labels.append(json.loads(s["meta"])["label"])  # refer-shapes expression kind
    inter, union = np.array(inter), np.array(union)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    hand = {
        "overall_iou": inter.sum() / union.sum(),
        "mean_iou": iou.mean(),
        "num_samples": len(keys),
    }
    for name in set(labels):  # every metric per label: here the IoU family on its samples
        sel = np.array([x == name for x in labels])
        hand[f"{name}/overall_iou"] = inter[sel].sum() / union[sel].sum()
        hand[f"{name}/mean_iou"] = iou[sel].mean()
        hand[f"{name}/P@0.5"] = float(np.mean(100 * inter[sel] >= 50 * union[sel]))
        hand[f"{name}/num_samples"] = int(sel.sum())
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


def test_eval_checkpoint_matches_hand_computed_metrics(
    trained_checkpoint, tiny_shards, tmp_path, capsys
):
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
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    hand, iou = _hand_metrics(model, recipe, tiny_shards, th)
    kinds = sorted(k.split("/")[0] for k in hand if k.endswith("/num_samples"))
    assert len(kinds) >= 2  # the tiny test split has several expression kinds
    assert all(k in printed.splitlines()[1] for k in kinds)  # one printed column per label
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
    for kind in kinds:  # eval/<label>/<metric>
        key = metric_key(f"eval/{kind}/mean_iou")
        assert run.data.metrics[key] == pytest.approx(hand[f"{kind}/mean_iou"], abs=1e-12)
    assert float(run.data.params["eval.threshold"]) == th
    assert run.data.params["eval.threshold_rule"] == "absolute"  # the recipe's default


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


def _davis_by_hand(model, recipe, rows, th):
    """The Ref-DAVIS17 protocol recomputed independently on clip rows whose samples were
    given expression sets: per clip and set, objects merged by pixel-wise loops over the
    probability maps, J by counting, F by boundary_f_measure, the assignment by trying every
    permutation, means by plain Python sums."""
    import itertools

    from data_prep.shards import iter_samples
    from lstc.metrics import boundary_f_measure
    from pipelines.data import collate, collate_kwargs
    from pipelines.inference import predict

    kw = collate_kwargs(recipe)
    kw.pop("augment")
    per_video: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        samples = list(iter_samples(row))
        preds = predict(model, collate(samples, train=False, **kw), threshold=th, keep_prob=True)
        gts = {s["object_id"]: s["mask"] > 0 for s in samples}
        by_set: dict[str, dict[str, object]] = {}
        for s, p in zip(samples, preds):
            by_set.setdefault(json.loads(s["meta"])["expression_set"], {}).setdefault(
                s["object_id"], p
            )
        for name, objs in by_set.items():
            ids = sorted(objs, key=int)
            h, w = next(iter(gts.values())).shape
            merged = {o: np.zeros((h, w), bool) for o in ids}
            for y in range(h):
                for x in range(w):
                    best = None
                    for o in ids:
                        p = objs[o]
                        if p.mask[y, x] and (best is None or p.prob[y, x] > objs[best].prob[y, x]):
                            best = o
                    if best is not None:
                        merged[best][y, x] = True
            merged[None] = np.zeros((h, w), bool)  # an object the set does not predict
            frame = {}
            for o in [*ids, None]:
                for g, gm in gts.items():
                    u = int((merged[o] | gm).sum())
                    j = int((merged[o] & gm).sum()) / u if u else 1.0
                    frame[(o, g)] = (j, boundary_f_measure(merged[o], gm)[0])
            per_video.setdefault((name, row["video_id"]), []).append(frame)
    scores: dict[str, list[tuple[float, float]]] = {}
    for (name, _video), frames in per_video.items():
        gt_ids = sorted({g for f in frames for _, g in f}, key=int)
        pred_ids = sorted({o for f in frames for o, _ in f if o is not None}, key=int)
        pred_ids += [None] * max(0, len(gt_ids) - len(pred_ids))
        mean = {
            k: tuple(sum(f[k][i] for f in frames) / len(frames) for i in (0, 1)) for k in frames[0]
        }
        best = max(
            itertools.permutations(pred_ids, len(gt_ids)),
            key=lambda perm: sum(sum(mean[(o, g)]) / 2 for o, g in zip(perm, gt_ids)),
        )
        scores.setdefault(name, []).extend(mean[(o, g)] for o, g in zip(best, gt_ids))
    out = {}
    for name, vals in scores.items():
        out[f"davis17/{name}/J"] = sum(v[0] for v in vals) / len(vals)
        out[f"davis17/{name}/F"] = sum(v[1] for v in vals) / len(vals)
    for k in ("J", "F"):
        out[f"davis17/{k}"] = sum(out[f"davis17/{n}/{k}"] for n in scores) / len(scores)
    return out


def test_ref_davis_protocol_merges_objects_per_set(trained_checkpoint, tiny_shards):
    """Ref-DAVIS17 as published: per expression set, a frame's objects are merged into one
    label map and scored with the DAVIS procedure (matching, J and F per object, mean over
    objects), then averaged over the sets; the per-set label columns stay per sample."""
    from data_prep.shards import iter_clip_rows, iter_samples
    from pipelines.data import eval_batches
    from pipelines.inference import evaluate, summarize

    ckpt, recipe, model, root, th = trained_checkpoint
    rows = list(iter_clip_rows(tiny_shards, "test"))
    rows = [r for r in rows if r["video_id"] == rows[0]["video_id"]]  # one video, all frames
    sets: dict[tuple[str, str], str] = {}
    for row in rows:  # pretend: DAVIS objects, each video's objects alternating between 2 sets
        for obj in row["objects"]:
            vid_objs = [k for k in sets if k[0] == row["video_id"]]
            name = sets.setdefault(
                (row["video_id"], obj["object_id"]), ("annot1", "annot2")[len(vid_objs) % 2]
            )
            for e in obj["expressions"]:
                e["meta"] = json.dumps({"expression_set": name})
    samples = [s for row in rows for s in iter_samples(row)]
    # batches of 3 split clips across batches: the merge must still see whole clips
    acc = evaluate(model, eval_batches(samples, recipe, batch_size=3), device="cpu", threshold=th)
    res = summarize(acc)
    hand = _davis_by_hand(model, recipe, rows, th)
    assert set(hand) < set(res) and hand
    for k, v in hand.items():
        assert res[k] == pytest.approx(v, abs=1e-12), k
    assert res["davis17/J&F"] == pytest.approx((hand["davis17/J"] + hand["davis17/F"]) / 2)
    assert 0 < res["davis17/J"] < 1
    assert res["annot1/num_samples"] + res["annot2/num_samples"] == res["num_samples"]


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


def test_binarize_rules_hand_computed():
    import torch

    from pipelines.inference import binarize

    p = torch.tensor([0.2, 0.3, 0.35, 0.6])
    assert binarize(p, 0.5, "absolute").tolist() == [False, False, False, True]
    # relative: half of this prediction's maximum, 0.3 (strictly greater, as the CSTM release)
    assert binarize(p, 0.5, "relative").tolist() == [False, False, True, True]
    assert binarize(np.asarray([0.1, 0.04]), 0.5, "relative").tolist() == [True, False]
    with pytest.raises(ValueError, match="not one of"):
        binarize(p, 0.5, "percentile")


def test_validation_uses_the_recipe_threshold_rule_and_reports_per_label(
    trained_checkpoint, tiny_shards
):
    """`validate` (the training loop's, single rank) = evaluate + summarize with the recipe's
    eval.threshold / eval.threshold_rule, every metric also as <label>/<metric>."""
    import torch

    from data_prep.shards import iter_clip_rows, iter_samples
    from pipelines.data import eval_batches
    from pipelines.inference import evaluate, summarize
    from pipelines.train.loop import validate

    ckpt, recipe, model, root, th = trained_checkpoint
    rows = list(iter_clip_rows(tiny_shards, "test"))
    rel = recipe.replace(["eval.threshold=0.9", "eval.threshold_rule=relative"])
    got = validate(model, rel, rows[:3], world=1, rank=0, device=torch.device("cpu"))
    samples = [s for row in rows[:3] for s in iter_samples(row)]
    want = summarize(evaluate(model, eval_batches(samples, recipe), threshold=0.9, rule="relative"))
    assert set(got) == set(want) and any(k.endswith("/mean_iou") for k in got)
    for k, v in want.items():
        assert (math.isnan(v) and math.isnan(got[k])) or got[k] == pytest.approx(v, abs=1e-12), k
    absolute = summarize(evaluate(model, eval_batches(samples, recipe), threshold=0.9))
    assert absolute["mean_iou"] != pytest.approx(got["mean_iou"])  # the rule matters here


def test_sample_labels_of_each_benchmark():
    from pipelines.inference import sample_labels

    assert sample_labels({"label": "motion", "frame_name": "00001"}) == ("motion",)
    assert sample_labels({"label": "11"}) == ("adult", "climbing")  # A2D: 10 * actor + action
    assert sample_labels({"label": "79"}) == ("dog", "no_action")
    assert sample_labels({"label": "99"}) == ("99",)  # not an A2D code: kept as is
    assert sample_labels({"action": "walk"}) == ("walk",)  # J-HMDB
    assert sample_labels({"expression_set": "annot1"}) == ("annot1",)  # Ref-DAVIS17
    assert sample_labels({"expression_set": 2}) == ("set2",)
    assert sample_labels({"exp_id": "0", "frame_name": "00005"}) == ()  # Ref-YouTube-VOS
