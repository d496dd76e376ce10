"""Evaluation runner behind ``lstc eval``: score a registered model or a checkpoint on prepared shards.

    lstc eval --model models:/<name>@champion --data <shards root> [--split test]
    lstc eval --model outputs/.../checkpoint_best --data <shards> --submission out.zip
    lstc eval --model s3://bucket/runs/<name>/best --data s3://bucket/shards \
        --output s3://bucket/eval/metrics.json --submission s3://bucket/eval/sub.zip

Every location may be a local path or a URI (``s3://``, ``gs://``, ``file://``): shards are read
through the ``data_prep.shards`` readers, a checkpoint URI is downloaded to a temporary folder
(and must be complete), ``--output`` and ``--submission`` are written through
``data_prep.storage`` (the submission is assembled and validated in a local temporary folder,
then uploaded as one zip).

Every metric of ``lstc.metrics`` is computed with :func:`pipelines.inference.evaluate` (the
function training-time validation uses, so the numbers reproduce the logged validation
metrics), printed as a table, and logged to a new MLflow run tagged with the model (registered
name / version / alias, or checkpoint path). Every metric is also reported per label of the samples'
meta (:func:`pipelines.inference.sample_labels`: refer-shapes expression kinds, A2D actors and
actions, J-HMDB actions, Ref-DAVIS17 expression sets), printed as extra columns and logged as
``eval/<label>/<metric>``. Ref-DAVIS17 shards are also scored with the published protocol
(objects merged per expression set, DAVIS-2017 scoring, averaged over the sets: ``davis17/J&F``
is the headline number; docs/METRICS.md). Masks follow ``--threshold`` / ``--threshold-rule``,
by default the model recipe's ``eval.threshold`` / ``eval.threshold_rule``.
``--submission`` writes the masks of every sample in the Ref-YouTube-VOS layout
(``Annotations/<video>/<exp_id>/<frame>.png``), validates it and zips it.

Where the scoring runs: with ``--num-workers N > 1`` in a Ray Data actor pool
(:mod:`pipelines.eval.parallel`); otherwise in one process - on a cluster (``RAY_ADDRESS`` set,
as in every Ray Job) that process is a Ray task kept off the head (:mod:`data_prep.placement`;
the command prints its node), locally it is this process.

Heavy imports (torch, mlflow, ray) happen inside :func:`run` so ``lstc --help`` stays fast.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lstc.metrics import METRIC_NAMES
from pipelines.eval.loading import EvalError, load_model

#: rows of the printed table, in order
TABLE_KEYS = METRIC_NAMES


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """What ``lstc eval`` scores and where the results go (one field per command-line flag)."""

    model: str  # models:/<name>@<alias>, models:/<name>/<version>, a checkpoint dir or URI
    data: str  # shard root written by `lstc prep` (folder or URI)
    split: str | None = None  # default: the recipe's val split
    submission: str | None = None  # Ref-YouTube-VOS submission zip to write (path or URI)
    meta_expressions: str | None = None  # validate the submission against this json
    batch_size: int | None = None  # default: recipe data.eval_batch_size
    threshold: float | None = None  # default: the model recipe's eval.threshold
    threshold_rule: str | None = None  # absolute | relative (default: eval.threshold_rule)
    limit: int | None = None  # first N clips only
    device: str | None = None  # cpu | cuda (default: cuda when available)
    num_workers: int = 1  # >1: Ray Data actor pool
    tracking_uri: str | None = None
    experiment: str | None = None
    no_tracking: bool = False
    output: str | None = None  # also write the metrics to this JSON file (path or URI)


# --------------------------------------------------------------------------- data


def iter_eval_samples(root: str, split: str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Decoded samples of ``split`` in shard order (first ``limit`` clips), without Ray."""
    from data_prep.shards import iter_clip_rows, iter_samples

    for i, row in enumerate(iter_clip_rows(root, split)):
        if limit is not None and i >= limit:
            return
        yield from iter_samples(row)


def split_videos(root: str, split: str) -> set[str]:
    """Video ids of every clip of ``split`` (reads only the ``video_id`` column)."""
    from data_prep.shards import read_shard_table, shard_paths

    fs, paths = shard_paths(root, split)
    out: set[str] = set()
    for p in paths:
        out.update(read_shard_table(fs, p, columns=["video_id"]).column("video_id").to_pylist())
    return out


def _data_root(data: str) -> str:
    """The shard root as given for URIs, as a normalised path otherwise (never
    ``Path(uri)``, which would turn ``s3://b`` into ``s3:/b``)."""
    from data_prep.storage import is_uri

    return data if is_uri(data) else str(Path(data))


