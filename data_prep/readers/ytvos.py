"""Ref-YouTube-VOS.

Layout::

    <split>/JPEGImages/<vid>/<frame>.jpg
    <split>/Annotations/<vid>/<frame>.png          palette PNG, pixel = object id (train only)
    meta_expressions/<split>/meta_expressions.json {"videos": {vid: {"expressions":
                                                    {"0": {"exp": ..., "obj_id": "1"}}, "frames": [...]}}}

Splits read: ``train`` (with masks) and ``valid`` (no ground truth: ``mask=None``). The
valid json also lists the test videos: valid = valid − test, the test ids being those of
``meta_expressions/test/meta_expressions.json`` (202 videos on the real benchmark).
Every listed frame of a video is a target frame (the submission needs them all).
Model selection needs masks the valid split does not have: ``lstc prep --heldout-fraction F``
moves the samples of about F of the train videos to a split ``heldout``
(:mod:`data_prep.heldout`; by video, chosen by a hash of the video id), which
``configs/ytvos_paper.yaml`` validates on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.readers.base import Reader, Record, clean_expression, register_reader
from data_prep.samples import DatasetRootError, MaskRef, Sample, VideoRef

SPLITS = ("train", "valid")


@register_reader("ytvos")
class YTVOSReader(Reader):
    title = "Ref-YouTube-VOS"
    expected = (("meta_expressions", "meta_expressions/<split>/meta_expressions.json"),)

    def check_root(self) -> None:
        super().check_root()
        splits = self.splits()
        if not splits:
            raise DatasetRootError(
                f"Ref-YouTube-VOS root {self.root}: found neither "
                "meta_expressions/train/meta_expressions.json nor meta_expressions/valid/meta_expressions.json"
            )
        problems = [
            f"{s}/JPEGImages" for s in splits if not (self.root / s / "JPEGImages").is_dir()
        ]
        if "train" in splits and not (self.root / "train/Annotations").is_dir():
            problems.append("train/Annotations")
        if "valid" in splits and not self._meta_path("test").is_file():
            problems.append(
                "meta_expressions/test/meta_expressions.json (needed for valid = valid - test)"
            )
        if problems:
            raise DatasetRootError(
                f"Ref-YouTube-VOS root {self.root} is missing: {', '.join(problems)}. "
                "Point --root at the folder holding train/, valid/ and meta_expressions/."
            )

    def _meta_path(self, split: str) -> Path:
        return self.root / "meta_expressions" / split / "meta_expressions.json"

    def splits(self) -> list[str]:
        return [s for s in SPLITS if self._meta_path(s).is_file()]

    def _load(self, split: str) -> dict[str, Any]:
        path = self._meta_path(split)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return dict(data["videos"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetRootError(
                f"{path} is not a meta_expressions file ({exc}); re-download it"
            ) from exc

    def records(self) -> Iterator[Record]:
        test_ids = set(self._load("test")) if "valid" in self.splits() else set()
        for split in self.splits():
            videos = self._load(split)
            for vid in sorted(videos):
                if split == "valid" and vid in test_ids:
                    continue
                yield from self._video(split, vid, videos[vid])

    def _video(self, split: str, vid: str, entry: dict[str, Any]) -> Iterator[Record]:
        meta = self._meta_path(split)
        frame_names = [str(f) for f in entry.get("frames", [])]
        frame_dir = self.root / split / "JPEGImages" / vid
        files = [frame_dir / f"{f}.jpg" for f in frame_names]
        absent = [p for p in files if not p.is_file()]
        if not files or absent:
            what = f"frame {absent[0]} is missing" if absent else "no frames are listed"
            yield self.reject(
                f"{meta}:{vid}",
                f"video {vid} is listed in {meta} but {what}; restore the JPEG frames of {frame_dir}",
            )
            return
        video = VideoRef("frames", str(frame_dir), tuple(str(p) for p in files))
        has_gt = split == "train"
        usable: list[int] = []
        for t, name in enumerate(frame_names):
            png = self.root / split / "Annotations" / vid / f"{name}.png"
            if has_gt and not png.is_file():
                yield self.reject(
                    png, f"mask {png} is missing; restore it (frame {name} of {vid} skipped)"
                )
                continue
            usable.append(t)
        exps = entry.get("expressions", {})
        for exp_id in sorted(exps, key=lambda k: (len(k), k)):
            e = exps[exp_id]
            text = clean_expression(e.get("exp")) if isinstance(e.get("exp"), str) else None
            if text is None:
                yield self.reject(
                    f"{meta}:{vid}:{exp_id}",
                    f"expression {exp_id} of video {vid} in {meta} is empty; write it or remove it",
                )
                continue
            obj = str(e.get("obj_id", ""))
            for t in usable:
                name = frame_names[t]
                mask = (
                    MaskRef(
                        "palette_png",
                        str(self.root / split / "Annotations" / vid / f"{name}.png"),
                        obj,
                    )
                    if has_gt
                    else None
                )
                yield Sample(
                    dataset=self.dataset,
                    split=split,
                    video_id=vid,
                    target_frame=t,
                    object_id=obj,
                    expression=text,
                    expression_id=str(exp_id),
                    video=video,
                    mask=mask,
                    meta={"frame_name": name, "exp_id": str(exp_id)},
                )
