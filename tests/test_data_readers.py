"""Readers on tiny fake copies of every benchmark in its native layout (no Ray, no decoding)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_fakes import make_a2d, make_custom, make_davis, make_jhmdb, make_ytvos

from data_prep.masks import load_mask
from data_prep.readers import available_readers, get_reader
from data_prep.samples import DatasetRootError, Sample


def per_split(samples: list[Sample]) -> dict[str, int]:
    return dict(Counter(s.split for s in samples))


def test_registry_lists_every_benchmark():
    assert {"a2d", "jhmdb", "ytvos", "davis", "custom", "refer_shapes"} <= set(available_readers())
    with pytest.raises(ValueError, match="unknown dataset"):
        get_reader("kinetics", ".")


def test_a2d_quirks_and_counts(tmp_path: Path):
    truth = make_a2d(tmp_path)
    samples, rejects = get_reader("a2d", tmp_path).read()
    assert per_split(samples) == truth["samples"]
    assert len(rejects) == truth["reader_rejects"]
    reasons = " | ".join(r.reason for r in rejects)
    for needle in (
        "not valid UTF-8",
        "empty expression",
        "'1 (copy)'",
        "a2d_missed_videos.txt",
        "absent video",
    ):
        assert needle in reasons
    assert any("v7" in r.item and r.item.endswith(".h5") for r in rejects)
    v1 = sorted(
        (s.target_frame, s.object_id, s.expression_id, s.expression)
        for s in samples
        if s.video_id == "v1"
    )
    # 1-based h5 names -> 0-based target frames; instance 0 is only in frame 3
    assert v1 == [
        (2, "0", "0", "the man in red"),
        (2, "1", "0", "the dog, running"),
        (2, "1", "1", "a brown dog"),
        (6, "1", "0", "the dog, running"),
        (6, "1", "1", "a brown dog"),
    ]
    for s in samples:
        if s.video_id in ("v1", "v2"):
            want = truth["masks"][(s.video_id, s.target_frame + 1)][int(s.object_id)]
            got = load_mask(s.mask)
            assert got.shape == want.shape  # transposed reMask, single and multi layouts
            assert np.array_equal(got, want)
    assert {s.split for s in samples if s.video_id == "v2"} == {"test"}


def test_refer_shapes_is_read_by_the_a2d_reader(tmp_path: Path):
    make_a2d(tmp_path)
    samples, _ = get_reader("refer_shapes", tmp_path).read()
    assert samples and {s.dataset for s in samples} == {"refer_shapes"}


def test_jhmdb_three_frames_with_masks(tmp_path: Path):
    truth = make_jhmdb(tmp_path)
    samples, rejects = get_reader("jhmdb", tmp_path).read()
    assert per_split(samples) == truth["samples"]
    assert len(rejects) == truth["rejects"]
    # 7 images but 5 masks: frames sampled among the 5 that have both
    assert sorted({s.target_frame for s in samples}) == truth["frames"]
    for s in samples:
        assert np.array_equal(load_mask(s.mask), truth["part_mask"][:, :, s.target_frame])
        assert len(s.video.frames) == 7
    assert any("puppet_mask.mat" in r.reason for r in rejects)
    assert any("absent video v_absent" in r.reason for r in rejects)


def test_jhmdb_mttr_frame_list(tmp_path: Path):
    """``jhmdb_mttr``: the frames of MTTR's published list (1-based names -> 0-based)."""
    import json

    truth = make_jhmdb(tmp_path)
    with pytest.raises(DatasetRootError, match="jhmdb_sentences_samples_metadata.json"):
        get_reader("jhmdb_mttr", tmp_path)
    walk = "./jhmdb_sentences/Rename_Images/walk/v_walk_1/{:05d}.png"
    entries = [
        ["v_walk_1", walk.format(f), "puppet_mask.mat", 7, "man walking to the left"]
        for f in (5, 2, 3)
    ]
    listing = tmp_path / "jhmdb_sentences_samples_metadata.json"
    listing.write_text(json.dumps(entries))
    samples, rejects = get_reader("jhmdb_mttr", tmp_path).read()
    assert sorted({s.target_frame for s in samples}) == [1, 2, 4]
    assert len(samples) == 6 and {s.dataset for s in samples} == {"jhmdb_mttr"}  # 2 sentences
    for s in samples:
        assert np.array_equal(load_mask(s.mask), truth["part_mask"][:, :, s.target_frame])
    assert len(rejects) == truth["rejects"]
    # a listed frame without a mask (frame 7 of 5 masked) rejects the video with the reason
    listing.write_text(json.dumps([*entries, ["v_walk_1", walk.format(7), "m", 7, "x"]]))
    samples, rejects = get_reader("jhmdb_mttr", tmp_path).read()
    assert not samples and any("frame(s) [7] of video v_walk_1" in r.reason for r in rejects)
    listing.write_text("{not json")
    with pytest.raises(DatasetRootError, match="not MTTR's frame list"):
        get_reader("jhmdb_mttr", tmp_path)


