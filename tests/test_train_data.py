"""Data path of training: collate, joint clip+mask augmentation, seeding, left/right swap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.config import AugmentConfig
from pipelines.data import (
    collate,
    count_samples,
    decode_val_rows,
    draw_augmentation,
    epoch_seed,
    rows_from_batch,
    sample_key,
    select_frames,
    select_val_rows,
    swap_left_right,
)

AUG = AugmentConfig(crop_prob=1.0, crop_scale=(0.5, 0.8), hflip=0.5)


def make_sample(i: int, text: str = "the red square moving left", *, h0=96, w0=128, size=64):
    """A clip whose frames show a bright rectangle exactly where the (original-size) mask is."""
    rng = np.random.default_rng(i)
    y0, x0 = rng.integers(0, h0 // 2), rng.integers(0, w0 // 2)
    mask = np.zeros((h0, w0), np.uint8)
    mask[y0 : y0 + h0 // 2, x0 : x0 + w0 // 2] = 1
    # frames at the prep size (aspect not kept), object painted from the resized mask
    ys = (np.arange(size) + 0.5) * h0 / size
    xs = (np.arange(size) + 0.5) * w0 / size
    small = mask[ys.astype(int)][:, xs.astype(int)]
    frame = np.zeros((size, size, 3), np.uint8)
    frame[small > 0] = 255
    clip = np.stack([frame] * 5)
    return {
        "clip": clip,
        "mask": mask,
        "text": text,
        "video_id": f"v{i}",
        "clip_id": f"v{i}#000004",
        "object_id": "1",
        "expression_id": "0",
        "target_index": 2,
        "orig_size": (h0, w0),
        "meta": "{}",
    }


def test_collate_shapes_and_fields():
    samples = [make_sample(i) for i in range(3)]
    b = collate(samples, size=(32, 32), train=False, num_frames=4, target_index=2)
    assert b["clip"].shape == (3, 3, 4, 32, 32) and b["clip"].dtype == torch.float32
    assert float(b["clip"].min()) >= 0 and float(b["clip"].max()) <= 1
    assert b["mask"].shape == (3, 1, 32, 32)
    assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
    assert b["orig_size"].tolist() == [[96, 128]] * 3
    assert b["key"] == [f"v{i}#000004/1/0" for i in range(3)]
    assert all(g.shape == (96, 128) for g in b["gt_mask_orig"])
    assert b["text"] == [s["text"] for s in samples]


def test_select_frames_centres_target_and_clamps():
    assert select_frames(5, 2, 4, 2) == [0, 1, 2, 3]
    assert select_frames(5, 2, 8, 4) == [0, 0, 0, 1, 2, 3, 4, 4]
    assert select_frames(3, 1, None, None) == [0, 1, 2]


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_clip_and_mask_aligned(seed):
    samples = [make_sample(i) for i in range(4)]
    b = collate(samples, size=(32, 32), train=True, rng=seed, augment=AUG)
    for i in range(4):
        for t in range(b["clip"].shape[2]):
            bright = b["clip"][i, :, t].mean(0) > 0.5
            m = b["mask"][i, 0] > 0.5
            inter = (bright & m).sum().item()
            union = (bright | m).sum().item()
            assert union == 0 or inter / union > 0.85, (seed, i, t, inter / max(union, 1))


def test_flip_swaps_left_and_right_in_text():
    aug = AUG.replace(crop_prob=0.0, hflip=1.0)
    s = make_sample(0, "the square moving left, right of the circle")
    b = collate([s], size=(32, 32), train=True, rng=0, augment=aug)
    assert b["flipped"] == [True]
    assert b["text"] == ["the square moving right, left of the circle"]
    plain = collate([s], size=(32, 32), train=False)
    assert torch.equal(b["clip"][0], plain["clip"][0].flip(-1))
    assert torch.equal(b["mask"][0], plain["mask"][0].flip(-1))


def test_no_flip_of_left_right_expressions_without_swap():
    aug = AUG.replace(crop_prob=0.0, hflip=1.0, swap_left_right=False)
    b = collate(
        [make_sample(0, "the leftmost circle")], size=(32, 32), train=True, rng=0, augment=aug
    )
    assert b["flipped"] == [False] and b["text"] == ["the leftmost circle"]
    b = collate([make_sample(0, "the red circle")], size=(32, 32), train=True, rng=0, augment=aug)
    assert b["flipped"] == [True]


def test_swap_left_right_words_and_case():
    assert swap_left_right("Left of the RIGHT one, leftmost, rightward") == (
        "Right of the LEFT one, rightmost, leftward"
    )
    assert swap_left_right("the bright light") == "the bright light"


def test_augmentation_is_deterministic_per_key_not_order():
    samples = [make_sample(i) for i in range(4)]
    a = collate(samples, size=(32, 32), train=True, rng=epoch_seed(0, 1), augment=AUG)
    b = collate(samples[::-1], size=(32, 32), train=True, rng=epoch_seed(0, 1), augment=AUG)
    assert torch.equal(a["clip"], b["clip"].flip(0))
    assert torch.equal(a["mask"], b["mask"].flip(0))
    c = collate(samples, size=(32, 32), train=True, rng=epoch_seed(0, 2), augment=AUG)
    assert not torch.equal(a["clip"], c["clip"])


def test_eval_collate_ignores_augmentation():
    s = [make_sample(1)]
    a = collate(s, size=(32, 32), train=False, rng=1, augment=AUG)
    b = collate(s, size=(32, 32), train=False, rng=2, augment=AUG)
    assert torch.equal(a["clip"], b["clip"]) and a["flipped"] == [False]


def test_draw_uses_fixed_number_of_draws():
    aug_off = AUG.replace(enabled=False)
    g1, g2 = np.random.default_rng(0), np.random.default_rng(0)
    draw_augmentation(g1, AUG, "x")
    draw_augmentation(g2, aug_off, "x")
    assert g1.random() == g2.random()


def test_rows_from_numpy_batch():
    batch = {"a": np.arange(3), "b": np.array(["x", "y", "z"], dtype=object)}
    assert rows_from_batch(batch) == [{"a": 0, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "z"}]


def test_val_rows_partition_the_split_over_ranks(tiny_shards):
    """Training-time validation (``pipelines.train.loop``): rank r keeps the clips i with
    i % world == r (``select_val_rows``) and decodes them (``decode_val_rows``); over the ranks
    every sample of the split is seen exactly once (6 test clips, 18 samples)."""
    from data_prep.shards import iter_clip_rows

    rows = list(iter_clip_rows(tiny_shards, "test"))
    assert len(rows) == 6
    full = [sample_key(s) for s in decode_val_rows(select_val_rows(rows))]
    assert len(full) == len(set(full)) == count_samples(str(tiny_shards), "test") == 18
    parts = [
        [sample_key(s) for s in decode_val_rows(select_val_rows(rows, rank=r, world_size=4))]
        for r in range(4)
    ]
    assert sorted(sum(parts, [])) == sorted(full)
    # rank 1 of 4 holds clips 1 and 5; ranks 2 and 3 one clip each (no padding)
    clip_ids = [r["clip_id"] for r in rows]
    assert {k.split("/")[0] for k in parts[1]} == {clip_ids[1], clip_ids[5]}
    assert [len({k.split("/")[0] for k in p}) for p in parts] == [2, 2, 1, 1]
    limited = list(select_val_rows(rows, rank=0, world_size=1, limit=2))
    assert [r["clip_id"] for r in limited] == clip_ids[:2]
    samples = list(decode_val_rows(limited))
    assert samples and all(s["mask"] is not None and s["mask"].size > 0 for s in samples)


# --- issue 13: uint8 until the device, batched JPEG decode --------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_uint8_collate_scaled_on_device_equals_float_collate(seed):
    """Training collates uint8 (``collate(uint8=True)``) and scales on the device
    (``pipelines.train.speed.model_input``); eval keeps the float collate. Where no resize
    happens the two are identical; where crop + resize run on uint8 the resampled values are
    rounded to integers, so they differ by at most 1/255 (+ float32 rounding)."""
    from pipelines.train.speed import model_input

    samples = [make_sample(i) for i in range(4)]
    kw = {"train": True, "rng": seed, "augment": AUG}
    for size in ((64, 64), (32, 32)):  # crops are resized back to either size
        old = collate(samples, size=size, **kw)
        new = collate(samples, size=size, uint8=True, **kw)
        assert new["clip"].dtype == torch.uint8 and new["clip"].shape == old["clip"].shape
        assert new["clip"].is_contiguous(memory_format=torch.channels_last_3d)
        x = model_input(new["clip"], torch.device("cpu"), channels_last=False)
        torch.testing.assert_close(x, old["clip"], atol=1 / 255 + 1e-6, rtol=0)
        assert torch.equal(new["mask"], old["mask"])
        assert new["text"] == old["text"] and new["flipped"] == old["flipped"]
    # no crop and the stored size: nothing is resampled, the values are the same floats
    plain = [make_sample(i) for i in range(2)]
    old = collate(plain, size=(64, 64), train=False)
    new = collate(plain, size=(64, 64), train=False, uint8=True)
    assert torch.equal(
        model_input(new["clip"], torch.device("cpu"), channels_last=True), old["clip"]
    )


def _jpegs(n: int, h: int = 40, w: int = 56, seed: int = 0) -> list[bytes]:
    import simplejpeg

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    return [
        simplejpeg.encode_jpeg(np.ascontiguousarray(np.roll(base, 3 * i, axis=1)), quality=85)
        for i in range(n)
    ]


def test_batched_jpeg_decode_equals_one_by_one():
    from data_prep.shards import decode_clip, decode_jpeg

    frames = _jpegs(8)
    one_by_one = np.stack([decode_jpeg(f) for f in frames])
    batch = decode_clip(frames)
    assert batch.dtype == np.uint8 and batch.shape == (8, 40, 56, 3)
    assert np.array_equal(batch, one_by_one)
    assert len({batch[i].tobytes() for i in range(8)}) == 8  # every frame its own slice
    # frames as Arrow hands them over (numpy object array of bytes) decode the same
    assert np.array_equal(decode_clip(np.array(frames, dtype=object)), one_by_one)
    # frames of unequal size: decoded one by one (np.stack refuses them, as before)
    with pytest.raises(ValueError):
        decode_clip(frames[:2] + _jpegs(1, h=48))
    with pytest.raises(ValueError, match="at least one frame"):
        decode_clip([])
