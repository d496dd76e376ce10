"""Motion pretraining of the tiny temporal encoder: the miniature's Kinetics-400.

The paper's temporal stream starts from an I3D/S3D pretrained on Kinetics-400, so it sees
motion before it ever reads an expression. The "tiny" 3D encoder of the CPU recipes starts
from random weights, and on refer-shapes it never learns motion (issue 14,
benchmarks/motion_study.py): trained to *classify* an object's motion it reaches ~95% in one
epoch, but inside the segmentation network, where the motion is only named by the
expression, the direction features and their binding to the words have to appear together,
and within the recipe's budget they do not (motion-only expressions stay at the ~46 mean IoU
of segmenting both identical shapes).

This module gives the tiny encoder what Kinetics gives the real ones: a supervised motion
task on *other* videos. It renders synthetic videos with the refer-shapes generator under its
own seed (``seed`` 1000 by default; the benchmark is generated with seed 0, so no benchmark
video is seen), cuts clips with the recipe's geometry around the generator's annotated frames,
and trains the encoder with one linear head per stage on the features of the target-aligned
time slice pooled inside each object's mask (``mean_{p in mask} slice_k(p)``), with
cross-entropy over the object's motion (left, right, up, down, still, bouncing — the
generator's own labels, no expression is read). Horizontal flips (labels left/right swapped)
double the data. The encoder's state dict is saved; the bundled ``SHAPES_MOTION_V1`` file
(lstc/pretrained/) was made by ``lstc pretrain-temporal`` with the defaults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the six motion classes of refer-shapes (data_prep.synthetic.MOTIONS), in label order
CLASSES = ("left", "right", "up", "down", "still", "bouncing")
_FLIP = {"left": "right", "right": "left"}


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run (the defaults made the bundled SHAPES_MOTION_V1)."""

    videos: int = 300  # synthetic videos of the demo geometry (120x160, 32 frames)
    seed: int = 1000  # generator seed: the benchmark uses 0
    num_frames: int = 4  # clip geometry of configs/refer_shapes_tiny.yaml
    stride: int = 3
    size: int = 64
    tiny_width: int = 8
    epochs: int = 2
    batch_size: int = 2
    lr: float = 2e-3
    test_fraction: float = 0.2  # videos held out to report the accuracy
    flip: float = 0.5
    train_seed: int = 0


@dataclass
class MotionSample:
    clip: np.ndarray  # uint8 [T, size, size, 3]
    mask: np.ndarray  # float32 [size, size], the object at the target frame
    label: int  # index into CLASSES


def _resize(x: np.ndarray, size: int, *, mask: bool = False) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if mask:
        out = F.interpolate(t[None, None], size=(size, size), mode="area")[0, 0]
        return (out.numpy() >= 0.5).astype(np.float32)
    t = t.permute(0, 3, 1, 2)  # [T, 3, H, W]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def motion_samples(cfg: PretrainConfig, videos: range) -> Iterator[MotionSample]:
    """Clips of the recipe's geometry around each annotated frame of the synthetic videos
    ``videos`` (generator seed ``cfg.seed``), one sample per visible object."""
    from data_prep.schema import clip_frame_indices
    from data_prep.synthetic import (
        MIN_VISIBLE_PIXELS,
        SCENARIOS,
        _background,
        _objects,
        annotated_frames,
        config_for,
        render_video,
    )

    scfg = config_for("demo", cfg.seed, num_videos=max(videos.stop, 1))
    for i in videos:
        rng = np.random.default_rng([scfg.seed, i])
        objects = _objects(rng, SCENARIOS[i % len(SCENARIOS)], scfg)
        frames, owner = render_video(objects, _background(rng, scfg), scfg)
        for t in annotated_frames(scfg):
            idx, _ = clip_frame_indices(t, scfg.num_frames, cfg.num_frames, cfg.stride)
            clip = _resize(frames[idx], cfg.size)
            for o in objects:
                m = owner[t] == o.instance_id
                if m.sum() < MIN_VISIBLE_PIXELS:
                    continue
                mask = _resize(m.astype(np.float32), cfg.size, mask=True)
                if mask.sum() == 0:
                    continue
                yield MotionSample(clip, mask, CLASSES.index(o.motion))


