"""J-HMDB Sentences (test only: models trained on A2D are evaluated on it).

Layout::

    Rename_Images/<action>/<vid>/<%05d>.png            frames, 1-based names
    puppet_mask/<action>/<vid>/puppet_mask.mat        key part_mask, (H, W, T)
    jhmdb_annotation.txt                              header video_id,query

Some videos have fewer masks than frames (trailing frames without masks): only frames with
both an image and a mask are eligible. From those, 3 target frames are sampled per video:
first, middle and last (``round(linspace(0, n - 1, 3))``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep.masks import MaskError, load_part_mask
from data_prep.readers.base import (
    Reader,
    Record,
    clean_expression,
    decode_text_lines,
    expression_problem,
    register_reader,
)
from data_prep.samples import MaskRef, Sample, VideoRef

FRAMES_PER_VIDEO = 3
OBJECT_ID = "1"


def sampled_frames(n: int, k: int = FRAMES_PER_VIDEO) -> list[int]:
    """``k`` evenly spaced 0-based frame indices in ``[0, n)``, first and last included."""
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)}) if n > 0 else []


@register_reader("jhmdb")
class JHMDBReader(Reader):
    title = "J-HMDB Sentences"
    expected = (
        ("Rename_Images", "frames: <action>/<video>/<%05d>.png"),
        ("puppet_mask", "masks: <action>/<video>/puppet_mask.mat"),
        ("jhmdb_annotation.txt", "sentences: video_id,query"),
    )

    def records(self) -> Iterator[Record]:
        ann = self.root / "jhmdb_annotation.txt"
        rows: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for ln, text, raw in decode_text_lines(ann):
            if ln == 1 and raw.lower().startswith(b"video_id"):
                continue
            parts = (text or raw.decode("utf-8", errors="replace")).split(",", 1)
            if len(parts) < 2:
                yield self.reject(
                    f"{ann}:{ln}", f"line {ln} of {ann} is not 'video_id,query'; fix it"
                )
                continue
            expr = clean_expression(parts[1] if text is not None else None)
            if expr is None:
                yield self.reject(f"{ann}:{ln}", expression_problem(text, ann, ln))
                continue
            rows[parts[0].strip()].append((ln, expr))

        actions: dict[str, str] = {}
        for d in sorted((self.root / "Rename_Images").glob("*/*")):
            if d.is_dir():
                actions.setdefault(d.name, d.parent.name)

        for vid in sorted(rows):
            items = [f"{ann}:{ln}" for ln, _ in rows[vid]]
            action = actions.get(vid)
            if action is None:
                for it in items:
                    yield self.reject(
                        it,
                        f"annotation row points at absent video {vid}: no folder "
                        f"Rename_Images/<action>/{vid} under {self.root}; restore the frames",
                    )
                continue
            frame_dir = self.root / "Rename_Images" / action / vid
            frames = sorted(p for p in frame_dir.glob("*.png") if p.stem.isdigit())
            mat = self.root / "puppet_mask" / action / vid / "puppet_mask.mat"
            try:
                pm = load_part_mask(str(mat))
            except MaskError as exc:
                for it in items:
                    yield self.reject(it, f"{exc}; restore {mat}")
                continue
            n = min(len(frames), pm.shape[2] if pm.ndim == 3 else 0)
            if n == 0:
                for it in items:
                    yield self.reject(
                        it,
                        f"video {vid} has no frame with both an image in {frame_dir} and a mask in {mat}",
                    )
                continue
            video = VideoRef("frames", str(frame_dir), tuple(str(p) for p in frames))
            for k, (_, expr) in enumerate(rows[vid]):
                for t in sampled_frames(n):
                    yield Sample(
                        dataset=self.dataset,
                        split="test",
                        video_id=vid,
                        target_frame=t,
                        object_id=OBJECT_ID,
                        expression=expr,
                        expression_id=str(k),
                        video=video,
                        mask=MaskRef("jhmdb_mat", str(mat), object_id=OBJECT_ID, frame=t),
                        meta={"action": action, "frame_name": Path(frames[t]).stem},
                    )
