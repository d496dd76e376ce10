"""Training data path from object storage vs local disk: samples/s and peak memory.

    python benchmarks/storage_throughput.py [--videos 64] [--size 64 64] [--rounds 3] [--json F]

Prepares a synthetic refer-shapes benchmark once (``--videos`` videos; clips of 4 frames at
stride 2, resized to ``--size``, 8 clips per shard) on local disk, copies the shard root to a
loopback S3 (moto's server in its own process, reached the way a user configures it:
``AWS_ENDPOINT_URL_S3`` and credentials in the environment, a plain ``s3://`` URI), then
times, in one run and on one Ray instance, the training data path of ``lstc train`` over
both roots: ``pipelines.data.build_train_dataset`` (``read_clips`` one task per shard,
JPEG/PNG decoding in a ``flat_map``) -> ``iter_torch_batches`` with the training collate
(joint augmentation, resize to the model input), the tiny recipe's batch size, shuffle buffer
and prefetch, as ``pipelines/train/loop.py`` iterates its Ray Data shard. No model.

Each source gets one warm-up pass (Ray workers start), then ``--rounds`` rounds of one pass
per source, alternating which goes first; the figure is the median pass. The S3 server runs
on the same cores as the pipeline (a real object store does not), so its CPU time per pass
and the machine's load average are printed with the rates. Peak RSS: the driver
(``getrusage``) and the driver plus every Ray process of the instance, sampled every 0.1 s
during the passes of that source (the S3 server process excluded). Prints figures only; the
target is S3/local >= 0.8x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUCKET = "lstc-bench"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    """moto's S3 server on 127.0.0.1 in its own process; returns (process, endpoint URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def make_shards(work: Path, videos: int, size: tuple[int, int]) -> Path:
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.synthetic import config_for, generate

    generate(work / "source", config_for("tiny", seed=0, num_videos=videos))
    run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(work / "source"),
            out=str(work / "shards"),
            clip=ClipSpec(num_frames=4, stride=2, height=size[0], width=size[1]),
            clips_per_shard=8,
            progress=False,
        )
    )
    return work / "shards"


