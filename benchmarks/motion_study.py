"""Why does the miniature not resolve motion-only expressions? Experiments of issue 14.

Every experiment is one tracked MLflow run in one experiment (default
``lstc-motion-study``), so the evidence can be compared in the MLflow UI:

``visibility``  how far each referred object moves inside the network's clip, in pixels of
                the network input, against its radius, and how much the motion of the two
                identical shapes of a ``motion`` video differs there (data only, no network).
``train``       the recipe's network trained in this process (no Ray: one process, the same
                collate, loss, optimiser and metrics as ``lstc train``) on a shard folder, then
                scored on its test split overall and per expression kind (``meta.label``).
``direct``      the temporal encoder alone (random init) trained to *classify* the referred
                object's motion (cross-entropy, features pooled in its mask): can it learn
                the motion at all when told it directly?
``probe``       linear probes on the frozen features of a run's checkpoint (or of a random-init
                network): does the temporal encoder's target-aligned slice, pooled inside the
                referred object's mask, tell its motion (left/right/up/down/still/bouncing)?
                Do the sentence features tell the motion phrase apart?

Usage::

    python benchmarks/motion_study.py visibility --source data/refer_shapes/source --frames 4 --stride 2 --size 64
    python benchmarks/motion_study.py train --shards DIR --epochs 4 [key=value ...]
    python benchmarks/motion_study.py probe --shards DIR [--checkpoint model.pt]
    python benchmarks/motion_study.py direct --shards DIR --epochs 2

The figures are printed and logged; nothing here is asserted (a study, not a test).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RECIPE = REPO / "configs" / "refer_shapes_tiny.yaml"
EXPERIMENT = "lstc-motion-study"


# --------------------------------------------------------------------------- data helpers


#: ``--only-label``: restrict training and scoring to one expression kind (set by main)
ONLY_LABEL: str | None = None


def load_samples(shards: str, split: str) -> list[dict[str, Any]]:
    """Every decoded sample (with a mask) of ``split``, in shard order (of the kind
    ``ONLY_LABEL`` when set)."""
    from data_prep.shards import iter_clip_rows, iter_samples

    out = []
    for row in iter_clip_rows(shards, split):
        for s in iter_samples(row):
            if s.get("mask") is None or not np.asarray(s["mask"]).size:
                continue
            if ONLY_LABEL is None or sample_meta(s).get("label") == ONLY_LABEL:
                out.append(s)
    return out


def sample_meta(s: dict[str, Any]) -> dict[str, Any]:
    meta = s.get("meta") or "{}"
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


# ---------------------------------------------------------------------------- visibility


def visibility(source: str, frames: int, stride: int, size: int) -> dict[str, float]:
    """Per-clip displacement of the objects at the network's input size (data only)."""
    from data_prep.schema import clip_frame_indices
    from data_prep.synthetic import SynthConfig, _objects, annotated_frames

    info = json.loads((Path(source) / "refer_shapes.json").read_text())
    cfg = SynthConfig(**info["config"])
    sx, sy = size / cfg.width, size / cfg.height
    annotated = annotated_frames(cfg)
    by_speed: dict[str, list[float]] = defaultdict(list)
    radius: dict[str, list[float]] = defaultdict(list)
    pair_gap: list[float] = []
    clamped = 0
    for i in range(cfg.num_videos):
        rng = np.random.default_rng([cfg.seed, i])
        scenario = ("motion", "appearance", "fast")[i % 3]
        objs = _objects(rng, scenario, cfg)
        for t in annotated:
            idx, _ = clip_frame_indices(t, cfg.num_frames, frames, stride)
            clamped += len(set(idx)) < len(idx)
            tracks = []
            for o in objs:
                xs = np.array([o.xs[k] for k in idx]) * sx
                ys = np.array([o.ys[k] for k in idx]) * sy
                path = float(np.hypot(np.diff(xs), np.diff(ys)).sum())
                key = o.speed or o.motion
                by_speed[key].append(path)
                radius[key].append(o.radius * min(sx, sy))
                tracks.append((xs - xs.mean(), ys - ys.mean()))
            if scenario == "motion":
                (ax, ay), (bx, by) = tracks[0], tracks[1]
                pair_gap.append(float(np.hypot(ax - bx, ay - by).max()))
    out = {f"path_px/{k}": float(np.mean(v)) for k, v in sorted(by_speed.items())}
    out |= {f"radius_px/{k}": float(np.mean(v)) for k, v in sorted(radius.items())}
    gaps = np.array(pair_gap)
    out["motion_pair_gap_px/mean"] = float(gaps.mean())
    out["motion_pair_gap_px/frac_below_2px"] = float((gaps < 2.0).mean())
    out["clips_clamped_frac"] = clamped / (cfg.num_videos * len(annotated))
    return out


