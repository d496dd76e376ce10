"""``lstc prep``: prepare a benchmark into Parquet shards (Ray Data job).

Index a benchmark in its native layout, decode T-frame clips around every target frame,
resize, JPEG-encode and write versioned Parquet shards with a manifest and a rejects table.
Resumable: rerun the same command to finish an interrupted job. --out may be an object-store
URI (s3://bucket/prefix, gs://bucket/prefix, file://...): S3 credentials come from the AWS
chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, instance profile), a non-AWS
endpoint from AWS_ENDPOINT_URL_S3=http://host:port or the URI query
?endpoint_override=host:port&scheme=http; on a cluster every node needs them. --root stays a
local folder or shared mount.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help="a2d | jhmdb | jhmdb_mttr (MTTR's 3-frame list) | ytvos | davis | custom | refer_shapes",
    )
    p.add_argument(
        "--root",
        required=True,
        help="dataset root in its native layout: a local folder or a shared mount on every "
        "node (videos are decoded from local files; URIs are refused)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder or URI for the shards (s3://bucket/prefix, gs://..., file://...; "
        "on a cluster: an object store or shared mount)",
    )
    p.add_argument("--frames", type=int, default=8, help="frames per clip T (default 8)")
    p.add_argument("--stride", type=int, default=2, help="frame stride inside a clip (default 2)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(320, 320),
        metavar=("H", "W"),
        help="prep size (default 320 320)",
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames (default 90)"
    )
    p.add_argument(
        "--min-video-frames",
        type=int,
        default=1,
        help="reject videos shorter than this (default 1)",
    )
    p.add_argument(
        "--clips-per-shard", type=int, default=64, help="clips per Parquet shard (default 64)"
    )
    p.add_argument(
        "--split", action="append", default=[], help="only this split (repeatable; default all)"
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=None,
        metavar="F",
        help="move about F of the train videos (chosen by a hash of the video id: the same "
        "videos on every run) to a validation split 'heldout', for recipes that select their "
        "model on data.val_split=heldout (e.g. 0.05; default: none)",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: start a local Ray)"
    )
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)"
    )
    p.add_argument(
        "--concurrency", type=int, default=None, help="max shard tasks in flight (default: CPUs)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from data_prep.clipspec import ClipSpec
    from data_prep.heldout import HeldoutSpec
    from data_prep.prep import PrepConfig, PrepStorageError, run_prep
    from data_prep.samples import DatasetRootError

    try:
        heldout = HeldoutSpec(args.heldout_fraction) if args.heldout_fraction is not None else None
    except ValueError as exc:
        print(f"lstc prep: {exc}", file=sys.stderr)
        return 2
    cfg = PrepConfig(
        dataset=args.dataset,
        root=args.root,
        out=args.out,
        clip=ClipSpec(
            num_frames=args.frames,
            stride=args.stride,
            height=args.size[0],
            width=args.size[1],
            jpeg_quality=args.jpeg_quality,
            min_video_frames=args.min_video_frames,
        ),
        clips_per_shard=args.clips_per_shard,
        splits=tuple(args.split),
        heldout=heldout,
        address=args.address,
        num_cpus=args.num_cpus,
        concurrency=args.concurrency,
        progress=not args.no_progress,
    )
    try:
        summary = run_prep(cfg)
    except PrepStorageError as exc:  # the output store failed: rerun to resume
        print(f"lstc prep: {exc}", file=sys.stderr)
        return 1
    except (DatasetRootError, ValueError) as exc:
        print(f"lstc prep: {exc}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0