def test_ytvos_valid_minus_test(tmp_path: Path):
    truth = make_ytvos(tmp_path)
    samples, rejects = get_reader("ytvos", tmp_path).read()
    assert per_split(samples) == truth["samples"]
    assert len(rejects) == truth["rejects"] and "00005.png" in rejects[0].item
    assert "vT" not in {s.video_id for s in samples}
    assert all(s.mask is None for s in samples if s.split == "valid")
    s = next(s for s in samples if s.video_id == "vA" and s.object_id == "2")
    assert np.array_equal(load_mask(s.mask), (truth["labels"] == 2).astype(np.uint8))
    assert s.meta["frame_name"] in ("00000", "00005", "00010")


def test_davis_four_sets_latin1(tmp_path: Path):
    truth = make_davis(tmp_path)
    samples, rejects = get_reader("davis", tmp_path).read()
    assert per_split(samples) == truth["samples"]
    assert len(rejects) == truth["rejects"] and "ghost" in rejects[0].reason
    texts = {s.expression for s in samples}
    assert "a café bike" in texts  # annot2 decoded as latin-1
    sets = {s.meta["expression_set"] for s in samples}
    assert sets == {"annot1", "annot1_full_video", "annot2", "annot2_full_video"}
    ids = Counter((s.video_id, s.object_id, s.expression_id, s.target_frame) for s in samples)
    assert max(ids.values()) == 1


def test_davis_misspelt_video_names_are_corrected(tmp_path: Path):
    """The expression files spell motorbike as 'motor-bike' (and clasic-car, dog-scale):
    those lines are read under the DAVIS name instead of being rejected."""
    import shutil

    make_davis(tmp_path)
    data = tmp_path / "DAVIS"
    for sub in ("JPEGImages/480p", "Annotations_unsupervised/480p"):
        shutil.copytree(data / sub / "cat", data / sub / "motorbike")
    with open(data / "ImageSets/2017/val.txt", "a") as f:
        f.write("motorbike\n")
    with open(tmp_path / "davis_text_annotations/Davis17_annot1.txt", "a") as f:
        f.write('motor-bike 1 "a red motorbike"\n')
    samples, rejects = get_reader("davis", tmp_path).read()
    bike = [s for s in samples if s.video_id == "motorbike"]
    assert {s.expression for s in bike} == {"a red motorbike"} and len(bike) == 2  # 2 frames
    assert {s.split for s in bike} == {"valid"}
    assert not any("motor" in r.reason for r in rejects)


def test_custom_csv(tmp_path: Path):
    truth = make_custom(tmp_path)
    samples, rejects = get_reader("custom", tmp_path).read()
    assert per_split(samples) == truth["samples"]
    assert len(rejects) == truth["rejects"]
    seq = [s for s in samples if s.split == "train"]
    assert [s.target_frame for s in seq] == [1, 3] and {s.expression_id for s in seq} == {"3"}
    assert any("line 6" in r.reason and "UTF-8" in r.reason for r in rejects)
    assert all(s.mask is None for s in samples if s.split == "test")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a2d", "Release/videoset.csv"),
        ("jhmdb", "puppet_mask"),
        ("ytvos", "meta_expressions"),
        ("davis", "Annotations_unsupervised/480p"),
        ("custom", "expressions.csv"),
    ],
)
def test_wrong_root_is_one_clear_error(tmp_path: Path, name: str, expected: str):
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DatasetRootError, match="expected|missing") as err:
        get_reader(name, tmp_path)
    assert expected in str(err.value) and str(tmp_path) in str(err.value)