# ---------------------------------------------------------------------------- training


def _recipe(overrides: Sequence[str]) -> Any:
    from pipelines.config import load_recipe

    return load_recipe(RECIPE, list(overrides))


def _batches(samples: list[dict[str, Any]], recipe: Any, epoch: int) -> Iterator[dict]:
    from pipelines.data import collate, collate_kwargs, epoch_seed

    seed = epoch_seed(recipe.train.seed, epoch)
    order = np.random.default_rng(seed).permutation(len(samples))
    bs = recipe.data.batch_size * recipe.train.num_workers  # the same global batch
    kw = collate_kwargs(recipe)
    for i in range(0, len(order) - bs + 1, bs):
        yield collate([samples[j] for j in order[i : i + bs]], train=True, rng=seed, **kw)


def evaluate_by_label(model: Any, samples: list[dict[str, Any]], recipe: Any) -> dict:
    from pipelines.data import eval_batches
    from pipelines.inference import evaluate, summarize

    m = evaluate(model, eval_batches(iter(samples), recipe), threshold=recipe.eval.threshold)
    return summarize(m)


def train(
    shards: str,
    overrides: Sequence[str],
    epochs: int,
    eval_every: int = 0,
    temporal_init: str | None = None,
) -> tuple[Any, dict[str, float], list[dict[str, float]]]:
    import torch

    from lstc.losses import SegmentationLoss
    from lstc.model import build_model
    from pipelines.train.loop import seed_everything
    from pipelines.train.optim import build_optimizer, build_scheduler

    recipe = _recipe([*overrides, f"train.epochs={epochs}"])
    seed_everything(recipe.train.seed)
    model = build_model(recipe.model)
    if temporal_init:
        model.temporal.encoder.load_state_dict(torch.load(temporal_init, map_location="cpu"))
    loss_fn = SegmentationLoss(recipe.loss)
    train_s, test_s = load_samples(shards, "train"), load_samples(shards, "test")
    bs = recipe.data.batch_size * recipe.train.num_workers
    steps = len(train_s) // bs
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    history: list[dict[str, float]] = []
    for epoch in range(epochs):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for batch in _batches(train_s, recipe, epoch):
            tok = model.tokenizer(batch["text"])
            out = model(batch["clip"], tok["input_ids"], tok["attention_mask"])
            loss, _ = loss_fn(out, batch["mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip)
            opt.step()
            sched.step()
            total, n = total + float(loss.detach()), n + 1
        row = {"epoch": epoch + 1, "loss": total / max(n, 1), "epoch_s": time.perf_counter() - t0}
        if eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            row |= _headline(evaluate_by_label(model, test_s, recipe))
        history.append(row)
        print(json.dumps(row), flush=True)
    final = evaluate_by_label(model, test_s, recipe)
    return model, final, history


def _headline(metrics: dict[str, float]) -> dict[str, float]:
    keys = ["overall_iou", "mean_iou"] + [f"{k}/mean_iou" for k in ("motion", "appearance", "fast")]
    return {k.replace("/", "_"): round(100 * metrics[k], 2) for k in keys if k in metrics}


# ---------------------------------------------------------------------------- probes


def _features(model: Any, samples: list[dict[str, Any]], recipe: Any) -> dict[str, np.ndarray]:
    """Per sample: temporal slice features pooled inside the GT mask (per stage), the
    spatial ones likewise, and the sentence feature."""
    import torch
    import torch.nn.functional as F

    from lstc.backbones import aligned_slice
    from pipelines.data import eval_batches

    feats: dict[str, list[np.ndarray]] = defaultdict(list)
    model.eval()
    with torch.no_grad():
        for batch in eval_batches(iter(samples), recipe):
            clip = batch["clip"]
            mask = batch["mask"]  # [B,1,H,W] at the input size
            if model.temporal is not None:
                x = model.temporal.encoder.normalize(clip)
                for li, stage in enumerate(model.temporal.encoder.stages):
                    x = stage(x)
                    sl = aligned_slice(
                        x, target_index=recipe.model.target_index, num_frames=clip.shape[2]
                    )
                    m = F.interpolate(mask, size=sl.shape[-2:], mode="area")
                    pooled = (sl * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-6)
                    feats[f"temporal{li}"].append(pooled.numpy())
            tok = model.tokenizer(batch["text"])
            words = model.text(tok["input_ids"], tok["attention_mask"])
            hidden = words[0] if isinstance(words, tuple) else words
            am = tok["attention_mask"].unsqueeze(-1).float()
            sent = (hidden * am).sum(1) / am.sum(1)
            feats["sentence"].append(sent.numpy())
    return {k: np.concatenate(v) for k, v in feats.items()}


def _probe(x_tr, y_tr, x_te, y_te, seed: int = 0) -> float:
    """Multinomial logistic regression (full batch, L2), accuracy on the test part."""
    import torch

    classes = sorted(set(y_tr) | set(y_te))
    idx = {c: i for i, c in enumerate(classes)}
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    xt = torch.tensor((x_tr - mu) / sd, dtype=torch.float32)
    xe = torch.tensor((x_te - mu) / sd, dtype=torch.float32)
    yt = torch.tensor([idx[c] for c in y_tr])
    ye = torch.tensor([idx[c] for c in y_te])
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xe).argmax(1) == ye).float().mean())


