"""``lstc pretrain-temporal``: motion pretraining of the tiny 3D encoder (the miniature's Kinetics).

Train the "tiny" temporal encoder to classify the motion of synthetic shapes (left, right,
up, down, still, bouncing) on refer-shapes videos rendered under their own seed (not the
benchmark's), and save its state dict for ``model.temporal_weights`` (see
pipelines/motion_pretrain.py for the task). The bundled weights ``SHAPES_MOTION_V1``, which
configs/refer_shapes_tiny.yaml uses, were made with the defaults; the accuracy per epoch is
written next to the weights (FILE.json).
"""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lstc pretrain-temporal --out outputs/tiny_temporal_motion.pt
  lstc train --config configs/refer_shapes_tiny.yaml model.temporal_weights=outputs/tiny_temporal_motion.pt"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipelines.motion_pretrain import PretrainConfig

    d = PretrainConfig()
    p.add_argument("--out", required=True, help="state-dict file to write (+ FILE.json)")
    p.add_argument("--videos", type=int, default=d.videos, help=f"synthetic videos ({d.videos})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"generator seed ({d.seed})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs ({d.epochs})")
    p.add_argument("--frames", type=int, default=d.num_frames, help="clip length")
    p.add_argument("--stride", type=int, default=d.stride, help="frame stride of the clip")
    p.add_argument("--size", type=int, default=d.size, help="clip height = width")
    p.add_argument("--width", type=int, default=d.tiny_width, help="model.tiny_width")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.motion_pretrain import PretrainConfig, pretrain

    if args.videos < 2:
        raise SystemExit("lstc pretrain-temporal: --videos must be at least 2 (train + test)")
    torch.set_num_threads(1)  # deterministic sums whatever the core count
    cfg = PretrainConfig(
        videos=args.videos,
        seed=args.seed,
        epochs=args.epochs,
        num_frames=args.frames,
        stride=args.stride,
        size=args.size,
        tiny_width=args.width,
        lr=args.lr,
    )
    pretrain(cfg, args.out, progress=not args.no_progress)
    return 0
