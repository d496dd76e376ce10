"""Tiny fake copies of each benchmark in its native on-disk layout, quirks included.

Every builder returns the numbers a correct reader must find (samples per split, rejects),
so the tests can assert exact counts. Frames are smooth gradients (JPEG-friendly) so the
round-trip tolerance can be tight; sizes are non-square to catch transposition bugs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.synthetic import write_mp4

H, W = 24, 32  # non-square on purpose


def smooth_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((n, h, w, 3), np.uint8)
    base = rng.uniform(40, 200, size=3)
    for t in range(n):
        img = base + 40 * np.sin((xx + 3 * t) / 9.0)[..., None] + 30 * np.cos(yy / 7.0)[..., None]
        cx = 4 + 2 * t % (w - 8)
        img[(np.abs(xx - cx) < 3) & (np.abs(yy - h / 2) < 3)] = (230, 20, 20)
        out[t] = np.clip(img, 0, 255)
    return out


def write_a2d_h5(path: Path, masks: dict[int, np.ndarray]) -> None:
    """A2D per-frame h5: reMask (W,H) for one instance, (N,W,H) for several."""
    import h5py

    ids = sorted(masks)
    stack = np.stack([masks[i] for i in ids]).astype(np.uint8)
    re_mask = stack[0].T if len(ids) == 1 else stack.transpose(0, 2, 1)
    with h5py.File(path, "w") as f:
        f.create_dataset("instance", data=np.asarray(ids, np.float64))
        f.create_dataset("reMask", data=re_mask)
        f.create_dataset("reBBox", data=np.zeros((4, len(ids))))
        f.create_dataset("reS_id", data=np.zeros(len(ids)))


def box_mask(y0: int, x0: int, y1: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def make_a2d(root: Path) -> dict:
    """A2D Sentences with every quirk; see the returned dict for what a reader must find."""
    rel = root / "Release"
    clips = rel / "clips320H"
    ann = root / "text_annotations"
    inst = ann / "a2d_annotation_with_instances"
    for d in (clips, inst):
        d.mkdir(parents=True, exist_ok=True)
    videoset = []

    def video(vid: str, n: int, subset: int, seed: int, write: bool = True) -> None:
        if write:
            write_mp4(clips / f"{vid}.mp4", smooth_frames(n, seed=seed), fps=24)
        videoset.append(f"{vid},11,0,{n},{H},{W},{n},2,{subset}")

    masks = {
        ("v1", 3): {0: box_mask(2, 3, 10, 9), 1: box_mask(12, 14, 20, 30)},  # multi-instance layout
        ("v1", 7): {1: box_mask(5, 20, 18, 31)},  # single-instance layout (W,H)
        ("v2", 5): {0: box_mask(0, 0, 6, 16)},
        ("v5", 2): {0: box_mask(1, 1, 5, 5)},
        ("v6", 20): {0: box_mask(1, 1, 5, 5)},
    }
    video("v1", 10, 0, 1)
    video("v2", 8, 1, 2)
    video("v3", 6, 0, 3)  # listed in a2d_missed_videos.txt
    video("v4", 6, 0, 4, write=False)  # annotation rows point at an absent video
    video("v5", 6, 0, 5, write=False)
    (clips / "v5.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 300)  # corrupt video
    video("v6", 10, 0, 6)  # annotated frame 20 but only 10 frames: too short for the clip
    video("v7", 6, 0, 7)  # its only h5 is unreadable
    for (vid, fnum), m in masks.items():
        (inst / vid).mkdir(exist_ok=True)
        write_a2d_h5(inst / vid / f"{fnum:05d}.h5", m)
    (inst / "v3").mkdir(exist_ok=True)
    write_a2d_h5(inst / "v3" / "00001.h5", {0: box_mask(1, 1, 5, 5)})
    (inst / "v7").mkdir(exist_ok=True)
    (inst / "v7" / "00002.h5").write_bytes(b"not an hdf5 file")
    (rel / "videoset.csv").write_text("\n".join(videoset) + "\n")
    lines = [
        b"video_id,instance_id,query",
        b"v1,0,the man in red",  # frame 3 -> 1 sample
        b"v1,1,the dog, running",  # frames 3, 7 -> 2 samples (comma inside the query)
        b"v1,1,a brown dog",  # frames 3, 7 -> 2 samples, expression_id 1
        b"v1,0,\xff\xfe caf\xe9",  # not UTF-8 -> reject
        b"v1,1,   ",  # empty -> reject
        b"v2,0,the woman",  # test, frame 5 -> 1 sample
        b"v2,1 (copy),the woman again",  # '1 (copy)' in no frame -> reject
        b"v3,0,missed video",  # missed -> reject
        b"v4,0,absent video",  # no mp4 -> reject
        b"v5,0,corrupt video",  # indexed; prep rejects it
        b"v6,0,short video",  # indexed; prep rejects it (frame 20 of 10)
        b"v7,0,unreadable h5",  # h5 reject + no frame lists it -> reject
    ]
    (ann / "a2d_annotation.txt").write_bytes(b"\n".join(lines) + b"\n")
    (ann / "a2d_missed_videos.txt").write_text("v3\n")
    return {
        "samples": {"train": 7, "test": 1},  # v1: 5, v5: 1, v6: 1 ; v2: 1
        "reader_rejects": 7,  # utf8, empty, copy, missed, absent, v7 h5, v7 row
        "prep_rejects": 2,  # v5 corrupt, v6 too short
        "prepped_samples": {"train": 5, "test": 1},
        "masks": masks,
    }


def make_jhmdb(root: Path) -> dict:
    import scipy.io

    h, w, n_img, n_mask = 16, 20, 7, 5
    fd = root / "Rename_Images" / "walk" / "v_walk_1"
    fd.mkdir(parents=True)
    for t, fr in enumerate(smooth_frames(n_img, h, w)):
        Image.fromarray(fr).save(fd / f"{t + 1:05d}.png")
    md = root / "puppet_mask" / "walk" / "v_walk_1"
    md.mkdir(parents=True)
    pm = np.zeros((h, w, n_mask), np.uint8)  # trailing frames 6, 7 have no mask
    for t in range(n_mask):
        pm[2 + t : 8 + t, 3:9, t] = 1
    scipy.io.savemat(md / "puppet_mask.mat", {"part_mask": pm})
    fd2 = root / "Rename_Images" / "run" / "v_run_1"  # frames but no mat
    fd2.mkdir(parents=True)
    Image.fromarray(smooth_frames(1, h, w)[0]).save(fd2 / "00001.png")
    (root / "jhmdb_annotation.txt").write_text(
        "video_id,query\nv_walk_1,man walking to the left\nv_walk_1,the walking person\n"
        "v_run_1,a running man\nv_absent,nobody\n"
    )
    return {"samples": {"test": 6}, "frames": [0, 2, 4], "rejects": 2, "part_mask": pm}


def _palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8)).convert("P")
    im.putpalette([0, 0, 0, 236, 95, 103, 249, 145, 87] + [0] * (256 * 3 - 9))
    im.save(path)


def _jpegs(d: Path, names: list[str], seed: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, fr in zip(names, smooth_frames(len(names), seed=seed)):
        Image.fromarray(fr).save(d / f"{name}.jpg", quality=95)


def make_ytvos(root: Path) -> dict:
    import json

    labels = np.zeros((H, W), np.uint8)
    labels[2:10, 2:12] = 1
    labels[12:20, 15:28] = 2
    train = {
        "vA": {
            "frames": ["00000", "00005", "00010"],
            "expressions": {
                "0": {"exp": "the left thing", "obj_id": "1"},
                "1": {"exp": "the right thing", "obj_id": "2"},
                "2": {"exp": "a small red box", "obj_id": "1"},
            },
        },
        "vB": {
            "frames": ["00000", "00005"],
            "expressions": {"0": {"exp": "a thing", "obj_id": "1"}},
        },
    }
    for vid, e in train.items():
        _jpegs(root / "train/JPEGImages" / vid, e["frames"], seed=len(vid))
        ad = root / "train/Annotations" / vid
        ad.mkdir(parents=True)
        for f in e["frames"]:
            if (vid, f) != ("vB", "00005"):  # one missing annotation -> reject
                _palette_png(ad / f"{f}.png", labels)
    valid = {
        "vC": {
            "frames": ["00000", "00005"],
            "expressions": {"0": {"exp": "a dog"}, "1": {"exp": "a cat"}},
        },
        "vD": {"frames": ["00000"], "expressions": {"0": {"exp": "the car"}}},
        "vT": {"frames": ["00000"], "expressions": {"0": {"exp": "test video"}}},
    }
    for vid, e in valid.items():
        _jpegs(root / "valid/JPEGImages" / vid, e["frames"], seed=3)
    test = {"vT": valid["vT"]}
    for split, videos in (("train", train), ("valid", valid), ("test", test)):
        d = root / "meta_expressions" / split
        d.mkdir(parents=True)
        (d / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    return {"samples": {"train": 10, "valid": 5}, "rejects": 1, "labels": labels}


def make_davis(root: Path) -> dict:
    data = root / "DAVIS"
    labels = np.zeros((H, W), np.uint8)
    labels[1:9, 1:9] = 1
    labels[10:20, 12:30] = 2
    for vid, n in (("bike", 3), ("cat", 2)):
        names = [f"{t:05d}" for t in range(n)]
        _jpegs(data / "JPEGImages/480p" / vid, names, seed=n)
        ad = data / "Annotations_unsupervised/480p" / vid
        ad.mkdir(parents=True)
        for f in names:
            _palette_png(ad / f"{f}.png", labels)
    sets = data / "ImageSets/2017"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("bike\n")
    (sets / "val.txt").write_text("cat\n")
    t = root / "davis_text_annotations"
    t.mkdir()
    (t / "Davis17_annot1.txt").write_text(
        'bike 1 "a black bike"\nbike 2 "a man riding"\ncat 1 "a cat"\nghost 1 "no such video"\n'
    )
    (t / "Davis17_annot1_full_video.txt").write_text(
        'bike 1 "the bike moving"\ncat 1 "a cat walking"\n'
    )
    (t / "Davis17_annot2.txt").write_bytes('bike 1 "a caf\u00e9 bike"\n'.encode("latin-1"))
    (t / "Davis17_annot2_full_video.txt").write_bytes('cat 1 "the cat"\n'.encode("latin-1"))
    return {"samples": {"train": 12, "valid": 6}, "rejects": 1}


def make_custom(root: Path) -> dict:
    vd = root / "videos"
    vd.mkdir(parents=True)
    write_mp4(vd / "clip.mp4", smooth_frames(6, seed=9), fps=24)
    seq = vd / "seq"
    seq.mkdir()
    for t, fr in enumerate(smooth_frames(4, seed=8)):
        Image.fromarray(fr).save(seq / f"img{t}.png")
    md = root / "masks" / "seq"
    md.mkdir(parents=True)
    for t in (1, 3):
        Image.fromarray(box_mask(2, 2, 9 + t, 9) * 255).save(md / f"img{t}.png")
    (root / "expressions.csv").write_bytes(
        b"video,expression,masks,split\n"
        b"videos/clip.mp4,a thing moving right,,\n"
        b"videos/seq,the red square,masks/seq,train\n"
        b"videos/nothere.mp4,absent,,\n"
        b"videos/seq,,masks/seq,train\n"
        b"videos/seq,caf\xe9 latin-1,masks/seq,train\n"
    )
    return {"samples": {"test": 6, "train": 2}, "rejects": 3}
