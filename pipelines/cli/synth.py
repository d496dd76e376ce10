"""``lstc synth``: generate the refer-shapes synthetic benchmark (A2D Sentences layout).

Generate refer-shapes: moving shapes over textured backgrounds with referring expressions
that need motion or appearance cues. Deterministic by seed; read it with `lstc prep
--dataset refer_shapes --root DIR`.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument(
        "--scale",
        default="tiny",
        choices=["tiny", "demo"],
        help="tiny: 8 videos (tests); demo: 300",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--videos", type=int, default=None, help="override the number of videos of the scale"
    )


def run(args: argparse.Namespace) -> int:
    from data_prep.synthetic import config_for, generate

    overrides = {"num_videos": args.videos} if args.videos else {}
    cfg = config_for(args.scale, args.seed, **overrides)
    counts = generate(args.out, cfg)
    print(
        f"refer-shapes ({args.scale}, seed {args.seed}) -> {args.out}: {counts['videos']} videos "
        f"({counts['train']} train / {counts['test']} test), {counts['expressions']} expressions"
    )
    return 0
