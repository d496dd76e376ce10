"""Inference and evaluation shared by training-time validation and ``lstc eval``.

One code path, so that ``lstc eval`` reproduces the validation metrics logged during training:

* :func:`predict` / :func:`predict_masks`: forward the model on a collated batch
  (``pipelines.data.collate``: ``clip`` float ``[B,3,T,H,W]``, ``text``, ``orig_size``), resize
  the target-frame **logits** bilinearly (``align_corners=False``) to each sample's original
  frame size, then binarise ``p = sigmoid(logit)`` with the recipe's rule (``eval.threshold``,
  ``eval.threshold_rule``): ``p > t`` (``absolute``) or ``p > t · max(p)`` (``relative``, the
  CSTM release with ``t = 0.5``), see :func:`binarize`. The confidence ``score`` of a
  prediction (ranking for COCO AP) is the mean probability over its foreground pixels, or the
  maximum probability when the mask is empty.
* :func:`evaluate`: runs :func:`predict` over batches and feeds ``lstc.metrics.ReferringMetrics``
  with ``key = clip_id/object_id/expression_id`` (so merging states of several workers drops
  padded duplicates), ``labels`` = :func:`sample_labels` of the sample's meta (refer-shapes
  expression kind, A2D actor and action, J-HMDB action, Ref-DAVIS17 expression set; every
  metric is also reported per label) and ``track = video/object/expression`` (DAVIS averages J
  and F per track first). Samples carrying an ``expression_set`` (Ref-DAVIS17) are also scored
  with the published protocol: per clip (one video frame) and set, the objects' masks are
  merged into one label map (:func:`lstc.metrics.merge_object_masks`) and fed to
  ``ReferringMetrics.process_objects``. Samples without ground truth are skipped (they belong
  to :mod:`pipelines.eval.submission`).

A DDP-wrapped model is unwrapped first: evaluation never runs collectives, so ranks with
different numbers of batches cannot hang.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.checkpoint import unwrap

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lstc.metrics import ReferringMetrics


@dataclass(frozen=True)
class Prediction:
    """One sample's prediction at the original frame size."""

    mask: np.ndarray  # bool [H0, W0]
    score: float  # mean foreground probability (max probability when empty)
    prob: np.ndarray | None = None  # float32 [H0, W0] sigmoid probabilities, when asked for


#: how a probability map becomes a mask (recipe key ``eval.threshold_rule``)
THRESHOLD_RULES = ("absolute", "relative")


def binarize(prob: Any, threshold: float = 0.5, rule: str = "absolute") -> Any:
    """``prob > threshold`` (``absolute``) or ``prob > threshold · max(prob)`` (``relative``:
    relative to the maximum of this one prediction, as the CSTM release does with 0.5).
    Works on torch tensors and numpy arrays of any shape (one prediction)."""
    if rule == "absolute":
        return prob > threshold
    if rule == "relative":
        return prob > threshold * prob.max()
    raise ValueError(f"threshold rule {rule!r} is not one of {THRESHOLD_RULES}")


def model_device(model: Any) -> torch.device:
    import torch

    try:
        return next(unwrap(model).parameters()).device
    except StopIteration:
        return torch.device("cpu")


def parse_meta(meta: Any) -> dict[str, Any]:
    """A sample's ``meta`` (JSON string, mapping or None) as a dict; unparsable → empty."""
    if meta is None:
        return {}
    if isinstance(meta, Mapping):
        return dict(meta)
    if isinstance(meta, bytes):
        meta = meta.decode("utf-8", "replace")
    if isinstance(meta, str) and meta.strip().startswith("{"):
        try:
            out = json.loads(meta)
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}
    return {}


def _orig_sizes(batch: Mapping[str, Any], n: int) -> list[tuple[int, int]]:
    sizes = batch.get("orig_size")
    if sizes is None:
        raise KeyError("batch has no 'orig_size' (original frame size of every sample)")
    if hasattr(sizes, "tolist"):
        sizes = sizes.tolist()
    out = [(int(s[0]), int(s[1])) for s in sizes]
    if len(out) != n:
        raise ValueError(f"batch has {n} clips but {len(out)} original sizes")
    return out


def forward_logits(model: Any, batch: Mapping[str, Any], *, amp: bool = False) -> torch.Tensor:
    """Target-frame mask logits ``[B,1,H,W]`` (float32) at the model's input size (no grad).

    ``amp``: run the forward under bf16 autocast when the model is on CUDA (``lstc predict``);
    ignored on CPU, where results stay bit-exact float32."""
    import torch

    core = unwrap(model)
    device = model_device(core)
    clip = batch["clip"]
    if not isinstance(clip, torch.Tensor):
        clip = torch.as_tensor(np.asarray(clip))
    clip = clip.to(device=device, dtype=torch.float32, non_blocking=True)
    texts = list(batch["text"])
    tokens = core.tokenizer(texts)
    tokens = {k: v.to(device) for k, v in tokens.items()}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        out = core(clip, tokens["input_ids"], tokens["attention_mask"])
    logits = out.logits if hasattr(out, "logits") else out
    return logits.float()


