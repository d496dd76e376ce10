"""Ref-DAVIS17: DAVIS-2017 480p frames and unsupervised annotations + referring expressions.

Layout (``--root`` may be this folder or its parent holding ``DAVIS/``)::

    JPEGImages/480p/<vid>/<%05d>.jpg
    Annotations_unsupervised/480p/<vid>/<%05d>.png     palette PNG, pixel = object id
    ImageSets/2017/train.txt, val.txt                  60 / 30 video ids
    davis_text_annotations/Davis17_annot{1,2}[_full_video].txt   video obj_id "expression"

There are 4 expression sets per object (two annotators x first-frame / full-video); the
set name is part of ``expression_id`` and ``meta["expression_set"]`` because scores are
computed per set and then averaged. ``annot2`` files are latin-1; ``annot1`` files UTF-8.
Every frame of a video is a target frame (J&F is computed over all frames).

Three video names are misspelt in the expression files (``clasic-car``, ``dog-scale``,
``motor-bike`` for DAVIS's ``classic-car``, ``dogs-scale``, ``motorbike``); they are read under
the DAVIS name (:data:`NAME_FIXES`, the same corrections as ReferFormer's
``tools/data/convert_davis_to_ytvos.py``) unless a video of the misspelt name exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from data_prep.readers.base import (
    Reader,
    Record,
    clean_expression,
    decode_text_lines,
    register_reader,
)
from data_prep.samples import DatasetRootError, MaskRef, Sample, VideoRef

EXPRESSION_SETS: dict[str, str] = {
    "annot1": "utf-8",
    "annot1_full_video": "utf-8",
    "annot2": "latin-1",
    "annot2_full_video": "latin-1",
}
SPLITS = {"train": "train", "val": "valid"}
#: misspelt video names of the expression files -> the DAVIS-2017 video names
NAME_FIXES: dict[str, str] = {
    "clasic-car": "classic-car",
    "dog-scale": "dogs-scale",
    "motor-bike": "motorbike",
}
_LINE = re.compile(r"^(\S+)\s+(\d+)\s+(.*)$")


@register_reader("davis")
class DAVISReader(Reader):
    title = "Ref-DAVIS17"
    expected = (
        ("JPEGImages/480p", "frames <vid>/<%05d>.jpg"),
        ("Annotations_unsupervised/480p", "palette masks <vid>/<%05d>.png"),
        ("ImageSets/2017/train.txt", "train video ids"),
        ("ImageSets/2017/val.txt", "val video ids"),
        ("davis_text_annotations", "Davis17_annot{1,2}[_full_video].txt"),
    )

    def __init__(self, root: str | Path, dataset: str) -> None:
        r = Path(root).resolve()
        if not (r / "JPEGImages").exists() and (r / "DAVIS" / "JPEGImages").exists():
            self.data_root = r / "DAVIS"
        else:
            self.data_root = r
        super().__init__(root, dataset)

    def check_root(self) -> None:
        if self.data_root != self.root:  # frames in DAVIS/, text annotations beside it
            missing = [p for p, _ in self.expected[:4] if not (self.data_root / p).exists()]
            if not (self.root / "davis_text_annotations").exists():
                missing.append("davis_text_annotations")
            if missing:
                raise DatasetRootError(
                    f"Ref-DAVIS17 root {self.root} is missing {', '.join(missing)}; expected "
                    + "; ".join(f"{p} ({d})" for p, d in self.expected)
                )
        else:
            super().check_root()
        text_dir = self.root / "davis_text_annotations"
        absent = [
            f"Davis17_{s}.txt"
            for s in EXPRESSION_SETS
            if not (text_dir / f"Davis17_{s}.txt").is_file()
        ]
        if absent:
            raise DatasetRootError(
                f"Ref-DAVIS17 root {self.root}: {text_dir} lacks {', '.join(absent)} "
                "(the 4 expression sets); copy them there"
            )

    def records(self) -> Iterator[Record]:
        split_of: dict[str, str] = {}
        for name, split in SPLITS.items():
            path = self.data_root / "ImageSets/2017" / f"{name}.txt"
            for vid in path.read_text(errors="replace").split():
                split_of[vid] = split
        # (vid, obj) -> list of (set, k, text), sets in fixed order
        exprs: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
        for set_name, enc in EXPRESSION_SETS.items():
            path = self.root / "davis_text_annotations" / f"Davis17_{set_name}.txt"
            counter: dict[tuple[str, str], int] = {}
            for ln, text, _ in decode_text_lines(path, encoding=enc):
                m = _LINE.match(text) if text is not None else None
                if text is None:
                    yield self.reject(
                        f"{path}:{ln}",
                        f"line {ln} of {path} is not valid {enc}; re-save it as {enc}",
                    )
                    continue
                if m is None:
                    yield self.reject(
                        f"{path}:{ln}",
                        f"line {ln} of {path} is not 'video obj_id \"expression\"'; fix it",
                    )
                    continue
                expr = clean_expression(m.group(3))
                if expr is None:
                    yield self.reject(
                        f"{path}:{ln}", f"line {ln} of {path} has an empty expression; write it"
                    )
                    continue
                name = m.group(1)
                if name in NAME_FIXES and name not in split_of:
                    name = NAME_FIXES[name]
                key = (name, str(int(m.group(2))))
                k = counter.get(key, 0)
                counter[key] = k + 1
                exprs.setdefault(key, []).append((set_name, k, expr))

        frames_cache: dict[str, list[Path]] = {}
        for vid, obj in sorted(exprs):
            split = split_of.get(vid)
            if split is None:
                yield self.reject(
                    f"davis_text_annotations:{vid}",
                    f"video {vid} (object {obj}) is in neither ImageSets/2017/train.txt nor val.txt; "
                    "add it or drop its expressions",
                )
                continue
            if vid not in frames_cache:
                d = self.data_root / "JPEGImages/480p" / vid
                frames_cache[vid] = sorted(d.glob("*.jpg")) if d.is_dir() else []
            frames = frames_cache[vid]
            if not frames:
                yield self.reject(
                    self.data_root / "JPEGImages/480p" / vid,
                    f"expressions point at absent video {vid}: no frames in "
                    f"{self.data_root / 'JPEGImages/480p' / vid}; restore them",
                )
                continue
            video = VideoRef("frames", str(frames[0].parent), tuple(str(p) for p in frames))
            ann_dir = self.data_root / "Annotations_unsupervised/480p" / vid
            for t, f in enumerate(frames):
                png = ann_dir / f"{f.stem}.png"
                if not png.is_file():
                    yield self.reject(
                        png, f"mask {png} is missing; restore it (frame skipped for object {obj})"
                    )
                    continue
                for set_name, k, expr in exprs[(vid, obj)]:
                    yield Sample(
                        dataset=self.dataset,
                        split=split,
                        video_id=vid,
                        target_frame=t,
                        object_id=obj,
                        expression=expr,
                        expression_id=f"{set_name}-{k}",
                        video=video,
                        mask=MaskRef("palette_png", str(png), object_id=obj),
                        meta={"expression_set": set_name, "frame_name": f.stem},
                    )
