"""`lstc predict` on a generated mp4 with a tiny random-init checkpoint (real decoders, real files).

The masks are checked against an independent path: each frame's clip cut by
``data_prep.clipspec.read_clip`` (what the served model used before windows existed) and
``pipelines.inference.predict_masks`` - exact equality on CPU.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main as lstc_main

H, W, N = 48, 64, 12
#: clip spec of the fixture's "shards" (what `lstc prep` would have written in its manifest)
CLIP = {"num_frames": 4, "stride": 2, "height": 64, "width": 64}


def moving_square(n: int = N) -> list[np.ndarray]:
    """A red square moving right on a textured grey background (RGB uint8)."""
    rng = np.random.default_rng(3)
    base = rng.integers(60, 140, (H, W, 3), dtype=np.uint8)
    frames = []
    for t in range(n):
        f = base.copy()
        f[14:30, 3 + 3 * t : 19 + 3 * t] = (220, 30, 30)
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint dir, model, recipe, mp4 path, sqlite URI): a tiny random-init model whose
    recipe points at a shard root holding only the manifest's clip spec."""
    import torch

    from lstc.model import build_model
    from pipelines.checkpoint import save_checkpoint
    from pipelines.config import load_recipe
    from pipelines.predict import write_video

    root = tmp_path_factory.mktemp("predict")
    shards = root / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"config": {"clip": CLIP}}))
    recipe = load_recipe(
        "configs/refer_shapes_tiny.yaml",
        [f"data.root={shards}", f"tracking.uri=sqlite:///{root}/mlflow.db"],
    )
    torch.manual_seed(0)
    model = build_model(recipe.model.without_pretrained()).eval()
    ckpt = save_checkpoint(
        root / "ckpt", model=model, recipe=recipe, epoch=1, global_step=1, metrics={}
    )
    video = root / "clip.mp4"
    write_video(video, moving_square(), fps=10.0)
    return ckpt, model, recipe, video, f"sqlite:///{root}/mlflow.db"


def expected_masks(model, recipe, video, text: str, frames: list[int]) -> dict[int, np.ndarray]:
    from data_prep.clipspec import ClipSpec, read_clip
    from pipelines.data import collate, collate_kwargs
    from pipelines.inference import predict_masks

    kw = collate_kwargs(recipe)
    kw.pop("augment")
    samples = []
    for t in frames:
        clip, t_idx, orig = read_clip(str(video), t, ClipSpec(**CLIP))
        samples.append(
            {
                "clip": clip,
                "mask": None,
                "text": text,
                "video_id": "v",
                "clip_id": f"c{t}",
                "object_id": "0",
                "expression_id": "0",
                "target_index": t_idx,
                "orig_size": orig,
                "meta": "",
            }
        )
    # one batch, like `lstc predict` with a window holding every target
    return dict(zip(frames, predict_masks(model, collate(samples, train=False, **kw))))


class CountingSource:
    """The real decoder, with the frames it was asked for counted."""

    def __init__(self, source):
        self.inner, self.decoded = source, []

    num_frames = property(lambda self: self.inner.num_frames)
    size = property(lambda self: self.inner.size)
    path = property(lambda self: self.inner.path)

    def get(self, indices):
        self.decoded.extend(int(i) for i in indices)
        return self.inner.get(indices)


@pytest.fixture
def counting(monkeypatch):
    import pipelines.predict as predict_mod

    opened: list[CountingSource] = []
    real = predict_mod.open_video

    def open_counted(ref):
        opened.append(CountingSource(real(ref)))
        return opened[-1]

    monkeypatch.setattr(predict_mod, "open_video", open_counted)
    return opened


def read_masks(folder) -> dict[int, np.ndarray]:
    return {
        int(p.stem): np.asarray(Image.open(p)) > 0 for p in sorted((folder / "masks").glob("*.png"))
    }


