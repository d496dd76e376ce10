"""Samples → clips: the grouping that stores a clip's frames once for all its expressions."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from data_prep.samples import Sample
from data_prep.schema import clip_id


def build_clips(samples: list[Sample]) -> dict[str, list[dict[str, Any]]]:
    """Samples → clip dicts per split, sorted by (video id, target frame); objects/expressions nested."""
    clips: dict[tuple[str, str, int], dict[str, Any]] = {}
    for s in samples:
        key = s.clip_key
        c = clips.get(key)
        if c is None:
            c = clips[key] = {
                "dataset": s.dataset,
                "split": s.split,
                "video_id": s.video_id,
                "clip_id": clip_id(s.video_id, s.target_frame),
                "target_frame": s.target_frame,
                "video": s.video.to_dict(),
                "objects": {},
            }
        obj = c["objects"].setdefault(
            s.object_id,
            {
                "object_id": s.object_id,
                "mask": s.mask.to_dict() if s.mask else None,
                "expressions": {},
            },
        )
        obj["expressions"].setdefault(
            s.expression_id,
            {"expression_id": s.expression_id, "text": s.expression, "meta": s.meta_json()},
        )
    per_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key in sorted(clips, key=lambda k: (k[0], k[1], k[2])):
        c = clips[key]
        c["objects"] = [
            {
                **o,
                "expressions": [
                    o["expressions"][e] for e in sorted(o["expressions"], key=_natural)
                ],
            }
            for _, o in sorted(c["objects"].items(), key=lambda kv: _natural(kv[0]))
        ]
        per_split[c["split"]].append(c)
    return dict(per_split)


def _natural(s: str) -> tuple[Any, ...]:
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