def _motion_of(s: dict[str, Any]) -> str | None:
    text = str(s["text"])
    for word in ("left", "right", "up and down", "still"):
        if word in text:
            return {"up and down": "bouncing"}.get(word, word)
    for word in ("up", "down"):
        if f"moving {word}" in text:
            return word
    return None


def direct(
    shards: str, overrides: Sequence[str], epochs: int, save: str | None = None
) -> dict[str, float]:
    """Can the temporal encoder learn the motion at all when told it directly? The recipe's
    temporal encoder (fresh, random init) + a linear layer on each stage's target-aligned
    slice, pooled inside the referred object's mask, trained end to end with cross-entropy
    on the motion class of the object (left/right/up/down/still/bouncing, from the
    expression). Test accuracy per epoch of the best stage's head; chance = the majority class."""
    import torch
    import torch.nn.functional as F

    from pipelines.data import eval_batches
    from pipelines.motion_pretrain import CLASSES, MotionClassifier, PretrainConfig
    from pipelines.train.loop import seed_everything

    recipe = _recipe([*overrides, f"train.epochs={epochs}"])
    seed_everything(recipe.train.seed)
    cfg = recipe.model
    # the encoder + per-stage heads of lstc pretrain-temporal, at the recipe's geometry
    model = MotionClassifier(PretrainConfig(num_frames=cfg.num_frames, tiny_width=cfg.tiny_width))
    tr = [s for s in load_samples(shards, "train") if _motion_of(s)]
    te = [s for s in load_samples(shards, "test") if _motion_of(s)]
    classes = list(CLASSES)  # all six, also those a flip creates
    opt = torch.optim.Adam(model.parameters(), lr=recipe.optim.lr)

    def labels(batch: dict[str, Any]) -> torch.Tensor:
        # a flipped sample's left/right are swapped in its text already (collate)
        return torch.tensor([classes.index(_motion_of({"text": t})) for t in batch["text"]])

    out: dict[str, float] = {}
    counts = defaultdict(int)
    for s in te:
        counts[_motion_of(s)] += 1
    out["direct_chance"] = max(counts.values()) / len(te)
    for epoch in range(epochs):
        model.train(True)
        for batch in _batches(tr, recipe, epoch):
            y = labels(batch)
            loss = sum(F.cross_entropy(z, y) for z in model.logits(batch["clip"], batch["mask"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.train(False)
        right, n = [0] * len(model.heads), 0
        with torch.no_grad():
            for batch in eval_batches(iter(te), recipe):
                y = labels(batch)
                for k, z in enumerate(model.logits(batch["clip"], batch["mask"])):
                    right[k] += int((z.argmax(1) == y).sum())
                n += len(y)
        row = {f"direct_acc/temporal{k}": r / n for k, r in enumerate(right)}
        print(json.dumps({"epoch": epoch + 1, **{k: round(v, 3) for k, v in row.items()}}))
        out |= row
    if save:
        torch.save(model.encoder.state_dict(), save)
        print(f"temporal encoder weights -> {save}")
    return out


def probe(shards: str, model: Any, recipe: Any) -> dict[str, float]:
    """Linear-probe accuracies (motion class of the referred object, from the expression's
    motion phrase; only expressions that name a motion)."""
    tr = [s for s in load_samples(shards, "train") if _motion_of(s)]
    te = [s for s in load_samples(shards, "test") if _motion_of(s)]
    f_tr, f_te = _features(model, tr, recipe), _features(model, te, recipe)
    y_tr, y_te = [_motion_of(s) for s in tr], [_motion_of(s) for s in te]
    out = {f"probe_acc/{k}": _probe(f_tr[k], y_tr, f_te[k], y_te) for k in f_tr}
    counts = defaultdict(int)
    for y in y_te:
        counts[y] += 1
    out["probe_chance"] = max(counts.values()) / len(y_te)
    out["probe_n_train"], out["probe_n_test"] = len(tr), len(te)
    return out


# ---------------------------------------------------------------------------- main


def _mlflow(tracking: str, name: str, params: dict, metrics: dict, tags: dict) -> str:
    import mlflow

    from pipelines.mlops.tracking import metric_key

    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({metric_key(k): str(v)[:500] for k, v in params.items()})
        # metric_key: "J&F" and "@" are not allowed in MLflow names (J_and_F, _at_)
        mlflow.log_metrics({metric_key(k): float(v) for k, v in metrics.items()})
        mlflow.set_tags(tags)
        return run.info.run_id


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "what", choices=["visibility", "train", "probe", "direct"]
    )  # overrides: right after it
    p.add_argument("--source", help="refer-shapes source folder (visibility)")
    p.add_argument("--shards", help="prepared refer-shapes shards (train, probe)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=0, help="score the test split every N epochs")
    p.add_argument("--probe", action="store_true", help="train: also probe the trained network")
    p.add_argument("--save-encoder", help="direct: save the trained temporal encoder here")
    p.add_argument("--temporal-init", help="train: start the temporal encoder from this file")
    p.add_argument("--checkpoint", help="probe: a model.pt state dict (default: random init)")
    p.add_argument("--name", default=None, help="MLflow run name")
    p.add_argument("--only-label", default=None, help="train and score one expression kind")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'outputs' / 'motion_study.db'}")
    p.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    args = p.parse_intermixed_args(argv)
    import torch

    global ONLY_LABEL
    ONLY_LABEL = args.only_label
    torch.set_num_threads(args.threads)
    tags = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", "benchmarks/motion_study.py", *sys.argv[1:]]),
    }
    params: dict[str, Any] = {"what": args.what, "shards": args.shards, "source": args.source}
    params["only_label"] = args.only_label
    params |= {f"override.{o.split('=', 1)[0]}": o.split("=", 1)[-1] for o in args.overrides}
    if args.what == "visibility":
        metrics = visibility(args.source, args.frames, args.stride, args.size)
        params |= {"frames": args.frames, "stride": args.stride, "size": args.size}
    elif args.what == "train":
        t0 = time.perf_counter()
        model, final, history = train(
            args.shards, args.overrides, args.epochs, args.eval_every, args.temporal_init
        )
        metrics = {k: v for k, v in final.items() if isinstance(v, float)}
        metrics["train_s"] = time.perf_counter() - t0
        params["epochs"] = args.epochs
        params["temporal_init"] = args.temporal_init
        print(json.dumps(_headline(final)))
        if args.probe:
            metrics |= probe(args.shards, model, _recipe(args.overrides))
    elif args.what == "direct":
        metrics = direct(args.shards, args.overrides, args.epochs, args.save_encoder)
        params["epochs"] = args.epochs
    else:
        import torch

        from lstc.model import build_model

        recipe = _recipe(args.overrides)
        torch.manual_seed(recipe.train.seed)
        model = build_model(recipe.model)
        if args.checkpoint:
            model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
        params["checkpoint"] = args.checkpoint or "random init"
        metrics = probe(args.shards, model, recipe)
    for k, v in sorted(metrics.items()):
        if "/" not in k or k.split("/")[0] in ("motion", "appearance", "fast") or "px" in k:
            if not k.startswith(("motion/", "appearance/", "fast/")) or k.endswith("mean_iou"):
                print(f"{k:40s} {v:.4f}")
        elif k.startswith(("probe", "direct")):
            print(f"{k:40s} {v:.4f}")
    run_id = _mlflow(args.tracking_uri, args.name or args.what, params, metrics, tags)
    print(f"MLflow run {run_id} in experiment {EXPERIMENT} ({args.tracking_uri})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
