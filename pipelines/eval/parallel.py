"""``lstc eval --num-workers N``: evaluation as a Ray Data ``map_batches`` over an actor pool.

Each actor loads the model once (a ``models:/`` URI or a checkpoint path), takes batches of
clip rows, decodes and collates them exactly like the in-process path
(:func:`pipelines.data.eval_batches`) and runs :func:`pipelines.inference.evaluate` on them.
It returns, per batch of clips, the ``ReferringMetrics.state()`` of those samples (pickled) and,
when a submission is written, the predicted masks (PNG) with the ids needed to place them.
The driver merges the states with ``ReferringMetrics.merge`` — sample keys make the merge
drop duplicates — so the result equals single-process evaluation (the metrics are
order-independent, see ``lstc.metrics``), per label and for the Ref-DAVIS17 merged-object
frames too (a clip row is never split between tasks, so its objects are merged in one actor).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

_LIGHT_KEYS = ("key", "meta", "video_id", "object_id", "expression_id")


class _Scorer:
    """Ray Data actor: model loaded once, scores batches of clip rows."""

    def __init__(
        self,
        model_spec: str,
        tracking_uri: str | None,
        batch_size: int,
        threshold: float,
        keep_masks: bool,
        threshold_rule: str = "absolute",
    ) -> None:
        from pipelines.eval.loading import load_model

        self.model, self.recipe, _ = load_model(model_spec, tracking_uri)
        self.model.eval()
        self.batch_size = batch_size
        self.threshold = threshold
        self.threshold_rule = threshold_rule
        self.keep_masks = keep_masks

    def __call__(self, rows: Mapping[str, Any]) -> dict[str, list[bytes]]:
        from data_prep.shards import iter_samples
        from lstc.metrics import ReferringMetrics
        from pipelines.data import eval_batches, rows_from_batch
        from pipelines.inference import evaluate

        samples = [s for row in rows_from_batch(rows) for s in iter_samples(row)]
        masks: list[dict[str, Any]] = []

        def keep(batch: Mapping[str, Any], preds: list[Any]) -> None:
            for i, p in enumerate(preds):
                masks.append(
                    {
                        "key": batch["key"][i],
                        "meta": batch["meta"][i],
                        "video_id": batch["video_id"][i],
                        "object_id": batch["object_id"][i],
                        "expression_id": batch["expression_id"][i],
                        "png": _png(p.mask),
                        "score": p.score,
                    }
                )

        acc = evaluate(
            self.model,
            eval_batches(samples, self.recipe, batch_size=self.batch_size),
            threshold=self.threshold,
            rule=self.threshold_rule,
            metrics=ReferringMetrics(),
            on_batch=keep if self.keep_masks else None,
        )
        return {"state": [pickle.dumps(acc.state())], "masks": [pickle.dumps(masks)]}


def _png(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im) > 0


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False
        )


def evaluate_parallel(
    model_spec: str,
    root: str,
    split: str,
    *,
    num_workers: int,
    batch_size: int,
    threshold: float = 0.5,
    threshold_rule: str = "absolute",
    limit: int | None = None,
    tracking_uri: str | None = None,
    on_batch: Callable[[Mapping[str, Any], list[Any]], None] | None = None,
    clips_per_task: int = 4,
) -> Any:
    """Merged ``ReferringMetrics`` of ``split``, scored by ``num_workers`` Ray actors.

    ``on_batch(batch, predictions)`` receives, in the driver, a light batch (``key``, ``meta``,
    ``video_id``, ``object_id``, ``expression_id``) and the predictions of every task (for the submission).
    """
    from data_prep.shards import read_clips
    from lstc.metrics import ReferringMetrics
    from pipelines.inference import Prediction

    _ensure_ray()
    ds = read_clips(root, split)
    if limit is not None:
        ds = ds.limit(limit)
    scored = ds.map_batches(
        _Scorer,
        fn_constructor_args=(
            model_spec,
            tracking_uri,
            batch_size,
            threshold,
            on_batch is not None,
            threshold_rule,
        ),
        batch_size=clips_per_task,
        batch_format="numpy",
        concurrency=num_workers,
        num_cpus=1,
    )
    states = []
    for row in scored.iter_rows():
        states.append(pickle.loads(row["state"]))
        if on_batch is not None:
            masks = pickle.loads(row["masks"])
            if masks:
                light = {
                    k: [m[k] for m in masks] for k in ("key", "meta", "video_id", "expression_id")
                }
                on_batch(light, [Prediction(_unpng(m["png"]), float(m["score"])) for m in masks])
    return ReferringMetrics.merge(states)