def _model_name(tags: Mapping[str, str]) -> str:
    """A short model name for the eval run: registered name, else the checkpoint's folder."""
    if tags.get("model_name"):
        return tags["model_name"]
    where = tags.get("checkpoint", "model").split("?", 1)[0].rstrip("/")
    return where.rsplit("/", 1)[-1] or "model"


# --------------------------------------------------------------------------- output


#: label columns per printed table (more labels continue in a further table)
LABEL_COLUMNS = 6


def _pct(v: Any) -> str:
    if v is None or _nan(v):
        return "-"
    return f"{100 * float(v):.2f}"


def format_table(metrics: Mapping[str, float]) -> str:
    """Metrics as aligned text tables (percent): rows = metrics, columns = all samples and
    each label (``<label>/<metric>`` keys, at most :data:`LABEL_COLUMNS` per table), then the
    Ref-DAVIS17 protocol per expression set and averaged (``davis17/...``) when present."""
    from pipelines.inference import DAVIS_PREFIX

    labels = sorted(
        {
            k.rsplit("/", 1)[0]
            for k in metrics
            if k.count("/") == 1
            and k.split("/")[1] in TABLE_KEYS
            and k.split("/")[0] != DAVIS_PREFIX
        }
    )
    chunks = [labels[i : i + LABEL_COLUMNS] for i in range(0, len(labels), LABEL_COLUMNS)]
    blocks = []
    for c, chunk in enumerate(chunks or [[]]):
        cols = (["all"] if c == 0 else []) + chunk
        width = max(9, *(len(x) + 2 for x in cols))
        lines = ["metric".ljust(20) + "".join(x.rjust(width) for x in cols)]
        for key in TABLE_KEYS:
            cells = [_pct(metrics.get(key if x == "all" else f"{x}/{key}")) for x in cols]
            lines.append(key.ljust(20) + "".join(v.rjust(width) for v in cells))
        counts = [metrics.get("num_samples" if x == "all" else f"{x}/num_samples") for x in cols]
        lines.append(
            "samples".ljust(20)
            + "".join(("-" if n is None else str(int(n))).rjust(width) for n in counts)
        )
        blocks.append("\n".join(lines))
    sets = sorted(
        {k.split("/")[1] for k in metrics if k.startswith(DAVIS_PREFIX + "/") and k.count("/") == 2}
    )
    if sets:
        width = max(9, *(len(x) + 2 for x in sets))
        lines = [
            "Ref-DAVIS17 protocol (objects merged per expression set, DAVIS-2017 J/F)",
            "set".ljust(20) + "".join(x.rjust(width) for x in ("J", "F", "J&F", "objects")),
        ]
        for name in [*sets, "mean"]:
            pre = f"{DAVIS_PREFIX}/{name}/" if name != "mean" else f"{DAVIS_PREFIX}/"
            cells = [_pct(metrics.get(pre + k)) for k in ("J", "F", "J&F")]
            objs = metrics.get(pre + "num_objects")
            cells.append("-" if objs is None else str(int(objs)))
            lines.append(name.ljust(20) + "".join(v.rjust(width) for v in cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- main


def _default_split(root: str, recipe: Any, requested: str | None) -> str:
    from data_prep.shards import load_manifest

    splits = sorted(load_manifest(root).get("counts", {}))
    split = requested or recipe.data.val_split
    if split not in splits:
        if requested is None and len(splits) == 1:
            return splits[0]
        raise EvalError(f"split {split!r} is not in {root} (splits there: {splits})")
    return split


def _resolve_threshold(args: EvalOptions, recipe: Any) -> EvalOptions:
    """``args`` with the threshold and its rule filled in from the model's recipe (``eval``
    section) where the command line left them out; refuses an unknown rule."""
    from pipelines.inference import THRESHOLD_RULES

    threshold = recipe.eval.threshold if args.threshold is None else float(args.threshold)
    rule = recipe.eval.threshold_rule if args.threshold_rule is None else args.threshold_rule
    if rule not in THRESHOLD_RULES:
        raise EvalError(f"--threshold-rule {rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
    if not 0 < threshold < 1:
        raise EvalError(f"--threshold {threshold} must be between 0 and 1 (exclusive)")
    return replace(args, threshold=threshold, threshold_rule=rule)


def run_eval(args: EvalOptions) -> dict[str, float]:
    """Score ``args.model`` on ``args.data``; prints the table, logs an MLflow run, returns the metrics."""
    import torch

    from data_prep.placement import on_a_cluster
    from pipelines.data import eval_batches
    from pipelines.inference import evaluate, parse_meta, summarize
    from pipelines.mlops.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    model, recipe, tags = load_model(args.model, uri)
    args = _resolve_threshold(args, recipe)
    root = _data_root(args.data)
    split = _default_split(root, recipe, args.split)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)

    writer = None
    sub_dir = None
    if args.submission:
        from data_prep.storage import is_uri
        from pipelines.eval.submission import SubmissionWriter

        # the PNGs are staged locally: beside a local zip (same disk), in the temp dir for URIs
        out_dir = None
        if not is_uri(args.submission):
            out_dir = Path(args.submission).resolve().parent
            out_dir.mkdir(parents=True, exist_ok=True)
        sub_dir = Path(tempfile.mkdtemp(prefix="lstc-submission-", dir=out_dir))
        writer = SubmissionWriter(sub_dir)

    def write_masks(batch: Mapping[str, Any], preds: list[Any]) -> None:
        for i, pred in enumerate(preds):
            meta = parse_meta(batch["meta"][i])
            frame = meta.get("frame_name")
            # Ref-YouTube-VOS expression ids are unique per video; elsewhere they are unique
            # per object only, so the object id is prefixed to keep one folder per expression
            exp_id = meta.get("exp_id") or f"{batch['object_id'][i]}_{batch['expression_id'][i]}"
            if frame is None:
                raise EvalError(
                    f"--submission: sample {batch['key'][i]} has no frame_name meta; "
                    "only Ref-YouTube-VOS-style shards can be turned into a submission"
                )
            writer.add(batch["video_id"][i], exp_id, frame, pred.mask)

    t0 = time.perf_counter()
    if args.num_workers > 1:
        from pipelines.eval.parallel import evaluate_parallel

        metrics_acc = evaluate_parallel(
            args.model,
            root,
            split,
            num_workers=args.num_workers,
            batch_size=args.batch_size or recipe.data.eval_batch_size,
            threshold=args.threshold,
            threshold_rule=args.threshold_rule,
            limit=args.limit,
            tracking_uri=uri,
            on_batch=write_masks if writer is not None else None,
        )
    elif on_a_cluster():
        metrics_acc = _score_in_a_task(
            args, uri, root, split, write_masks if writer is not None else None
        )
    else:
        batches = eval_batches(
            iter_eval_samples(root, split, args.limit), recipe, batch_size=args.batch_size
        )
        metrics_acc = evaluate(
            model,
            batches,
            device=device,
            threshold=args.threshold,
            rule=args.threshold_rule,
            on_batch=write_masks if writer is not None else None,
        )
    seconds = time.perf_counter() - t0
    results = summarize(metrics_acc) if len(metrics_acc) else {"num_samples": 0}

    zip_path = None
    if writer is not None:
        from pipelines.eval.submission import expected_from_meta_expressions, zip_submission

        expected = writer.expected
        if args.meta_expressions:
            expected = expected_from_meta_expressions(
                args.meta_expressions, videos=split_videos(root, split)
            )
        zip_path = zip_submission(sub_dir, args.submission, expected, sizes=writer.sizes)
        import shutil

        shutil.rmtree(sub_dir, ignore_errors=True)

    from pipelines.checkpoint import describe

    n = int(results.get("num_samples", 0))
    print(
        f"lstc eval: {describe(args.model)} on {describe(root)} [{split}], {n} scored samples, "
        f"{seconds:.1f} s"
    )
    if results.get("num_samples"):
        print(format_table(results))
    if zip_path is not None:
        print(f"submission: {describe(zip_path)}")
    if args.output:
        from data_prep.storage import write_text

        write_text(args.output, json.dumps(results, indent=1, sort_keys=True, default=float))

    if not args.no_tracking:
        _log_eval_run(args, recipe, tags, uri, root, split, results, seconds, zip_path)
    return results


def _score(
    model_spec: str,
    tracking_uri: str,
    root: str,
    split: str,
    *,
    limit: int | None,
    batch_size: int | None,
    threshold: float,
    rule: str,
    device: str | None,
    keep_masks: bool,
) -> dict[str, Any]:
    """Single-process scoring (the body of the Ray task of :func:`_score_in_a_task`): the
    model loaded here, every sample of ``split`` through :func:`pipelines.inference.evaluate`;
    returns the metric accumulator, the predicted masks as PNG (when ``keep_masks``) with the
    ids a submission needs, and the node it ran on."""
    import torch

    from data_prep.placement import where_am_i
    from pipelines.data import eval_batches
    from pipelines.eval.parallel import _png
    from pipelines.inference import evaluate

    model, recipe, _ = load_model(model_spec, tracking_uri)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    masks: list[dict[str, Any]] = []

    def keep(batch: Mapping[str, Any], preds: list[Any]) -> None:
        for i, p in enumerate(preds):
            masks.append(
                {k: batch[k][i] for k in _MASK_KEYS} | {"png": _png(p.mask), "score": p.score}
            )

    batches = eval_batches(iter_eval_samples(root, split, limit), recipe, batch_size=batch_size)
    acc = evaluate(
        model,
        batches,
        device=dev,
        threshold=threshold,
        rule=rule,
        on_batch=keep if keep_masks else None,
    )
    return {"metrics": acc, "masks": masks, "where": where_am_i()}


#: the ids of a predicted mask that travel back from the scoring task (for the submission)
_MASK_KEYS = ("key", "meta", "video_id", "object_id", "expression_id")


def _score_in_a_task(
    args: EvalOptions,
    tracking_uri: str,
    root: str,
    split: str,
    on_batch: Any,
) -> Any:
    """Single-process evaluation as one Ray task, kept off the head when the cluster has other
    nodes (:mod:`data_prep.placement`); ``--device cuda`` asks it for one GPU. The masks of a
    submission come back as PNG and are handed to ``on_batch`` here, in the driver."""
    import ray

    from data_prep.placement import describe_node, off_head_options
    from pipelines.eval.parallel import _ensure_ray, _unpng
    from pipelines.inference import Prediction

    _ensure_ray()
    task = ray.remote(num_cpus=1, num_gpus=1 if args.device == "cuda" else 0)(_score)
    out = ray.get(
        task.options(**off_head_options()).remote(
            args.model,
            tracking_uri,
            root,
            split,
            limit=args.limit,
            batch_size=args.batch_size,
            threshold=args.threshold,
            rule=args.threshold_rule,
            device=args.device,
            keep_masks=on_batch is not None,
        )
    )
    print(f"lstc eval: scored in a Ray task on {describe_node(out['where'])}", flush=True)
    if on_batch is not None and out["masks"]:
        masks = out["masks"]
        light = {k: [m[k] for m in masks] for k in _MASK_KEYS}
        on_batch(light, [Prediction(_unpng(m["png"]), float(m["score"])) for m in masks])
    return out["metrics"]


def _log_eval_run(
    args: EvalOptions,
    recipe: Any,
    tags: dict[str, str],
    uri: str,
    root: str,
    split: str,
    results: Mapping[str, float],
    seconds: float,
    zip_path: Path | str | None,
) -> None:
    from pipelines.mlops.tracking import Tracker, dataset_tags, shard_dataset

    try:  # the same dataset identity (name + digest) as the training run's inputs
        inputs = [(shard_dataset(root, split), "evaluation")]
    except (OSError, KeyError, ValueError) as exc:
        print(f"MLflow: dataset lineage not logged ({root}: {exc})", file=sys.stderr)
        inputs = []
    from data_prep.storage import is_uri
    from pipelines.checkpoint import describe

    name = _model_name(tags)
    version = tags.get("model_version")
    tracker = Tracker.start(
        recipe,
        tracking_uri=uri,
        experiment=args.experiment or recipe.tracking.experiment,
        run_name=f"eval-{name}" + (f"-v{version}" if version else "") + f"-{split}",
        tags={
            **tags,
            "lstc.kind": "eval",
            "eval.data": describe(root) if is_uri(root) else str(Path(root).resolve()),
            "eval.split": split,
            **dataset_tags(root),
            **({"submission": describe(zip_path)} if zip_path else {}),
        },
        system_metrics=False,
    )
    tracker.log_params(
        {
            "eval.threshold": args.threshold,
            "eval.threshold_rule": args.threshold_rule,
            "eval.limit": args.limit,
            "eval.batch_size": args.batch_size or recipe.data.eval_batch_size,
            "eval.num_workers": args.num_workers,
        }
    )
    tracker.log_inputs(inputs)
    tracker.log_metrics(
        {f"eval/{k}": v for k, v in results.items() if not _nan(v)}, step=0, axis="once"
    )
    tracker.log_metrics({"eval/seconds": seconds}, step=0, axis="once")
    tracker.log_dict(dict(results), "eval_metrics.json")
    tracker.end()
    if tracker.run_id:
        print(f"MLflow run {tracker.run_id} ({uri})")
    else:
        print(
            "MLflow: logging failed (see the warning above); results were printed only",
            file=sys.stderr,
        )


def _nan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True