def test_predict_two_expressions_decode_once(setup, tmp_path, counting, capsys):
    import av

    ckpt, model, recipe, video, _ = setup
    out = tmp_path / "out"
    texts = ["the red square", "the grey background"]
    rc = lstc_main(
        ["predict", str(video), *texts, "--checkpoint", str(ckpt), "--out", str(out)]
        + ["--batch-size", str(N), "--no-progress"]
    )
    assert rc == 0, capsys.readouterr().err
    # one decoder, every frame decoded exactly once for both expressions
    assert len(counting) == 1 and sorted(counting[0].decoded) == list(range(N))
    for text, slug in zip(texts, ["the-red-square", "the-grey-background"]):
        folder = out / slug
        masks = read_masks(folder)
        assert sorted(masks) == list(range(N))
        assert all(m.shape == (H, W) for m in masks.values())
        want = expected_masks(model, recipe, video, text, list(range(N)))
        for t in range(N):
            assert np.array_equal(masks[t], want[t]), (text, t)
        with open(folder / "scores.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["frame"]) for r in rows] == list(range(N))
        assert [int(r["area"]) for r in rows] == [int(want[t].sum()) for t in range(N)]
        assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
        with av.open(str(folder / "overlay.mp4")) as container:
            decoded = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
        assert len(decoded) == N
        assert decoded[0].shape[1] == W and decoded[0].shape[0] > H  # caption + legend below
        preview = np.asarray(Image.open(folder / "preview.png"))
        # the strip's tiles are the overlay frames (the video pads odd sizes by one pixel)
        assert preview.shape[1] > W and preview.shape[0] + preview.shape[0] % 2 == len(decoded[0])
    assert "12 frames x 2 expression(s)" in capsys.readouterr().out


def test_frame_range_and_bounded_window(setup, tmp_path, counting):
    from data_prep.clipspec import ClipSpec
    from pipelines.predict import PredictStats, open_source, parse_frames, predict_video

    ckpt, model, recipe, video, _ = setup
    out = tmp_path / "range"
    rc = lstc_main(
        ["predict", str(video), "the red square", "--checkpoint", str(ckpt)]
        + ["--out", str(out), "--frames", "3:7", "--no-progress"]
    )
    assert rc == 0
    masks = read_masks(out / "the-red-square")
    want = expected_masks(model, recipe, video, "the red square", [3, 4, 5, 6])
    assert sorted(masks) == [3, 4, 5, 6]
    assert all(np.array_equal(masks[t], want[t]) for t in masks)
    # clips of frames 3..6 (t-4, t-2, t, t+2, clamped at 0) need frames 0..8 only, once each
    assert sorted(counting[0].decoded) == list(range(0, 9))

    # windows of 4 targets hold at most 4 + (4 - 1) * 2 frames, never the whole video
    stats = PredictStats()
    source = open_source(video)
    results = list(
        predict_video(
            model, recipe, source, ["x"], spec=ClipSpec(**CLIP), batch_size=4, stats=stats
        )
    )
    assert [r.frame for r in results] == list(range(N))
    assert stats.frames_decoded == N and stats.max_frames_held <= 4 + 6 < N
    assert parse_frames("5", N) == range(5, 6) and parse_frames(":4", N) == range(0, 4)
    assert parse_frames("10:", N) == range(10, N) and parse_frames(None, N) == range(N)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "the expression is empty"),
        (["the square", "--frames", "5:40"], "outside the video's 12 frames"),
        (["the square", "--frames", "7:3"], "outside the video's 12 frames"),
        (["the square", "--frames", "a-b"], "is not A:B"),
    ],
)
def test_bad_input_is_a_clear_error(setup, args, message, capsys):
    ckpt, _, _, video, _ = setup
    rc = lstc_main(["predict", str(video), *args, "--checkpoint", str(ckpt), "--no-progress"])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_unreadable_video_and_missing_model(setup, tmp_path, capsys):
    ckpt, _, _, video, uri = setup
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    assert lstc_main(["predict", str(text), "the square", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "cannot read video" in err and "decord or PyAV" in err
    assert lstc_main(["predict", str(tmp_path / "nope.mp4"), "x", "--checkpoint", str(ckpt)]) == 2
    assert "cannot read video" in capsys.readouterr().err
    rc = lstc_main(
        ["predict", str(video), "the square", "--model", "models:/no-such-model@champion"]
        + ["--tracking-uri", uri]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "models:/no-such-model@champion does not exist in the registry" in err


def test_overlay_legend_colours():
    from lstc.visualize import GT_COLOR, PRED_COLOR, overlay

    frame = np.full((60, 80, 3), 100, np.uint8)
    pred = np.zeros((60, 80), bool)
    with_gt = overlay(frame, pred, pred, text="x")
    without = overlay(frame, pred, text="x")

    def has(img, colour):
        return bool((img == np.asarray(colour, np.uint8)).all(axis=-1).any())

    assert has(with_gt[60:], PRED_COLOR) and has(with_gt[60:], GT_COLOR)
    assert has(without[60:], PRED_COLOR) and not has(without[60:], GT_COLOR)
    assert not has(with_gt[:60], PRED_COLOR)  # empty prediction: nothing tinted in the frame