def _batches(
    samples: list[MotionSample], cfg: PretrainConfig, rng: np.random.Generator | None
) -> Iterator[tuple[Any, Any, Any]]:
    """(clip [B,3,T,H,W] in [0,1], mask [B,1,H,W], labels [B]); shuffled and randomly
    flipped when ``rng`` is given (a flip swaps left and right)."""
    import torch

    order = rng.permutation(len(samples)) if rng is not None else np.arange(len(samples))
    bs = cfg.batch_size
    for i in range(0, len(order), bs):
        clips, masks, labels = [], [], []
        for j in order[i : i + bs]:
            s = samples[j]
            clip, mask, label = s.clip, s.mask, CLASSES[s.label]
            if rng is not None and rng.random() < cfg.flip:
                clip, mask, label = clip[:, :, ::-1], mask[:, ::-1], _FLIP.get(label, label)
            clips.append(torch.from_numpy(np.ascontiguousarray(clip)))
            masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
            labels.append(CLASSES.index(label))
        x = torch.stack(clips).permute(0, 4, 1, 2, 3).float().div_(255.0)
        yield x, torch.stack(masks)[:, None], torch.tensor(labels)


class MotionClassifier:
    """The tiny temporal encoder + one linear head per stage on the mask-pooled slice."""

    def __init__(self, cfg: PretrainConfig) -> None:
        import torch

        from lstc.backbones import TemporalEncoder

        self.cfg = cfg
        self.target_index = cfg.num_frames // 2
        self.encoder = TemporalEncoder(backbone="tiny", weights=None, tiny_width=cfg.tiny_width)
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(c, len(CLASSES)) for c in self.encoder.channels
        )

    def parameters(self) -> list[Any]:
        return [*self.encoder.parameters(), *self.heads.parameters()]

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)
        self.heads.train(mode)

    def logits(self, clip: Any, mask: Any) -> list[Any]:
        """Per stage ``[B, classes]``."""
        import torch.nn.functional as F

        from lstc.backbones import aligned_slice

        x, out = self.encoder.normalize(clip), []
        for stage, head in zip(self.encoder.stages, self.heads, strict=True):
            x = stage(x)
            sl = aligned_slice(x, target_index=self.target_index, num_frames=self.cfg.num_frames)
            m = F.interpolate(mask, size=sl.shape[-2:], mode="area")
            out.append(head((sl * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1e-6)))
        return out


def accuracy(model: MotionClassifier, samples: list[MotionSample]) -> list[float]:
    """Test accuracy of every stage's head."""
    import torch

    model.train(False)
    right, n = [0] * len(model.heads), 0
    with torch.no_grad():
        for clip, mask, y in _batches(samples, model.cfg, None):
            for k, z in enumerate(model.logits(clip, mask)):
                right[k] += int((z.argmax(1) == y).sum())
            n += len(y)
    return [r / max(n, 1) for r in right]


def pretrain(
    cfg: PretrainConfig,
    out: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, save the encoder's state dict to ``out`` and ``out`` + ``.json`` (settings,
    per-epoch test accuracy per stage, chance level); returns that record."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.train_seed)
    n_test = max(1, round(cfg.videos * cfg.test_fraction))
    t0 = time.perf_counter()
    train = list(motion_samples(cfg, range(n_test, cfg.videos)))
    test = list(motion_samples(cfg, range(n_test)))
    if not train or not test:
        raise ValueError(f"{cfg.videos} videos give no training or test clip; use more videos")
    counts = np.bincount([s.label for s in test], minlength=len(CLASSES))
    record: dict[str, Any] = {
        "config": asdict(cfg),
        "classes": list(CLASSES),
        "samples": {"train": len(train), "test": len(test)},
        "chance": float(counts.max() / counts.sum()),
        "epochs": [],
    }
    log(
        f"lstc pretrain-temporal: {len(train)} training / {len(test)} test clips from "
        f"{cfg.videos} synthetic videos (seed {cfg.seed}), {time.perf_counter() - t0:.0f} s"
    )
    model = MotionClassifier(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.train_seed)
    steps = -(-len(train) // cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        model.train(True)
        total = 0.0
        bar = tqdm(
            _batches(train, cfg, rng),
            total=steps,
            desc=f"pretrain epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            unit="batch",
        )
        for clip, mask, y in bar:
            loss = sum(F.cross_entropy(z, y) for z in model.logits(clip, mask))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        acc = accuracy(model, test)
        record["epochs"].append(
            {"epoch": epoch, "loss": total / steps, "test_accuracy": [round(a, 4) for a in acc]}
        )
        log(
            f"lstc pretrain-temporal: epoch {epoch}/{cfg.epochs} | loss {total / steps:.3f} | "
            "test accuracy per stage "
            + " ".join(f"{100 * a:.1f}" for a in acc)
            + f" (chance {100 * record['chance']:.1f})"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(model.encoder.state_dict(), tmp)
    tmp.replace(out)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    out.with_name(out.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"lstc pretrain-temporal: encoder weights -> {out}")
    return record


__all__ = [
    "CLASSES",
    "MotionClassifier",
    "PretrainConfig",
    "accuracy",
    "motion_samples",
    "pretrain",
]
