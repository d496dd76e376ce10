"""``lstc predict``: segment the object each sentence refers to in every frame of a video.

VIDEO is any file decord or PyAV reads (mp4, avi, mkv, mpg, webm...) or a folder of frame
images. Every frame (or those of --frames A:B, 0-based, B excluded) is a target frame with its
clip around it (the model's clip length and stride, clamped at the video's edges). The video is
decoded once, in windows, whatever the number of sentences and its length. For each sentence,
OUT/<sentence-slug>/ gets masks/00000.png... (0/255 at the video's size, named by frame),
overlay.mp4 (prediction tint, caption, legend), preview.png (a strip of overlays) and
scores.csv (frame, score, area). bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  lstc predict my_video.mp4 "the dog jumping over the fence" --model models:/lstc-refer-shapes-tiny@champion
  lstc predict frames/ "the red square" "the blue circle" --checkpoint outputs/ckpt --frames 0:50"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="video file or folder of frame images")
    p.add_argument("expressions", nargs="+", metavar="EXPRESSION", help="referring sentence(s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", default=None, help="registered model: models:/<name>@<alias> or /<version>"
    )
    src.add_argument("--checkpoint", default=None, help="checkpoint directory (or URI)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI of --model (default: env / ./mlflow.db)",
    )
    p.add_argument("--frames", default=None, metavar="A:B", help="target frames (default: all)")
    p.add_argument(
        "--out", default=None, help="output folder (default: outputs/predict/<video name>)"
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="target frames per forward pass")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mask threshold (default: the recipe's eval.threshold, with its eval.threshold_rule)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipelines.checkpoint import IncompleteCheckpointError
    from pipelines.mlops.registry import RegistryError
    from pipelines.predict import PredictInputError

    try:
        return _run(args)
    except (PredictInputError, RegistryError, IncompleteCheckpointError) as exc:
        print(f"lstc predict: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.checkpoint import load_model_from_checkpoint
    from pipelines.mlops.registry import load_bundle
    from pipelines.mlops.serving import ServingSpec
    from pipelines.predict import (
        PredictInputError,
        check_expression,
        open_source,
        parse_frames,
        run_predict,
    )

    texts = [check_expression(e) for e in args.expressions]  # fail before loading the model
    source = open_source(args.video)  # same for an unreadable video (no frame decoded yet)
    parse_frames(args.frames, source.num_frames)  # and for a range outside the video
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictInputError("--device cuda but no CUDA device is visible: use --device cpu")
    if args.model:
        model, recipe, spec = load_bundle(args.model, tracking_uri=args.tracking_uri)
    else:
        model, recipe = load_model_from_checkpoint(args.checkpoint)
        spec = ServingSpec.from_shards(recipe.data.root)
    model.to(device)
    out = Path(args.out) if args.out else Path("outputs/predict") / Path(args.video).name
    report = run_predict(
        model,
        recipe,
        args.video,
        texts,
        out,
        spec=spec.clip,
        frames=args.frames,
        batch_size=args.batch_size,
        threshold=spec.threshold if args.threshold is None else args.threshold,
        progress=not args.no_progress,
        source=source,
    )
    print(
        f"{len(report.frames)} frames x {len(texts)} expression(s) in {report.seconds:.1f} s "
        f"({report.frames_per_second:.1f} frames/s on {device})"
    )
    for text, folder in report.folders.items():
        print(f"  {text!r}: {folder}")
    return 0