class PeakRss:
    """Peak RSS (bytes) of this process plus its Ray processes, sampled in a thread."""

    def __init__(self, exclude: set[int], every_s: float = 0.1) -> None:
        import psutil

        self._me = psutil.Process()
        self._exclude = exclude
        self._every = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        import psutil

        total = self._me.memory_info().rss
        for p in self._me.children(recursive=True):
            if p.pid in self._exclude:
                continue
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(self._every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_pass(recipe: Any, epoch: int) -> tuple[int, float]:
    """Samples delivered by one pass of the training data path, and its wall time."""
    import numpy as np
    from ray.data.collate_fn import NumpyBatchCollateFn

    from pipelines.data import (
        build_train_dataset,
        collate,
        collate_kwargs,
        epoch_seed,
        rows_from_batch,
    )

    kw = collate_kwargs(recipe)
    seed = epoch_seed(recipe.train.seed, epoch)

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
            return collate(rows_from_batch(batch), train=True, rng=seed, **kw)

    t0 = time.perf_counter()
    ds = build_train_dataset(recipe)
    n = 0
    for batch in ds.iter_torch_batches(
        batch_size=recipe.data.batch_size,
        collate_fn=Collate(),
        drop_last=True,
        local_shuffle_buffer_size=recipe.data.shuffle_buffer or None,
        local_shuffle_seed=seed if recipe.data.shuffle_buffer else None,
        prefetch_batches=recipe.data.prefetch_batches,
    ):
        n += len(batch["text"])
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=64, help="synthetic videos (default 64)")
    ap.add_argument(
        "--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"), help="prep size"
    )
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per source (default 3)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    for k, v in {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "RAY_DEDUP_LOGS": "0",
    }.items():
        os.environ.setdefault(k, v)
    work = Path(tempfile.mkdtemp(prefix="lstc-storage-bench-"))
    s3_proc, endpoint = start_s3()
    # what a user sets for an S3-compatible endpoint (before ray.init: workers inherit it)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL_S3": endpoint,
        }
    )
    import psutil
    import ray
    import ray.data

    from data_prep.shards import load_manifest
    from data_prep.storage import copy_dir, list_files, resolve
    from pipelines.config import load_recipe
    from pipelines.ray_setup import runtime_env

    try:
        ray.init(
            num_cpus=os.cpu_count(),
            object_store_memory=512 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=runtime_env(local=True),
        )
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        t0 = time.perf_counter()
        local = make_shards(work, args.videos, tuple(args.size))
        prep_s = time.perf_counter() - t0
        resolve(f"s3://{BUCKET}?allow_bucket_creation=true")[0].create_dir(BUCKET)
        remote = f"s3://{BUCKET}/shards"
        t0 = time.perf_counter()
        copy_dir(local, remote)
        copy_s = time.perf_counter() - t0
        n_objects = len(list_files(remote))
        manifest = load_manifest(remote)
        assert manifest == load_manifest(local)
        train_shards = [s for s in manifest["shards"] if s["split"] == "train"]
        shard_bytes = sum(s["bytes"] for s in train_shards)

        sources = {"local": str(local), "s3": remote}
        recipes = {
            name: load_recipe(REPO / "configs" / "refer_shapes_tiny.yaml", [f"data.root={root}"])
            for name, root in sources.items()
        }
        for name in sources:  # warm-up: Ray workers, imports
            one_pass(recipes[name], 0)
        rates: dict[str, list[float]] = {name: [] for name in sources}
        samples: dict[str, int] = {}
        peaks: dict[str, int] = dict.fromkeys(sources, 0)
        server_cpu: dict[str, list[float]] = {name: [] for name in sources}
        server = psutil.Process(s3_proc.pid)
        for r in range(args.rounds):
            order = list(sources) if r % 2 == 0 else list(reversed(sources))
            for name in order:
                cpu0 = sum(server.cpu_times()[:2])
                with PeakRss(exclude={s3_proc.pid}) as rss:
                    n, dt = one_pass(recipes[name], r + 1)
                server_cpu[name].append(sum(server.cpu_times()[:2]) - cpu0)
                rates[name].append(n / dt)
                samples[name] = n
                peaks[name] = max(peaks[name], rss.peak)
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        ray.shutdown()
    finally:
        s3_proc.terminate()
        s3_proc.wait()

    med = {name: statistics.median(v) for name, v in rates.items()}
    ratio = med["s3"] / med["local"]
    mib = 1024**2
    print(
        f"\nstorage throughput: training data path (read + decode + collate, tiny recipe, batch "
        f"{recipes['local'].data.batch_size}), {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}"
    )
    print(
        f"data: {args.videos} synthetic videos, {len(train_shards)} train shards "
        f"({shard_bytes / mib:.1f} MiB), {samples['local']} samples/pass, prep "
        f"{args.size[0]}x{args.size[1]}; prep {prep_s:.1f} s, copy to S3 {copy_s:.1f} s "
        f"({n_objects} objects)"
    )
    print(f"{'source':>6} {'median/s':>9} {'min/s':>8} {'max/s':>8} {'peak RSS driver+Ray':>20}")
    for name in sources:
        print(
            f"{name:>6} {med[name]:>9.1f} {min(rates[name]):>8.1f} {max(rates[name]):>8.1f} "
            f"{peaks[name] / mib:>16.0f} MiB"
        )
    print(f"S3 / local: {ratio:.2f}x (target >= 0.8x); driver peak RSS {driver_peak / mib:.0f} MiB")
    print(
        f"CPU of the S3 server process per S3 pass (shares this machine's cores with the "
        f"pipeline): median {statistics.median(server_cpu['s3']):.2f} s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rates": rates,
                    "median": med,
                    "ratio": ratio,
                    "samples_per_pass": samples,
                    "peak_rss_bytes": peaks,
                    "s3_server_cpu_s": server_cpu,
                    "driver_peak_rss_bytes": driver_peak,
                    "train_shards": len(train_shards),
                    "shard_bytes": shard_bytes,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