def predict(
    model: Any,
    batch: Mapping[str, Any],
    *,
    threshold: float = 0.5,
    amp: bool = False,
    rule: str = "absolute",
    keep_prob: bool = False,
) -> list[Prediction]:
    """Masks (bool, original size) and scores for every sample of a collated batch
    (``amp``: bf16 autocast on CUDA, see :func:`forward_logits`; ``rule``: see
    :func:`binarize`; ``keep_prob``: also return the probability maps)."""
    import torch
    import torch.nn.functional as F

    logits = forward_logits(model, batch, amp=amp)
    sizes = _orig_sizes(batch, logits.shape[0])
    preds: list[Prediction] = []
    with torch.no_grad():
        for i, (h, w) in enumerate(sizes):
            up = F.interpolate(logits[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
            prob = torch.sigmoid(up[0, 0])
            mask = binarize(prob, threshold, rule)
            score = prob[mask].mean() if bool(mask.any()) else prob.max()
            kept = prob.cpu().numpy() if keep_prob else None
            preds.append(Prediction(mask.cpu().numpy(), float(score), kept))
    return preds


def predict_masks(
    model: Any, batch: Mapping[str, Any], *, threshold: float = 0.5, rule: str = "absolute"
) -> list[np.ndarray]:
    """``binarize(sigmoid(resize(logits, original size)))`` for every sample (bool arrays)."""
    return [p.mask for p in predict(model, batch, threshold=threshold, rule=rule)]


def _column(batch: Mapping[str, Any], name: str, n: int) -> list[Any]:
    values = batch.get(name)
    if values is None:
        return [None] * n
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(values) != n:
        raise ValueError(f"batch column {name!r} has {len(values)} entries, expected {n}")
    return values


#: A2D Sentences' video label = 10 · actor + action (videoset.csv); refer-shapes uses names
A2D_ACTORS = {1: "adult", 2: "baby", 3: "ball", 4: "bird", 5: "car", 6: "cat", 7: "dog"}
A2D_ACTIONS = {
    1: "climbing",
    2: "crawling",
    3: "eating",
    4: "flying",
    5: "jumping",
    6: "rolling",
    7: "running",
    8: "walking",
    9: "no_action",
}


def sample_labels(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """The labels a sample is also scored under (every metric per label):

    * ``meta["label"]``: the refer-shapes expression kind (``motion``, ``appearance``,
      ``fast``) as is; an A2D actor-action code ``10·a + b`` as the actor and the action names
      (``11`` -> ``adult``, ``climbing``);
    * ``meta["action"]``: the J-HMDB action (``walk``, ...);
    * ``meta["expression_set"]``: the Ref-DAVIS17 set (``annot1``, ...; a bare number ``n`` ->
      ``set<n>``).
    """
    out: list[str] = []
    label = meta.get("label")
    if label not in (None, ""):
        text = str(label).strip()
        code = int(text) if text.isdigit() else None
        if code is not None and code // 10 in A2D_ACTORS and code % 10 in A2D_ACTIONS:
            out += [A2D_ACTORS[code // 10], A2D_ACTIONS[code % 10]]
        else:
            out.append(text)
    if meta.get("action") not in (None, ""):
        out.append(str(meta["action"]))
    exp_set = expression_set(meta)
    if exp_set is not None:
        out.append(exp_set)
    return tuple(dict.fromkeys(out))


def expression_set(meta: Mapping[str, Any]) -> str | None:
    """The Ref-DAVIS17 expression set of a sample's meta (``None`` elsewhere)."""
    value = meta.get("expression_set")
    if value in (None, ""):
        return None
    return f"set{value}" if str(value).isdigit() else str(value)


@dataclass(frozen=True)
class SampleIds:
    """How one sample is filed in the metrics (see the module docstring)."""

    key: str | None
    labels: tuple[str, ...]
    track: str | None
    expression_set: str | None
    clip_id: str | None
    video_id: str | None
    object_id: str | None


def sample_ids(batch: Mapping[str, Any], n: int) -> list[SampleIds]:
    """:class:`SampleIds` of every sample of a batch (see module docstring)."""
    keys = _column(batch, "key", n)
    metas = [parse_meta(m) for m in _column(batch, "meta", n)]
    videos = _column(batch, "video_id", n)
    objects = _column(batch, "object_id", n)
    expressions = _column(batch, "expression_id", n)
    clips = _column(batch, "clip_id", n)
    out = []
    for key, meta, vid, obj, exp, clip in zip(keys, metas, videos, objects, expressions, clips):
        if isinstance(key, (list, tuple)):
            key = "/".join(str(k) for k in key)
        track = None
        if vid is not None and obj is not None:
            track = f"{vid}/{obj}/{exp}" if exp is not None else f"{vid}/{obj}"
        out.append(
            SampleIds(
                key=None if key is None else str(key),
                labels=sample_labels(meta),
                track=track,
                expression_set=expression_set(meta),
                clip_id=None if clip is None else str(clip),
                video_id=None if vid is None else str(vid),
                object_id=None if obj is None else str(obj),
            )
        )
    return out


def _score_objects(m: ReferringMetrics, entries: list[dict[str, Any]]) -> None:
    """The Ref-DAVIS17 protocol for one clip (one video frame): per expression set, the
    objects' predictions (their first expression of that set) merged and scored against every
    object's ground truth of the frame."""
    gts: dict[str, np.ndarray] = {}
    sets: dict[str, dict[str, dict[str, Any]]] = {}
    for e in entries:
        gts.setdefault(e["object"], e["gt"])
        sets.setdefault(e["set"], {}).setdefault(e["object"], e)
    for name, objs in sets.items():
        m.process_objects(
            group=name,
            video=entries[0]["video"],
            frame=entries[0]["clip"],
            preds={o: e["mask"] for o, e in objs.items()},
            probs={o: e["prob"] for o, e in objs.items()},
            gts=gts,
        )


def evaluate(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    device: Any = None,
    threshold: float = 0.5,
    rule: str = "absolute",
    metrics: ReferringMetrics | None = None,
    use_tracks: bool = True,
    on_batch: Callable[[Mapping[str, Any], list[Prediction]], None] | None = None,
) -> ReferringMetrics:
    """Accumulate ``ReferringMetrics`` over collated ``batches`` (samples without GT skipped).

    ``device``: where to run (the model is moved there; ``None`` keeps its device). The model's
    train/eval mode is restored afterwards. Pass ``metrics`` to keep accumulating into it.
    ``threshold`` / ``rule``: see :func:`binarize`. ``on_batch(batch, predictions)`` is
    called for every batch (e.g. to write a submission or overlays from the very predictions
    that were scored). The samples of a clip must arrive together (shard rows are never split:
    :func:`pipelines.data.eval_batches` keeps their order) for the Ref-DAVIS17 merge.
    """
    import torch

    from lstc.metrics import ReferringMetrics

    core = unwrap(model)
    if device is not None:
        core.to(torch.device(device))
    m = metrics if metrics is not None else ReferringMetrics()
    was_training = core.training
    core.eval()
    pending: list[dict[str, Any]] = []  # Ref-DAVIS17 samples of the current clip
    try:
        for batch in batches:
            ids = sample_ids(batch, len(batch["text"]))
            need_prob = any(i.expression_set is not None for i in ids)
            preds = predict(core, batch, threshold=threshold, rule=rule, keep_prob=need_prob)
            if on_batch is not None:
                on_batch(batch, preds)
            gts = _column(batch, "gt_mask_orig", len(preds))
            for pred, gt, i in zip(preds, gts, ids):
                if gt is None:
                    continue
                gt = np.asarray(gt)
                m.process(
                    pred.mask,
                    gt,
                    score=pred.score,
                    labels=i.labels,
                    key=i.key,
                    track=i.track if use_tracks else None,
                )
                if i.expression_set is None:
                    continue
                if pending and pending[0]["clip"] != i.clip_id:
                    _score_objects(m, pending)
                    pending = []
                pending.append(
                    {
                        "clip": i.clip_id,
                        "video": i.video_id,
                        "object": i.object_id,
                        "set": i.expression_set,
                        "mask": pred.mask,
                        "prob": pred.prob,
                        "gt": gt,
                    }
                )
        if pending:
            _score_objects(m, pending)
    finally:
        core.train(was_training)
    return m


#: key prefix of the Ref-DAVIS17 protocol's results in :func:`summarize`
DAVIS_PREFIX = "davis17"


def summarize(m: ReferringMetrics) -> dict[str, float]:
    """``m.compute()``, every metric per label as ``<label>/<name>`` (:func:`sample_labels`)
    and, when Ref-DAVIS17 frames were scored, the published protocol per expression set as
    ``davis17/<set>/J|F|J&F|num_objects|num_frames`` and averaged over the sets as
    ``davis17/J``, ``davis17/F``, ``davis17/J&F`` (the headline Ref-DAVIS17 numbers)."""
    from lstc.metrics import average_over_groups

    out = dict(m.compute())
    for label, vals in m.compute_by_label().items():
        for k, v in vals.items():
            out[f"{label}/{k}"] = v
    by_set = m.compute_objects()
    if by_set:
        for name, vals in by_set.items():
            for k, v in vals.items():
                out[f"{DAVIS_PREFIX}/{name}/{k}"] = v
        for k, v in average_over_groups(by_set).items():
            out[f"{DAVIS_PREFIX}/{k}"] = v
    return out
