"""A2D Sentences (and the synthetic refer-shapes benchmark, written in the same layout).

Layout::

    Release/videoset.csv                      vid,label,start,end,height,width,frames,annotated,subset
    Release/clips320H/<vid>.mp4
    text_annotations/a2d_annotation.txt       header video_id,instance_id,query
    text_annotations/a2d_missed_videos.txt    optional, one video id per line (excluded)
    text_annotations/a2d_annotation_with_instances/<vid>/<frame:05d>.h5   1-based frame numbers

A sample is (sentence, video, annotated frame, instance) when the instance is listed in that
frame's ``instance`` dataset. Instance ids are kept verbatim: the known ``1 (copy)`` row
matches no frame and is reported as a reject (as the reference implementations drop it).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from data_prep.masks import MaskError, a2d_select, encode_png, read_a2d
from data_prep.readers.base import (
    IndexUnit,
    Reader,
    Record,
    clean_expression,
    decode_text_lines,
    expression_problem,
    register_reader,
)
from data_prep.samples import DatasetRootError, MaskRef, Reject, Sample, VideoRef

SUBSETS = {"0": "train", "1": "test"}


@register_reader("refer_shapes")
@register_reader("a2d")
class A2DReader(Reader):
    title = "A2D Sentences"
    expected = (
        ("Release/videoset.csv", "video list with the train/test subset column"),
        ("Release/clips320H", "folder of <video_id>.mp4 clips"),
        ("text_annotations/a2d_annotation.txt", "sentences: video_id,instance_id,query"),
        ("text_annotations/a2d_annotation_with_instances", "per-frame <frame:05d>.h5 masks"),
    )

    def _videoset(self) -> dict[str, dict[str, str]]:
        path = self.root / "Release/videoset.csv"
        out: dict[str, dict[str, str]] = {}
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.reader(f):
                if not row or not row[0].strip():
                    continue
                if len(row) < 9:
                    raise DatasetRootError(
                        f"{path}: row {row!r} has {len(row)} columns, expected 9 "
                        "(vid,label,start,end,height,width,frames,annotated frames,subset)"
                    )
                out[row[0].strip()] = {"label": row[1].strip(), "subset": row[8].strip()}
        return out

    def _missed(self) -> set[str]:
        path = self.root / "text_annotations/a2d_missed_videos.txt"
        if not path.exists():
            return set()
        return {ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()}

    def units(self) -> tuple[list[Reject], list[IndexUnit]]:
        """Driver pass (text files and folder listings only): rejects + one unit per video."""
        head: list[Reject] = []
        videoset = self._videoset()
        missed = self._missed()
        ann_path = self.root / "text_annotations/a2d_annotation.txt"
        rows: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for line_no, text, raw in decode_text_lines(ann_path):
            if line_no == 1 and raw.lower().startswith(b"video_id"):
                continue
            parts = (text or raw.decode("utf-8", errors="replace")).split(",", 2)
            if len(parts) < 3:
                head.append(
                    self.reject(
                        f"{ann_path}:{line_no}",
                        f"line {line_no} of {ann_path} is not 'video_id,instance_id,query'; fix or delete it",
                    )
                )
                continue
            vid, inst = parts[0].strip(), parts[1].strip()
            expr = clean_expression(parts[2] if text is not None else None)
            if expr is None:
                head.append(
                    self.reject(
                        f"{ann_path}:{line_no}", expression_problem(text, ann_path, line_no)
                    )
                )
                continue
            rows[vid].append((line_no, inst, expr))

        units: list[IndexUnit] = []
        mask_root = self.root / "text_annotations/a2d_annotation_with_instances"
        for vid in sorted(rows):
            vrows = rows[vid]

            def bad(reason: str, vrows: list[tuple[int, str, str]] = vrows) -> None:
                head.extend(self.reject(f"{ann_path}:{ln}", reason) for ln, _, _ in vrows)

            if vid in missed:
                bad(f"video {vid} is listed in a2d_missed_videos.txt (excluded by the benchmark)")
                continue
            info = videoset.get(vid)
            if info is None or info["subset"] not in SUBSETS:
                why = "is not in" if info is None else f"has subset {info['subset']!r} (not 0/1) in"
                bad(f"video {vid} {why} Release/videoset.csv; add it there or drop the row")
                continue
            video = self.root / "Release/clips320H" / f"{vid}.mp4"
            if not video.is_file():
                bad(
                    f"annotation row points at absent video {video}; restore the clip or delete the row"
                )
                continue
            frames = sorted(_h5_frames(mask_root / vid))
            if not frames:
                bad(f"no per-frame masks in {mask_root / vid}; restore the .h5 files of this video")
                continue
            units.append(
                IndexUnit(
                    key=vid,
                    split=SUBSETS[info["subset"]],
                    weight=len(frames),
                    payload={
                        "label": info["label"],
                        "rows": [list(r) for r in vrows],
                        # sizes make the unit (hence the shard plan) change when its files do
                        "sizes": [video.stat().st_size] + [h5.stat().st_size for _, h5 in frames],
                    },
                )
            )
        return head, units

    def unit_records(self, unit: IndexUnit) -> Iterator[Record]:
        """Samples of one video: reads its per-frame .h5 files (instance lists and masks)."""
        vid = unit.key
        ann_path = self.root / "text_annotations/a2d_annotation.txt"
        mask_root = self.root / "text_annotations/a2d_annotation_with_instances"
        video = self.root / "Release/clips320H" / f"{vid}.mp4"
        listed: list[tuple[int, Path, list[str], object]] = []
        for fnum, h5 in sorted(_h5_frames(mask_root / vid)):
            try:
                ids, re_mask = read_a2d(str(h5))
                listed.append((fnum, h5, ids, re_mask))
            except MaskError as exc:
                yield self.reject(h5, f"{exc}; restore this .h5 file (its frame is skipped)")
        pngs: dict[tuple[int, str], bytes | MaskError] = {}
        counter: dict[str, int] = defaultdict(int)
        for ln, inst, expr in unit.payload["rows"]:
            exp_id = str(counter[inst])
            counter[inst] += 1
            hits = [(fnum, h5, ids, rm) for fnum, h5, ids, rm in listed if inst in ids]
            if not hits:
                yield self.reject(
                    f"{ann_path}:{ln}",
                    f"instance {inst!r} of video {vid} is listed in no annotated frame under "
                    f"{mask_root / vid}; fix the instance id of this row",
                )
                continue
            for fnum, h5, ids, re_mask in hits:
                png = pngs.get((fnum, inst))
                if png is None:
                    try:  # the file is open anyway: encode the mask once, here
                        png = encode_png(a2d_select(str(h5), ids, re_mask, inst))  # type: ignore[arg-type]
                    except MaskError as exc:
                        png = exc
                    pngs[(fnum, inst)] = png
                if isinstance(png, MaskError):
                    yield self.reject(h5, f"{png}; fix or restore this .h5 file")
                    continue
                yield Sample(
                    dataset=self.dataset,
                    split=unit.split,
                    video_id=vid,
                    target_frame=fnum - 1,
                    object_id=inst,
                    expression=expr,
                    expression_id=exp_id,
                    video=VideoRef("mp4", str(video)),
                    mask=MaskRef("a2d_h5", str(h5), object_id=inst, png=png),
                    meta={"label": unit.payload["label"], "frame_name": h5.stem},
                )

    def records(self) -> Iterator[Record]:
        head, units = self.units()
        yield from head
        for unit in units:
            yield from self.unit_records(unit)


def _h5_frames(folder: Path) -> Iterator[tuple[int, Path]]:
    if not folder.is_dir():
        return
    for p in folder.glob("*.h5"):
        if p.stem.isdigit() and int(p.stem) >= 1:
            yield int(p.stem), p
