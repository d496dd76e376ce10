"""Ref-YouTube-VOS submission writer, layout validator and zipper."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipelines.eval.submission import (
    SubmissionError,
    SubmissionWriter,
    expected_from_meta_expressions,
    validate_submission,
    zip_submission,
)

EXPECTED = {
    "vid_a": {"0": ["00000", "00005", "00010"], "1": ["00000", "00005", "00010"]},
    "vid_b": {"0": ["00003", "00008"]},
}
SIZES = {"vid_a": (24, 32), "vid_b": (20, 18)}


def _write_all(root, expected=EXPECTED, sizes=SIZES) -> SubmissionWriter:
    writer = SubmissionWriter(root)
    rng = np.random.default_rng(0)
    for vid, exps in expected.items():
        for exp, frames in exps.items():
            for frame in frames:
                writer.add(vid, exp, f"{frame}.jpg", rng.random(sizes[vid]) > 0.5)
    return writer


def test_writer_layout_validates_and_zips(tmp_path):
    root = tmp_path / "sub"
    writer = _write_all(root)
    assert writer.expected == EXPECTED
    assert writer.sizes == SIZES
    png = root / "Annotations" / "vid_a" / "1" / "00005.png"
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (32, 24)
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
    validate_submission(root, EXPECTED, sizes=SIZES)
    out = zip_submission(root, tmp_path / "submission.zip", EXPECTED, sizes=SIZES)
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
    assert len(names) == 8
    assert names[0] == "Annotations/vid_a/0/00000.png"
    assert all(n.startswith("Annotations/") for n in names)


def test_expected_from_meta_expressions(tmp_path):
    meta = {
        "videos": {
            "vid_a": {
                "expressions": {"0": {"exp": "a cat", "obj_id": "1"}, "1": {"exp": "a dog"}},
                "frames": ["00000", "00005", "00010"],
            },
            "vid_b": {"expressions": {"0": {"exp": "a car"}}, "frames": ["00003", "00008"]},
            "vid_test": {"expressions": {"0": {"exp": "x"}}, "frames": ["00000"]},
        }
    }
    path = tmp_path / "meta_expressions.json"
    path.write_text(json.dumps(meta))
    assert expected_from_meta_expressions(path, videos=["vid_a", "vid_b"]) == EXPECTED
    assert set(expected_from_meta_expressions(path)) == {"vid_a", "vid_b", "vid_test"}


def _problems(root, **kw) -> str:
    with pytest.raises(SubmissionError) as info:
        validate_submission(root, EXPECTED, sizes=SIZES, **kw)
    return str(info.value)


def test_missing_frame_and_expression_rejected(tmp_path):
    root = tmp_path / "sub"
    _write_all(root)
    (root / "Annotations" / "vid_a" / "0" / "00005.png").unlink()
    for p in (root / "Annotations" / "vid_b" / "0").iterdir():
        p.unlink()
    (root / "Annotations" / "vid_b" / "0").rmdir()
    msg = _problems(root)
    assert "2 problem(s)" in msg
    assert "vid_a/0: 1 listed frame(s) missing, e.g. 00005.png" in msg
    assert "vid_b/0: missing expression folder" in msg
    with pytest.raises(SubmissionError):
        zip_submission(root, tmp_path / "bad.zip", EXPECTED, sizes=SIZES)
    assert not (tmp_path / "bad.zip").exists()


def test_wrong_values_size_mode_and_extras_rejected(tmp_path):
    root = tmp_path / "sub"
    _write_all(root)
    ann = root / "Annotations"
    Image.fromarray(np.ones((24, 32), np.uint8)).save(ann / "vid_a" / "0" / "00000.png")  # 0/1
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ann / "vid_a" / "0" / "00010.png")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(ann / "vid_a" / "1" / "00000.png")
    (ann / "vid_a" / "1" / "00001.png").write_bytes(b"not a png")
    (ann / "vid_zzz").mkdir()
    (ann / "vid_b" / "7").mkdir()
    (root / "README.txt").write_text("x")
    msg = _problems(root)
    assert "00000.png: holds values [1], expected only 0 and 255" in msg
    assert "00010.png: size 10x10, expected the original 24x32" in msg
    assert "mode 'RGB', expected a single-channel" in msg
    assert "00001.png: unexpected file (not a listed frame)" in msg
    assert "vid_zzz: video not in the expected set" in msg
    assert "vid_b/7: expression id not listed for video vid_b" in msg
    assert "README.txt: unexpected entry beside Annotations/" in msg


def test_inconsistent_sizes_within_video_rejected_without_sizes(tmp_path):
    root = tmp_path / "sub"
    _write_all(root)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(
        root / "Annotations" / "vid_b" / "0" / "00008.png"
    )
    with pytest.raises(SubmissionError, match="00008.png: size 5x5"):
        validate_submission(root, EXPECTED)


def test_missing_annotations_folder(tmp_path):
    with pytest.raises(SubmissionError, match="Annotations is missing"):
        validate_submission(tmp_path, EXPECTED)


def test_writer_refuses_a_second_mask_for_the_same_frame(tmp_path):
    writer = SubmissionWriter(tmp_path)
    writer.add("v", "0", "00001", np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="two masks for v/0/00001.png"):
        writer.add("v", "0", "00001.jpg", np.zeros((4, 4), bool))
