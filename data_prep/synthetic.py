"""refer-shapes: a synthetic referring-video benchmark, written in the A2D Sentences layout.

Every video shows 2-4 flat shapes moving over a textured background. Each object gets an
expression naming its colour and shape plus the fewest further attributes (size, motion)
that single it out among the objects of its video, and (demo scale) a full description. The
video's scenario (``label`` column of ``videoset.csv``) makes the expressions need a cue:

* ``motion``: two objects of identical appearance that move differently — only motion
  ("the red circle moving left") resolves them;
* ``appearance``: objects that share one motion, different colour/shape — only appearance
  resolves them;
* ``fast``: objects crossing the frame quickly, so a clip-level (3D) feature is misaligned
  with the object's position in the target frame.

Output (``lstc prep --dataset refer_shapes`` reads it with the A2D reader)::

    Release/videoset.csv, Release/clips320H/<vid>.mp4
    text_annotations/a2d_annotation.txt, a2d_missed_videos.txt (empty)
    text_annotations/a2d_annotation_with_instances/<vid>/<frame:05d>.h5  (1-based)
    refer_shapes.json   generation config + per-object attributes (for analysis)

``reMask`` is written transposed as in A2D: ``(W, H)`` when a frame lists one instance,
``(N, W, H)`` otherwise. Everything is a function of the seed: files are byte-identical
for a given seed and scale, in any process and on any CPU (given the same PyAV/x264 build;
see :func:`write_mp4`).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 70, 230),
    "yellow": (235, 220, 30),
    "magenta": (220, 40, 200),
    "cyan": (30, 210, 220),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.075, "big": 0.13}  # radius as a fraction of min(H, W)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS = ("left", "right", "up", "down", "still", "bouncing")
SCENARIOS = ("motion", "appearance", "fast")
ATTRIBUTES = ("colour", "shape", "size", "motion")


@dataclass(frozen=True)
class SynthConfig:
    """Size and randomness of a generated benchmark."""

    num_videos: int = 8
    num_frames: int = 24
    height: int = 72
    width: int = 96
    annotated_per_video: int = 3
    expressions_per_object: int = 1
    test_fraction: float = 0.25
    #: speed of a "slow" object as a fraction of the speed that crosses the frame in the video
    #: ("fast" is 0.95). 0.3 moved 2.2 px within a 4-frame stride-2 clip at 64 px, under half
    #: a shape's radius (benchmarks/motion_study.py visibility): too little to see.
    slow_fraction: float = 0.3
    #: frames kept free at both ends of the video when choosing the annotated frames: 0
    #: annotates the first and last frame (their clips are clamped: half the clip repeats
    #: the target frame and shows no motion); the demo keeps room for an unclamped clip.
    annotated_margin: int = 0
    fps: int = 24
    seed: int = 0


SCALES: dict[str, SynthConfig] = {
    "tiny": SynthConfig(),
    "demo": SynthConfig(
        num_videos=300,
        num_frames=32,
        height=120,
        width=160,
        annotated_per_video=4,
        expressions_per_object=2,
        slow_fraction=0.5,
        annotated_margin=8,
    ),
}


@dataclass(frozen=True)
class ShapeObject:
    """One object: appearance, motion and its trajectory (centre per frame)."""

    instance_id: int
    colour: str
    shape: str
    size: str
    motion: str  # one of MOTIONS
    speed: str  # "slow" | "fast" | "" (still / bouncing)
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    radius: float

    def attribute(self, name: str) -> str:
        if name == "motion":
            return f"{self.speed}:{self.motion}"
        return str(getattr(self, name))

    def phrase(self, attrs: tuple[str, ...]) -> str:
        words = ["the"]
        if "size" in attrs:
            words.append(self.size)
        if "colour" in attrs:
            words.append(self.colour)
        words.append(self.shape if "shape" in attrs else "shape")
        if "motion" in attrs:
            words.append(motion_phrase(self.motion, self.speed))
        return " ".join(words)


def motion_phrase(motion: str, speed: str) -> str:
    if motion == "still":
        return "that stays still"
    if motion == "bouncing":
        return "bouncing up and down"
    adverb = {"slow": "slowly ", "fast": "quickly "}.get(speed, "")
    return f"{adverb}moving {motion}"


def unique_description(obj: ShapeObject, others: list[ShapeObject]) -> tuple[str, ...]:
    """Colour and shape, plus the fewest of size/motion needed to single ``obj`` out."""
    base = ("colour", "shape")
    for k in range(0, 3):
        for extra in itertools.combinations(("size", "motion"), k):
            attrs = base + extra
            if all(any(o.attribute(a) != obj.attribute(a) for a in attrs) for o in others):
                return attrs
    return ATTRIBUTES


def _trajectory(
    rng: np.random.Generator, motion: str, speed: str, r: float, cfg: SynthConfig
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n, w, h = cfg.num_frames, cfg.width, cfg.height
    t = np.arange(n, dtype=np.float64)
    lo_x, hi_x, lo_y, hi_y = r + 1, w - r - 2, r + 1, h - r - 2
    if motion in DIRECTIONS:
        dx, dy = DIRECTIONS[motion]
        span = (hi_x - lo_x) if dx else (hi_y - lo_y)
        full = span / max(n - 1, 1)  # crossing the whole frame in the video = "fast"
        v = full * (0.95 if speed == "fast" else cfg.slow_fraction)
        travel = v * (n - 1)
        if dx:
            x0 = (
                lo_x + rng.uniform(0, span - travel)
                if dx > 0
                else hi_x - rng.uniform(0, span - travel)
            )
            xs, ys = x0 + dx * v * t, np.full(n, rng.uniform(lo_y, hi_y))
        else:
            y0 = (
                lo_y + rng.uniform(0, span - travel)
                if dy > 0
                else hi_y - rng.uniform(0, span - travel)
            )
            xs, ys = np.full(n, rng.uniform(lo_x, hi_x)), y0 + dy * v * t
    elif motion == "bouncing":
        amp = min((hi_y - lo_y) / 2, 0.3 * h)
        yc = rng.uniform(lo_y + amp, hi_y - amp)
        period = rng.uniform(10, 16)
        xs = np.full(n, rng.uniform(lo_x, hi_x))
        ys = yc + amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    else:  # still
        xs, ys = np.full(n, rng.uniform(lo_x, hi_x)), np.full(n, rng.uniform(lo_y, hi_y))
    return tuple(float(v) for v in xs), tuple(float(v) for v in ys)


def _objects(rng: np.random.Generator, scenario: str, cfg: SynthConfig) -> list[ShapeObject]:
    colours, shapes, sizes = list(COLOURS), list(SHAPES), list(SIZES)
    specs: list[tuple[str, str, str, str, str]] = []  # colour, shape, size, motion, speed

    def speed_for(motion: str, fast: bool | None = None) -> str:
        if motion not in DIRECTIONS:
            return ""
        if fast is None:
            fast = bool(rng.random() < 0.3)
        return "fast" if fast else "slow"

    if scenario == "motion":
        c, s, z = rng.choice(colours), rng.choice(shapes), rng.choice(sizes)
        m1, m2 = rng.choice(MOTIONS, size=2, replace=False)
        specs += [(c, s, z, m1, speed_for(m1)), (c, s, z, m2, speed_for(m2))]
        n_extra = int(rng.integers(0, 2))
    elif scenario == "appearance":
        m = rng.choice(MOTIONS)
        sp = speed_for(m)
        k = int(rng.integers(2, 4))
        cs = rng.choice(colours, size=k, replace=False)
        ss = rng.choice(shapes, size=k, replace=True)
        z = rng.choice(sizes)
        specs += [(cs[i], ss[i], z, m, sp) for i in range(k)]
        n_extra = 0
    else:  # fast
        k = int(rng.integers(2, 4))
        cs = rng.choice(colours, size=k, replace=False)
        for i in range(k):
            m = rng.choice(list(DIRECTIONS)) if i < 2 else rng.choice(MOTIONS)
            specs.append(
                (cs[i], rng.choice(shapes), rng.choice(sizes), m, speed_for(m, fast=i < 2))
            )
        n_extra = 0
    used = {(c, s) for c, s, *_ in specs}
    for _ in range(n_extra):
        c, s = rng.choice(colours), rng.choice(shapes)
        if (c, s) in used:
            continue
        m = rng.choice(MOTIONS)
        specs.append((c, s, rng.choice(sizes), m, speed_for(m)))
    out = []
    for i, (c, s, z, m, sp) in enumerate(specs):
        r = SIZES[str(z)] * min(cfg.height, cfg.width)
        xs, ys = _trajectory(rng, str(m), sp, r, cfg)
        out.append(ShapeObject(i, str(c), str(s), str(z), str(m), sp, xs, ys, r))
    return out


def _shape_mask(
    shape: str, cx: float, cy: float, r: float, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    # triangle pointing up: apex at cy - r, base at cy + r
    return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)


def _background(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = rng.uniform(70, 150, size=3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    for _ in range(3):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.35)
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(8, 22)
        wave = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        img += amp * wave[..., None] * rng.uniform(0.5, 1.0, size=3)
    img += rng.normal(0, 6, size=(h, w, 3))
    return img


def render_video(
    objects: list[ShapeObject], background: np.ndarray, cfg: SynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``uint8 [T, H, W, 3]`` and visible-instance maps ``int16 [T, H, W]`` (-1 = none)."""
    h, w = cfg.height, cfg.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.empty((cfg.num_frames, h, w, 3), np.uint8)
    owner = np.full((cfg.num_frames, h, w), -1, np.int16)
    for t in range(cfg.num_frames):
        img = background.copy()
        for o in objects:  # later objects are drawn on top (occlusion)
            m = _shape_mask(o.shape, o.xs[t], o.ys[t], o.radius, yy, xx)
            img[m] = COLOURS[o.colour]
            owner[t][m] = o.instance_id
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, owner


