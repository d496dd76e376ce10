"""A custom source: a folder of videos and a CSV of (video, expression[, masks][, split]).

Layout::

    <root>/expressions.csv     header: video,expression[,masks][,split]
    <root>/<video>             a video file (mp4, avi, ...) or a folder of frame images
    <root>/<masks>             optional folder of per-frame PNG masks (non-zero = object)

Paths in the CSV are relative to the root. Mask files are matched to frames by name: for a
frame folder the PNG has the frame's stem; for a video file the stem is the 0-based frame
index (``00000.png``). With masks, the target frames are the frames that have a mask;
without, every frame of the video is a target frame (no ground truth). ``split`` defaults
to ``test``. Each CSV row is one expression: ``expression_id`` is its line number and
``object_id`` the mask folder (rows sharing a mask folder refer to the same object).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from data_prep.decode import DecodeError, open_video
from data_prep.readers.base import Reader, Record, clean_expression, register_reader
from data_prep.samples import DatasetRootError, MaskRef, Sample, VideoRef

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp"}


@register_reader("custom")
class CustomReader(Reader):
    title = "custom source"
    expected = (("expressions.csv", "header video,expression[,masks][,split]"),)

    def records(self) -> Iterator[Record]:
        csv_path = self.root / "expressions.csv"
        good: list[str] = []
        line_of: list[int] = []  # original line number of every decodable line
        for n, raw in enumerate(csv_path.read_bytes().splitlines(), start=1):
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError:
                yield self.reject(
                    f"{csv_path}:{n}",
                    f"line {n} of {csv_path} is not valid UTF-8; re-save the file as UTF-8",
                )
                continue
            good.append(text)
            line_of.append(n)
        reader = csv.DictReader(good)
        fields = set(reader.fieldnames or [])
        if not {"video", "expression"} <= fields:
            raise DatasetRootError(
                f"{csv_path} must have a header with columns video,expression[,masks][,split]; "
                f"found {sorted(fields)}"
            )
        frame_counts: dict[str, int] = {}
        for row in reader:
            ln = line_of[reader.line_num - 1]
            item = f"{csv_path}:{ln}"
            expr = clean_expression(row.get("expression"))
            if expr is None:
                yield self.reject(
                    item, f"line {ln} of {csv_path} has an empty expression; write it"
                )
                continue
            rel = (row.get("video") or "").strip()
            path = self.root / rel
            if not rel or not path.exists():
                yield self.reject(
                    item, f"line {ln} of {csv_path} points at absent video {path}; fix the path"
                )
                continue
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXT)
                video = VideoRef("frames", str(path), tuple(str(p) for p in files))
                names = [p.stem for p in files]
            else:
                video = VideoRef("mp4", str(path))
                if rel not in frame_counts:
                    try:
                        frame_counts[rel] = open_video(video).num_frames
                    except DecodeError as exc:
                        yield self.reject(item, f"{exc}; re-encode or replace the video")
                        continue
                names = [f"{i:05d}" for i in range(frame_counts[rel])]
            if not names:
                yield self.reject(item, f"video {path} has no frames; add frames or fix the path")
                continue
            masks_rel = (row.get("masks") or "").strip()
            split = (row.get("split") or "").strip() or "test"
            if masks_rel:
                mdir = self.root / masks_rel
                if not mdir.is_dir():
                    yield self.reject(
                        item, f"mask folder {mdir} of line {ln} does not exist; fix the path"
                    )
                    continue
                by_stem = {p.stem: p for p in mdir.glob("*.png")}
                targets = [(t, by_stem[n]) for t, n in enumerate(names) if n in by_stem]
                if not targets:
                    yield self.reject(
                        item,
                        f"no PNG in {mdir} matches a frame of {path}; name masks after the frames",
                    )
                    continue
                object_id = masks_rel
            else:
                targets = [(t, None) for t in range(len(names))]
                object_id = f"line{ln}"
            for t, png in targets:
                yield Sample(
                    dataset=self.dataset,
                    split=split,
                    video_id=rel,
                    target_frame=t,
                    object_id=object_id,
                    expression=expr,
                    expression_id=str(ln),
                    video=video,
                    mask=MaskRef("binary_png", str(png), object_id) if png is not None else None,
                    meta={"frame_name": names[t]},
                )
