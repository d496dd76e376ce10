"""The refer-shapes generator: deterministic, A2D layout, and built to need motion/appearance."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from data_prep import synthetic
from data_prep.decode import open_video
from data_prep.readers import get_reader
from data_prep.synthetic import (
    SCENARIOS,
    _background,
    _objects,
    config_for,
    generate,
    render_video,
    rgb_to_yuv420p,
    write_mp4,
)

REPO = Path(__file__).resolve().parents[1]


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


def rendered(cfg, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames and owner maps of video ``i``, drawn as :func:`generate` draws them."""
    rng = np.random.default_rng([cfg.seed, i])
    objects = _objects(rng, SCENARIOS[i % len(SCENARIOS)], cfg)
    return render_video(objects, _background(rng, cfg), cfg)


def test_deterministic_by_seed(tiny: Path, tmp_path: Path):
    generate(tmp_path / "again", config_for("tiny", seed=3))
    generate(tmp_path / "other", config_for("tiny", seed=4))
    assert digest_tree(tiny) == digest_tree(tmp_path / "again")
    assert digest_tree(tiny) != digest_tree(tmp_path / "other")


def test_same_bytes_in_a_fresh_process(tiny: Path, tmp_path: Path):
    """Another interpreter, other thread settings, and freshly allocated memory filled with a
    byte pattern (glibc's MALLOC_PERTURB_): an encoder that reads uninitialised memory or
    depends on threads writes other bytes. x264's AVX-512 mbtree path did."""
    out = tmp_path / "fresh"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "PYTHONHASHSEED": "12345",
        "MALLOC_PERTURB_": "165",
    }
    code = (
        "import sys\n"
        "from data_prep.synthetic import config_for, generate\n"
        "generate(sys.argv[1], config_for('tiny', seed=3))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=REPO, env=env, check=True, timeout=300
    )
    assert digest_tree(out) == digest_tree(tiny)


def test_encoding_the_same_frames_again_gives_the_same_bytes(tmp_path: Path):
    cfg = config_for("tiny", seed=3)
    for i in (3, 6):  # the two videos whose bytes varied before the fix
        frames, _ = rendered(cfg, i)
        digests = set()
        for k in range(8):
            path = tmp_path / f"v{i}_{k}.mp4"
            write_mp4(path, frames, cfg.fps)
            digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        assert len(digests) == 1, f"video {i}: {len(digests)} different files from 8 encodes"