# BT.601 studio-swing ("limited range") RGB -> YCbCr, 8-bit fixed point (x 256), the
# coefficients of ITU-R BT.601 as used by FFmpeg/x264 tooling. Rows: Y, Cb, Cr.
_BT601 = np.array([[66, 129, 25], [-38, -74, 112], [112, -94, -18]], np.int32)

# libx264 settings under which the bytes are a function of the input planes only.
# * asm: x264 picks its SIMD routines from the CPU it runs on. On an AVX-512 CPU (x264 core
#   165 in the PyAV 18 wheel) they read uninitialised heap memory on the macroblock-tree /
#   B-frame path: the same frames gave 2-5 different files in 12 encodes in one process, and
#   MALLOC_PERTURB_ changed the output. Their SSSE3+ routines also give other bits than SSE2
#   or plain C. SSE2 is in every x86-64 CPU and gives the same bits as x264's C code (what it
#   runs on other architectures: asm=0); it costs ~1 ms per tiny video.
# * mbtree=0, bframes=0: the macroblock-tree propagation is float SIMD whose bits differ
#   between CPUs, and the AVX-512 read is on that path (either option alone removed it).
#   bframes=0 is what the old ``"bframes"`` option meant: PyAV ignored that unknown name
#   and x264 used 3 B-frames.
# * one thread, no sliced or lookahead threads: no dependence on the core count.
_X264_ASM = "SSE2" if platform.machine().lower() in ("x86_64", "amd64") else "0"
X264_OPTIONS = {
    "crf": "16",
    "preset": "veryfast",
    "g": "24",
    "threads": "1",
    "x264-params": (
        "threads=1:lookahead-threads=1:sliced-threads=0:bframes=0:mbtree=0:asm=" + _X264_ASM
    ),
}


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` RGB -> ``uint8 [T, H * 3 // 2, W]`` yuv420p (Y, then Cb, then Cr).

    BT.601 limited range in integer arithmetic, chroma averaged over each 2x2 block: the
    same bytes on every machine (swscale's conversion depends on the CPU's SIMD). H and W
    must be even, as 4:2:0 needs.
    """
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {h}x{w}")
    rgb = frames.astype(np.int32)
    y = ((rgb @ _BT601[0] + 128) >> 8) + 16
    # chroma: sum the x256 values over each 2x2 block, then round once (>> 10 = / (4 * 256))
    blocks = rgb.reshape(t, h // 2, 2, w // 2, 2, 3).sum(axis=(2, 4))
    cb = ((blocks @ _BT601[1] + 512) >> 10) + 128
    cr = ((blocks @ _BT601[2] + 512) >> 10) + 128
    planes = [y.reshape(t, -1), cb.reshape(t, -1), cr.reshape(t, -1)]
    return np.concatenate(planes, axis=1).astype(np.uint8).reshape(t, h * 3 // 2, w)


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> str:
    """Encode RGB frames with libx264 (mpeg4 if libx264 is unavailable); returns the codec used.

    The bytes depend on the frames only (see ``X264_OPTIONS``): the RGB -> yuv420p conversion
    is done here in numpy (:func:`rgb_to_yuv420p`, BT.601 limited range, tagged as such).
    """
    import av

    from data_prep.storage import atomic_path

    codec = "libx264"
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        codec = "mpeg4"
    yuv = rgb_to_yuv420p(frames)
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 6  # SMPTE 170M (BT.601)
        cc.color_range = 1  # MPEG (limited)
        if codec == "libx264":
            stream.options = dict(X264_OPTIONS)
        else:
            stream.options = {"qscale": "2", "g": "24", "threads": "1", "flags": "+bitexact"}
        for t, arr in enumerate(yuv):
            frame = av.VideoFrame.from_ndarray(arr, format="yuv420p")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


def write_h5(path: Path, owner: np.ndarray, ids: list[int]) -> None:
    """A2D-style per-frame h5: ``instance``, ``reMask`` (transposed), ``reBBox``, ``reS_id``."""
    import h5py

    masks = np.stack([(owner == i).astype(np.uint8) for i in ids])  # [N, H, W]
    boxes = np.zeros((4, len(ids)), np.float64)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        boxes[:, k] = (xs.min(), ys.min(), xs.max(), ys.max())
    re_mask = masks[0].T if len(ids) == 1 else masks.transpose(0, 2, 1)
    with h5py.File(path, "w", track_order=False) as f:
        f.create_dataset("instance", data=np.asarray(ids, np.float64), track_times=False)
        f.create_dataset("reMask", data=re_mask, track_times=False)
        f.create_dataset("reBBox", data=boxes, track_times=False)
        f.create_dataset("reS_id", data=np.zeros(len(ids), np.float64), track_times=False)


MIN_VISIBLE_PIXELS = 12


def annotated_frames(cfg: SynthConfig) -> list[int]:
    """The annotated frames (0-based): ``annotated_per_video`` evenly spaced frames between
    ``annotated_margin`` and ``num_frames - 1 - annotated_margin``."""
    lo = min(cfg.annotated_margin, (cfg.num_frames - 1) // 2)
    hi = cfg.num_frames - 1 - lo
    return sorted({int(round(x)) for x in np.linspace(lo, hi, cfg.annotated_per_video)})


def generate(out: str | os.PathLike[str], cfg: SynthConfig) -> dict[str, int]:
    """Write the benchmark under ``out``; returns counts (videos, train, test, expressions)."""
    root = Path(out)
    clips = root / "Release" / "clips320H"
    ann = root / "text_annotations"
    inst_root = ann / "a2d_annotation_with_instances"
    for d in (clips, inst_root):
        d.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(cfg.seed)
    n_test = max(1, round(cfg.num_videos * cfg.test_fraction)) if cfg.num_videos > 1 else 0
    test_set = set(master.permutation(cfg.num_videos)[:n_test].tolist())
    videoset_rows: list[str] = []
    ann_rows: list[str] = ["video_id,instance_id,query"]
    described: dict[str, object] = {}
    annotated = annotated_frames(cfg)
    counts = {"videos": cfg.num_videos, "train": 0, "test": 0, "expressions": 0}
    codec = ""
    for i in range(cfg.num_videos):
        vid = f"shape{cfg.seed:03d}{i:05d}"
        rng = np.random.default_rng([cfg.seed, i])
        scenario = SCENARIOS[i % len(SCENARIOS)]
        objects = _objects(rng, scenario, cfg)
        frames, owner = render_video(objects, _background(rng, cfg), cfg)
        codec = write_mp4(clips / f"{vid}.mp4", frames, cfg.fps)
        (inst_root / vid).mkdir(exist_ok=True)
        listed_any: set[int] = set()
        for k, t in enumerate(annotated):
            ids = [
                o.instance_id
                for o in objects
                if (owner[t] == o.instance_id).sum() >= MIN_VISIBLE_PIXELS
            ]
            if k == 0 and i % 4 == 3 and ids:
                ids = ids[
                    :1
                ]  # like A2D, some frames annotate one actor only: single-instance layout
            if not ids:
                continue
            listed_any.update(ids)
            write_h5(inst_root / vid / f"{t + 1:05d}.h5", owner[t], ids)
        for o in objects:
            if o.instance_id not in listed_any:
                continue
            others = [p for p in objects if p is not o]
            texts = [o.phrase(unique_description(o, others))]
            if cfg.expressions_per_object > 1:
                full = o.phrase(ATTRIBUTES)
                if full not in texts:
                    texts.append(full)
            for text in texts[: cfg.expressions_per_object]:
                ann_rows.append(f"{vid},{o.instance_id},{text}")
                counts["expressions"] += 1
        subset = 1 if i in test_set else 0
        counts["test" if subset else "train"] += 1
        n_ann = len(list((inst_root / vid).glob("*.h5")))
        videoset_rows.append(
            f"{vid},{scenario},0,{cfg.num_frames},{cfg.height},{cfg.width},{cfg.num_frames},{n_ann},{subset}"
        )
        described[vid] = {
            "scenario": scenario,
            "objects": [
                {k: v for k, v in asdict(o).items() if k not in ("xs", "ys")} for o in objects
            ],
        }
    (root / "Release" / "videoset.csv").write_text("\n".join(videoset_rows) + "\n")
    (ann / "a2d_annotation.txt").write_text("\n".join(ann_rows) + "\n")
    (ann / "a2d_missed_videos.txt").write_text("")
    (root / "refer_shapes.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "codec": codec, "videos": described}, indent=1, sort_keys=True
        )
    )
    return counts


def config_for(scale: str, seed: int, **overrides: int) -> SynthConfig:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return replace(SCALES[scale], seed=seed, **overrides)
