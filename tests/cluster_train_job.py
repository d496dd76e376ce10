"""Entrypoint of a Ray Job for the cluster tests: ``lstc train`` with a test's worker callback.

    python tests/cluster_train_job.py --pause-epoch N --pause-dir DIR CONFIG [key=value ...]

Trains ``CONFIG`` with the overrides (as ``lstc train``) and :class:`faults.PauseOnce` on every
worker, inside the job that ``tests/test_cluster_jobs.py`` submits (``RAY_ADDRESS`` is set by
Ray: the run joins the cluster). ``tests/`` is this script's folder, hence importable here;
the callback reaches the workers by value.
"""

from __future__ import annotations

import argparse
import json

import faults

from pipelines.config import load_recipe
from pipelines.train.driver import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pause-epoch", type=int, required=True)
    p.add_argument("--pause-dir", required=True)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    faults.picklable()
    recipe = load_recipe(args.config, args.overrides)
    result = train(recipe, callbacks=[faults.PauseOnce(args.pause_epoch, args.pause_dir)])
    print("result:", json.dumps(result.to_dict(), default=str))


if __name__ == "__main__":
    main()
