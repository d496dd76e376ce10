"""A held-out validation split carved out of a training split, by video.

Benchmarks whose validation split has no public masks (Ref-YouTube-VOS) or whose only other
split is the test set (A2D Sentences) need a validation part of ``train`` for model selection.
``lstc prep --heldout-fraction F`` moves every sample of the videos chosen here from ``train``
to the split ``heldout``, before clips and shards are planned, so a video is never in both.

A video is held out when ``u(video_id) < F`` with ``u(v) = int(sha256(v)[:16], 16) / 2^64``, a
value in [0, 1) that depends on the video id alone: the choice is the same on every machine and
every run, and adding videos to the benchmark never moves an existing video. Only for tiny
splits: when no video falls under ``F`` and the split has two videos or more, the one with the
smallest ``u`` is held out, and the video with the largest ``u`` always stays in training (so
neither split is empty).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from data_prep.readers.base import IndexUnit
from data_prep.samples import Sample

HELDOUT_SPLIT = "heldout"


def video_score(video_id: str) -> float:
    """``u(video_id)`` in [0, 1): the first 64 bits of the id's sha256."""
    digest = hashlib.sha256(video_id.encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2.0**64


@dataclass(frozen=True)
class HeldoutSpec:
    """Which videos of `source` become the split `name` (see the module docstring)."""

    fraction: float
    source: str = "train"
    name: str = HELDOUT_SPLIT

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(
                f"--heldout-fraction {self.fraction} is not valid: it must be in (0, 1), "
                "e.g. 0.05 for 5% of the training videos"
            )
        if self.source == self.name:
            raise ValueError(f"the held-out split must differ from its source {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def chosen(self, video_ids: Iterable[str]) -> set[str]:
        """The held-out videos among `video_ids` (those of the source split)."""
        ranked = sorted(set(video_ids), key=lambda v: (video_score(v), v))
        out = {v for v in ranked if video_score(v) < self.fraction}
        if len(ranked) >= 2:
            if not out:
                out = {ranked[0]}
            out.discard(ranked[-1])
        return out


def assign_samples(samples: list[Sample], spec: HeldoutSpec) -> list[Sample]:
    """`samples` with those of the held-out videos of ``spec.source`` moved to ``spec.name``."""
    held = spec.chosen(s.video_id for s in samples if s.split == spec.source)
    return [
        dataclasses.replace(s, split=spec.name)
        if s.split == spec.source and s.video_id in held
        else s
        for s in samples
    ]


def assign_units(units: list[IndexUnit], spec: HeldoutSpec) -> list[IndexUnit]:
    """The same for index units, one per video (their ``key`` is the video id)."""
    held = spec.chosen(u.key for u in units if u.split == spec.source)
    return [
        dataclasses.replace(u, split=spec.name) if u.split == spec.source and u.key in held else u
        for u in units
    ]


__all__ = ["HELDOUT_SPLIT", "HeldoutSpec", "assign_samples", "assign_units", "video_score"]