def test_encoded_bytes_do_not_depend_on_the_cpus_simd(tmp_path: Path, monkeypatch):
    """x264 pinned to SSE2 (x86-64) writes what its plain C code (asm=0, other CPUs) writes."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:
        pytest.skip("no libx264 in this PyAV build")
    cfg = config_for("tiny", seed=3)
    frames = [rendered(cfg, i)[0] for i in (0, 3, 6)]
    options = dict(synthetic.X264_OPTIONS)
    digests = {}
    for asm in ("SSE2", "0"):
        params = options["x264-params"].rsplit(":asm=", 1)[0] + f":asm={asm}"
        monkeypatch.setattr(synthetic, "X264_OPTIONS", {**options, "x264-params": params})
        digests[asm] = []
        for k, f in enumerate(frames):
            write_mp4(tmp_path / f"{asm}_{k}.mp4", f, cfg.fps)
            digests[asm].append(hashlib.sha256((tmp_path / f"{asm}_{k}.mp4").read_bytes()).digest())
    assert digests["SSE2"] == digests["0"]


def test_rgb_to_yuv420p_is_bt601_limited_range():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 8, 10, 3), dtype=np.uint8)
    rgb[0, :2, :2] = 255  # a white and a black 2x2 block
    rgb[0, :2, 2:4] = 0
    yuv = rgb_to_yuv420p(rgb)
    assert yuv.dtype == np.uint8 and yuv.shape == (3, 12, 10)
    y = yuv[:, :8].astype(float)
    cb = yuv[:, 8:].reshape(3, 2, 4, 5)[:, 0].astype(float)
    cr = yuv[:, 8:].reshape(3, 2, 4, 5)[:, 1].astype(float)
    # ITU-R BT.601, 8-bit studio range: Y 16..235, Cb/Cr 16..240; chroma from the 2x2 mean
    r, g, b = np.moveaxis(rgb.astype(float), -1, 0)
    m = rgb.astype(float).reshape(3, 4, 2, 5, 2, 3).mean(axis=(2, 4))
    mr, mg, mb = np.moveaxis(m, -1, 0)
    assert np.abs(y - (16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)).max() < 1
    assert np.abs(cb - (128 + (-37.797 * mr - 74.203 * mg + 112.0 * mb) / 255)).max() < 1
    assert np.abs(cr - (128 + (112.0 * mr - 93.786 * mg - 18.214 * mb) / 255)).max() < 1
    assert (y[0, 0, 0], cb[0, 0, 0], cr[0, 0, 0]) == (235, 128, 128)  # white
    assert (y[0, 0, 2], cb[0, 0, 1], cr[0, 0, 1]) == (16, 128, 128)  # black
    with pytest.raises(ValueError, match="even"):
        rgb_to_yuv420p(np.zeros((1, 7, 10, 3), np.uint8))


def test_decoded_frames_match_the_rendered_frames(tiny: Path):
    """What the pipeline decodes (decord, RGB) against what was drawn, for every video.

    Bounds, with the figures seen for seed 3 (crf 16, 4:2:0): mean error < 6 grey levels
    (4.2-5.0); 95 % of values within 16 (11-12); inside objects (a 5x5 neighbourhood of one
    object, flat colour) mean < 4 (1.3-2.9) and max <= 40 (9-23), so colours stay nameable;
    the luma plane against the encoder's input PSNR >= 42 dB (45.6-49.5). The overall max
    error is not bounded: 4:2:0 chroma at a sharp colour edge is off by up to ~230.
    """
    import av

    from data_prep.samples import VideoRef

    cfg = config_for("tiny", seed=3)
    for i, mp4 in enumerate(sorted(tiny.glob("Release/clips320H/*.mp4"))):
        frames, owner = rendered(cfg, i)
        src = open_video(VideoRef("mp4", str(mp4)))
        err = np.abs(src.get(range(cfg.num_frames)).astype(np.int16) - frames)
        assert err.mean() < 6 and np.percentile(err, 95) <= 16, (mp4.name, err.mean())
        pad = np.pad(owner, ((0, 0), (2, 2), (2, 2)), constant_values=-2)
        inside = owner >= 0
        for dy in range(5):
            for dx in range(5):
                inside &= pad[:, dy : dy + cfg.height, dx : dx + cfg.width] == owner
        assert inside.sum() > 100
        assert err[inside].mean() < 4 and err[inside].max() <= 40, mp4.name
        with av.open(str(mp4)) as container:
            planes = np.stack([f.to_ndarray() for f in container.decode(video=0)])
        luma = planes[:, : cfg.height].astype(float)
        mse = ((luma - rgb_to_yuv420p(frames)[:, : cfg.height]) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) >= 42, mp4.name


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


def test_demo_clips_show_motion_the_network_can_see():
    """The demo's geometry (issue 14, benchmarks/motion_study.py visibility): every annotated
    frame has an unclamped clip at the demo's prep (4 frames, stride 3, 64x64), and in that clip
    a slow object moves at least its radius, a fast one at least twice as far."""
    from data_prep.schema import clip_frame_indices
    from data_prep.synthetic import annotated_frames
    from pipelines.demo import DemoOptions

    cfg, stride, size = config_for("demo", seed=0), DemoOptions().stride, 64
    assert annotated_frames(cfg) == [8, 13, 18, 23]  # linspace(8, 23, 4), rounded
    assert annotated_frames(config_for("tiny", seed=0)) == [0, 12, 23]  # tests: clamped ends
    scale = (size / cfg.width, size / cfg.height)
    for t in annotated_frames(cfg):
        idx, _ = clip_frame_indices(t, cfg.num_frames, 4, stride)
        assert idx == [t - 2 * stride + i * stride for i in range(4)]  # not clamped
    rng = np.random.default_rng(0)
    for scenario in SCENARIOS * 4:
        for o in _objects(rng, scenario, cfg):
            if not o.speed:
                continue
            idx, _ = clip_frame_indices(13, cfg.num_frames, 4, stride)
            dx = (o.xs[idx[-1]] - o.xs[idx[0]]) * scale[0]
            dy = (o.ys[idx[-1]] - o.ys[idx[0]]) * scale[1]
            radius = o.radius * min(scale)
            assert np.hypot(dx, dy) >= (radius if o.speed == "slow" else 2 * radius)
