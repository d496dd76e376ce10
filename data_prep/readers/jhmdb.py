"""J-HMDB Sentences (test only: models trained on A2D are evaluated on it).

Layout::

    Rename_Images/<action>/<vid>/<%05d>.png            frames, 1-based names
    puppet_mask/<action>/<vid>/puppet_mask.mat        key part_mask, (H, W, T)
    jhmdb_annotation.txt                              header video_id,query

Some videos have fewer masks than frames (trailing frames without masks): only frames with
both an image and a mask are eligible. From those, 3 target frames per video:

* ``--dataset jhmdb``: first, middle and last (``round(linspace(0, n - 1, 3))``);
* ``--dataset jhmdb_mttr``: the common protocol of published work (MTTR, ReferFormer, ...): the
  3 frames per video that MTTR drew at random once and published as
  ``datasets/jhmdb_sentences/jhmdb_sentences_samples_metadata.json`` (github.com/mttr2021/MTTR);
  copy that file into the J-HMDB root. Its entries are ``[video_id, frame_path, mask_path,
  n_frames, query]``; the frame is the 1-based number in ``frame_path``'s name.
"""

from __future__ import annotations

import json
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
from data_prep.samples import DatasetRootError, MaskRef, Sample, VideoRef

FRAMES_PER_VIDEO = 3
OBJECT_ID = "1"
#: MTTR's published frame list (``jhmdb_mttr``), expected in the J-HMDB root
MTTR_FRAME_LIST = "jhmdb_sentences_samples_metadata.json"


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

    def target_frames(self, video_id: str, n: int) -> list[int] | str:
        """0-based target frames of a video with ``n`` usable frames (or why there are none)."""
        return sampled_frames(n)

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
            targets = self.target_frames(vid, n)
            if isinstance(targets, str):
                for it in items:
                    yield self.reject(it, targets)
                continue
            video = VideoRef("frames", str(frame_dir), tuple(str(p) for p in frames))
            for k, (_, expr) in enumerate(rows[vid]):
                for t in targets:
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


@register_reader("jhmdb_mttr")
class JHMDBMTTRReader(JHMDBReader):
    """J-HMDB Sentences with MTTR's published 3 frames per video (the common protocol)."""

    title = "J-HMDB Sentences (MTTR frame list)"
    expected = (*JHMDBReader.expected, (MTTR_FRAME_LIST, "MTTR's frame list (copy it here)"))

    def __init__(self, root: str | Path, dataset: str) -> None:
        super().__init__(root, dataset)
        path = self.root / MTTR_FRAME_LIST
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            frames: dict[str, set[int]] = defaultdict(set)
            for e in entries:
                frames[str(e[0])].add(int(Path(str(e[1])).stem) - 1)
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise DatasetRootError(
                f"{path} is not MTTR's frame list ({type(exc).__name__}: {exc}); copy "
                "datasets/jhmdb_sentences/jhmdb_sentences_samples_metadata.json of "
                "github.com/mttr2021/MTTR there unchanged"
            ) from None
        self.frame_list = {vid: sorted(ts) for vid, ts in frames.items()}

    def target_frames(self, video_id: str, n: int) -> list[int] | str:
        listed = self.frame_list.get(video_id)
        if not listed:
            return f"video {video_id} is not in {MTTR_FRAME_LIST}; use that file unchanged"
        beyond = [t + 1 for t in listed if not 0 <= t < n]
        if beyond:
            return (
                f"{MTTR_FRAME_LIST} lists frame(s) {beyond} of video {video_id}, which has "
                f"{n} frames with both an image and a mask; restore its frames and puppet_mask.mat"
            )
        return listed
