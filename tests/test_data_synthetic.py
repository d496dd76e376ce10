"""The refer-shapes generator: deterministic, A2D layout, and built to need motion/appearance."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_prep.decode import open_video
from data_prep.readers import get_reader
from data_prep.synthetic import SCENARIOS, _background, _objects, config_for, generate, render_video


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refer_shapes")
    generate(root, config_for("tiny", seed=3))
    return root


def test_deterministic_by_seed(tiny: Path, tmp_path: Path):
    generate(tmp_path / "again", config_for("tiny", seed=3))
    generate(tmp_path / "other", config_for("tiny", seed=4))
    assert digest_tree(tiny) == digest_tree(tmp_path / "again")
    assert digest_tree(tiny) != digest_tree(tmp_path / "other")


def test_read_by_a2d_reader_without_rejects(tiny: Path):
    cfg = config_for("tiny", seed=3)
    samples, rejects = get_reader("refer_shapes", tiny).read()
    assert rejects == []
    videos = {s.split: set() for s in samples}
    for s in samples:
        videos[s.split].add(s.video_id)
    assert len(videos["train"]) + len(videos["test"]) == cfg.num_videos
    assert len(videos["test"]) == round(cfg.num_videos * cfg.test_fraction)
    # first and last frames are annotated, so clips get clamped at both ends
    assert {0, cfg.num_frames - 1} <= {s.target_frame for s in samples}


def test_both_h5_layouts_and_decodable_video(tiny: Path):
    cfg = config_for("tiny", seed=3)
    ndims = Counter()
    for h5 in tiny.glob("text_annotations/a2d_annotation_with_instances/*/*.h5"):
        with h5py.File(h5) as f:
            ndims[f["reMask"].ndim] += 1
            assert f["reMask"].shape[-2:] == (cfg.width, cfg.height)  # transposed like A2D
    assert ndims[2] > 0 and ndims[3] > 0
    from data_prep.samples import VideoRef

    mp4 = sorted(tiny.glob("Release/clips320H/*.mp4"))[0]
    src = open_video(VideoRef("mp4", str(mp4)))
    assert src.num_frames == cfg.num_frames and src.size == (cfg.height, cfg.width)
    rng = np.random.default_rng([3, 0])
    objs = _objects(rng, SCENARIOS[0], cfg)
    frames, _ = render_video(objs, _background(rng, cfg), cfg)
    decoded = src.get(range(cfg.num_frames)).astype(np.int16)
    assert np.abs(decoded - frames).mean() < 6  # lossy codec, but the same pictures


def test_scenarios_need_motion_or_appearance(tiny: Path):
    info = json.loads((tiny / "refer_shapes.json").read_text())["videos"]
    texts = {}
    for line in (tiny / "text_annotations/a2d_annotation.txt").read_text().splitlines()[1:]:
        vid, _, text = line.split(",", 2)
        texts.setdefault(vid, []).append(text)
    seen = set()
    for vid, v in info.items():
        objs = v["objects"]
        look = Counter((o["colour"], o["shape"], o["size"]) for o in objs)
        if v["scenario"] == "motion":  # an identical pair told apart by motion only
            pair = [o for o in objs if look[(o["colour"], o["shape"], o["size"])] == 2]
            assert len(pair) == 2 and (pair[0]["motion"], pair[0]["speed"]) != (
                pair[1]["motion"],
                pair[1]["speed"],
            )
            assert any(("moving" in t or "still" in t or "bouncing" in t) for t in texts[vid])
        if v["scenario"] == "appearance":  # same motion for all, different looks
            assert len({(o["motion"], o["speed"]) for o in objs}) == 1 and max(look.values()) == 1
        if v["scenario"] == "fast":
            assert sum(o["speed"] == "fast" for o in objs) >= 2
        assert len(set(texts[vid])) == len(texts[vid])  # every expression is unambiguous text
        seen.add(v["scenario"])
    assert seen == set(SCENARIOS)


def test_fast_objects_move_more_than_their_size_within_a_clip():
    cfg = config_for("tiny", seed=3)
    rng = np.random.default_rng([3, 2])
    objs = _objects(rng, "fast", cfg)
    fast = [o for o in objs if o.speed == "fast"]
    span = 4  # first frame -> target of a 4-frame clip at stride 2 (target index 2)
    assert fast
    for o in fast:
        shift = np.hypot(o.xs[span] - o.xs[0], o.ys[span] - o.ys[0])
        assert shift > o.radius  # the object has left most of its clip-start footprint
