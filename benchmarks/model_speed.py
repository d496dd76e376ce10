"""Forward+backward step time and peak memory of LSTC vs. its CSTM baseline, on CPU.

For each preset (default: tiny and paper) both networks are timed in one subprocess with
their training steps alternated (baseline, LSTC, baseline, ...), so that load from other
processes hits both alike; the median step time is reported. Peak resident memory is measured
per network in a fresh subprocess each (build + two steps), so one does not hide the other.
The baseline is ``cfg.baseline()``: both streams, concat fusion, CMAM, no CMAM+ / LASP. For
``lstc_cstm`` (LSTC built on the release) that is exactly the ``cstm`` preset, the CSTM
release: "LSTC vs the exact CSTM anchor"; for our presets (tiny, paper) a CSTM-like network.
Random weights everywhere (``without_pretrained``): nothing is downloaded.

    .venv/bin/python benchmarks/model_speed.py                      # tiny + paper
    .venv/bin/python benchmarks/model_speed.py --presets tiny --iters 20 --batch 4
    .venv/bin/python benchmarks/model_speed.py --presets lstc_cstm --size 160   # vs CSTM

Target: LSTC step time <= 1.3 x the baseline's.

    .venv/bin/python benchmarks/model_speed.py --ops --presets tiny paper   # operators/step

``--ops`` counts the operators one training step dispatches (torch.profiler on CPU), eager vs
``torch.compile`` (inductor): a host-side figure that does not depend on the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup(preset: str, variant: str, batch: int, size: int | None = None):
    import torch

    from lstc.config import LossConfig, ModelConfig
    from lstc.losses import SegmentationLoss
    from lstc.model import build_model

    cfg = ModelConfig.preset(preset).without_pretrained()
    if size:
        cfg = cfg.replace(input_size=(size, size))
    if variant == "baseline":
        cfg = cfg.baseline()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    loss_fn = SegmentationLoss(LossConfig())
    h, w = cfg.input_size
    clip = torch.rand(batch, 3, cfg.num_frames, h, w)
    tok = model.tokenizer(["the man in a red shirt jumping over the fence"] * batch)
    target = (torch.rand(batch, 1, h, w) > 0.8).float()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> tuple[float, float, float]:
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = model(clip, tok["input_ids"], tok["attention_mask"])
        loss, _ = loss_fn(out, target)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return t1 - t0, time.perf_counter() - t0, time.process_time() - c0

    return cfg, model, step


def worker_time(
    preset: str, batch: int, iters: int, warmup: int, threads: int, size: int | None = None
) -> dict:
    """Both networks in one process, steps alternated so that load changes hit both alike."""
    import torch

    from lstc.model import parameter_counts

    torch.set_num_threads(threads)
    setups = {v: _setup(preset, v, batch, size) for v in ("baseline", "lstc")}
    times = {v: {"fwd": [], "step": [], "cpu": []} for v in setups}
    for i in range(warmup + iters):
        for v, (_, _, step) in setups.items():
            fwd, total, cpu = step()
            if i >= warmup:
                times[v]["fwd"].append(fwd)
                times[v]["step"].append(total)
                times[v]["cpu"].append(cpu)
    out = {}
    for v, (cfg, model, _) in setups.items():
        h, w = cfg.input_size
        keys = ("streams", "cmam", "lasp", "fusion", "cmam_style", "decoder_style")
        out[v] = {
            "config": {
                **{k: getattr(cfg, k) for k in keys},
                "encoders": [cfg.spatial_backbone, cfg.temporal_backbone, cfg.text_encoder],
            },
            "input": [batch, 3, cfg.num_frames, h, w],
            "forward_s": statistics.median(times[v]["fwd"]),
            "step_s": statistics.median(times[v]["step"]),
            "step_min_s": min(times[v]["step"]),
            # CPU time of this process: with one thread, robust to other processes' load
            "cpu_step_s": statistics.median(times[v]["cpu"]),
            "steps_s": times[v]["step"],
            "params": parameter_counts(model),
        }
    return out


def worker_mem(
    preset: str, variant: str, batch: int, threads: int, size: int | None = None
) -> dict:
    """Peak resident memory of one network (own process): build, then two training steps."""
    import torch

    torch.set_num_threads(threads)
    _, _, step = _setup(preset, variant, batch, size)
    rss_model = _rss_mib()
    for _ in range(2):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_after_build_mib": rss_model, "peak_rss_mib": peak}


# ---------------------------------------------------------------- operators per training step
#: ``--ops``: host-side work of one training step (forward + loss + backward + Adam step),
#: counted by torch.profiler on CPU, eager vs torch.compile (inductor). Counts do not depend
#: on the machine's speed. ``aten ops`` = every ATen operator call, nested ones included;
#: ``kernels`` = leaf ATen calls (no ATen call inside: the ones that run a kernel) plus the
#: fused kernels inductor generated (profiled via ``cpp.enable_kernel_profile``) - on a GPU
#: each is one kernel launch; ``compute kernels`` leave out the metadata-only leaves (views,
#: detach, empty...). The Adam step is counted apart: on CPU its foreach ops loop over the
#: tensors (one op each), on CUDA they are multi-tensor kernels, so that part overstates it.


#: leaf ATen ops that only make or reinterpret tensor metadata (no kernel on a GPU)
_METADATA_OPS = frozenset(
    f"aten::{n}"
    for n in (
        "as_strided view detach resolve_conj resolve_neg empty empty_strided empty_like "
        "_reshape_alias t transpose permute unsqueeze squeeze expand slice select alias "
        "_unsafe_view lift_fresh set_ resize_ _local_scalar_dense unbind split chunk"
    ).split()
)


def _profile_step(step) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return _count_ops(list(prof.events()))


def _count_ops(events: list) -> dict:

    def is_aten(e) -> bool:
        return e.name.startswith("aten::")

    def is_fused(e) -> bool:
        return "cpp_fused" in e.name or "triton_" in e.name

    aten = [e for e in events if is_aten(e)]
    leaf = [e for e in aten if not any(is_aten(c) for c in e.cpu_children)]
    fused = [e for e in events if is_fused(e)]
    compute = [e for e in leaf if e.name not in _METADATA_OPS]
    top: dict[str, int] = {}
    for e in leaf + fused:
        key = "fused kernel" if is_fused(e) else e.name
        top[key] = top.get(key, 0) + 1
    return {
        "aten_ops": len(aten),
        "leaf_ops": len(leaf),
        "fused_kernels": len(fused),
        "kernels": len(leaf) + len(fused),
        "compute_kernels": len(compute) + len(fused),
        "top": sorted(top.items(), key=lambda kv: -kv[1])[:8],
    }


def worker_ops(preset: str, mode: str, batch: int, threads: int) -> dict:
    """Operators of one training step after warm-up (``mode``: none = eager, or a
    torch.compile mode; the network and the loss are compiled in place as in training)."""
    import torch

    from lstc.config import LossConfig, ModelConfig
    from lstc.losses import SegmentationLoss
    from lstc.model import build_model

    torch.set_num_threads(threads)
    cfg = ModelConfig.preset(preset).without_pretrained()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    loss_fn = SegmentationLoss(LossConfig())
    h, w = cfg.input_size
    clip = torch.rand(batch, 3, cfg.num_frames, h, w)
    tok = model.tokenizer(["the man in a red shirt jumping over the fence"] * batch)
    target = (torch.rand(batch, 1, h, w) > 0.8).float()
    # foreach: the multi-tensor Adam that CUDA uses by default (CPU defaults to a per-parameter
    # loop); the optimizer is never compiled here, it is counted apart
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)
    if mode != "none":
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
        model.compile(mode=mode)
        loss_fn.compile(mode=mode)

    def fwd_bwd() -> None:
        out = model(clip, tok["input_ids"], tok["attention_mask"])
        loss, _ = loss_fn(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()

    def step() -> None:
        fwd_bwd()
        opt.step()

    t0 = time.perf_counter()
    step()  # warm-up (compiles when compiled)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    step_s = time.perf_counter() - t0
    model_part = _profile_step(fwd_bwd)
    opt_part = _profile_step(opt.step)
    keys = ("aten_ops", "leaf_ops", "fused_kernels", "kernels", "compute_kernels")
    total = {k: model_part[k] + opt_part[k] for k in keys}
    return {
        "first_step_s": first_s,
        "step_s": step_s,
        **total,
        "model_kernels": model_part["kernels"],
        "optimizer_kernels": opt_part["kernels"],
        "model_compute_kernels": model_part["compute_kernels"],
        "top": model_part["top"],
    }


def run_ops(args: argparse.Namespace) -> list[dict]:
    """Print the operators-per-step table of ``args.presets`` (one subprocess per cell)."""
    rows = []
    for preset in args.presets:
        batch = args.batch or (4 if preset.startswith("tiny") else 1)
        cells = {}
        for mode in ("none", args.compile_mode):
            cells[mode] = run_worker(
                args, "--worker-ops", preset, mode, "--batch", str(batch), "--iters", "1"
            )
        eager, comp = cells["none"], cells[args.compile_mode]
        rows.append({"preset": preset, "batch": batch, "eager": eager, "compiled": comp})
        print(f"== {preset}: operators per training step (fwd + loss + bwd + Adam), B={batch}, CPU")
        print(f"{'':28s}{'eager':>12s}{'compiled':>12s}{'ratio':>8s}")
        for key, label in (
            ("aten_ops", "aten ops (all, nested)"),
            ("leaf_ops", "leaf aten ops"),
            ("fused_kernels", "fused kernels (inductor)"),
            ("kernels", "kernels = leaf + fused"),
            ("model_kernels", "  of which fwd+loss+bwd"),
            ("optimizer_kernels", "  of which Adam (foreach)"),
            ("compute_kernels", "compute kernels (no views)"),
            ("model_compute_kernels", "  of which fwd+loss+bwd"),
        ):
            ratio = eager[key] / comp[key] if comp[key] else float("nan")
            print(f"{label:28s}{eager[key]:12d}{comp[key]:12d}{ratio:8.2f}")
        print(f"{'first step (s)':28s}{eager['first_step_s']:12.1f}{comp['first_step_s']:12.1f}")
        print(f"{'step (s)':28s}{eager['step_s']:12.2f}{comp['step_s']:12.2f}")
        print(f"compiled: torch.compile(mode={args.compile_mode!r}, backend='inductor')")
        print("eager top leaf ops (fwd+bwd): " + ", ".join(f"{n} {c}" for n, c in eager["top"]))
        print("compiled top (fwd+bwd): " + ", ".join(f"{n} {c}" for n, c in comp["top"]) + "\n")
        sys.stdout.flush()
    return rows


def run_worker(args: argparse.Namespace, *worker_args: str) -> dict:
    cmd = [sys.executable, __file__, *worker_args, "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads)]
    if args.size:
        cmd += ["--size", str(args.size)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"worker {worker_args} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    p.add_argument("--batch", type=int, default=None, help="default: 4 for tiny, 1 otherwise")
    p.add_argument("--iters", type=int, default=None, help="default: 20 for tiny, 3 otherwise")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=None, help="input H = W (multiple of 32)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker-time", metavar="PRESET", help=argparse.SUPPRESS)
    p.add_argument("--worker-mem", nargs=2, metavar=("PRESET", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument(
        "--ops",
        action="store_true",
        help="only the operators-per-training-step table (torch.profiler), eager vs compiled",
    )
    p.add_argument("--compile-mode", default="default", choices=["default", "max-autotune"])
    p.add_argument("--worker-ops", nargs=2, metavar=("PRESET", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_ops:
        print(json.dumps(worker_ops(*args.worker_ops, args.batch, args.threads)))
        return
    if args.ops:
        rows = run_ops(args)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
    if args.worker_time:
        r = worker_time(
            args.worker_time, args.batch, args.iters, args.warmup, args.threads, args.size
        )
        print(json.dumps(r))
        return
    if args.worker_mem:
        print(json.dumps(worker_mem(*args.worker_mem, args.batch, args.threads, args.size)))
        return

    results = []
    for preset in args.presets:
        batch = args.batch or (4 if preset.startswith("tiny") else 1)
        iters = args.iters or (20 if preset.startswith("tiny") else 3)
        t = run_worker(args, "--worker-time", preset, "--batch", str(batch), "--iters", str(iters))
        for v in ("baseline", "lstc"):
            m = run_worker(args, "--worker-mem", preset, v, "--batch", str(batch))
            t[v].update(m)
        b, lstc = t["baseline"], t["lstc"]
        ratio = lstc["step_s"] / b["step_s"]
        results.append({"preset": preset, "threads": args.threads, "ratio": ratio, **t})
        print(f"== {preset}: input {lstc['input']} (B,C,T,H,W), {args.threads} thread(s), CPU")
        release = b["config"]["cmam_style"] == b["config"]["decoder_style"] == "release"
        exact = release and b["config"]["encoders"] == ["resnet50", "i3d", "glove"]
        what = (
            "the exact CSTM release (cstm preset)"
            if exact
            else "the release's CMAM and decoder on our encoders"
            if release
            else "CSTM-like (our layers)"
        )
        print(f"   baseline = {what}")
        print(f"   {iters} alternated steps per network after {args.warmup} warm-up; medians")
        print(f"{'':26s}{'baseline':>14s}{'LSTC':>14s}")
        print(f"{'step time fwd+bwd (s)':26s}{b['step_s']:14.3f}{lstc['step_s']:14.3f}")
        print(f"{'  fastest step (s)':26s}{b['step_min_s']:14.3f}{lstc['step_min_s']:14.3f}")
        print(f"{'CPU time per step (s)':26s}{b['cpu_step_s']:14.3f}{lstc['cpu_step_s']:14.3f}")
        print(f"{'forward time (s)':26s}{b['forward_s']:14.3f}{lstc['forward_s']:14.3f}")
        print(f"{'peak RSS (MiB)':26s}{b['peak_rss_mib']:14.0f}{lstc['peak_rss_mib']:14.0f}")
        print(
            f"{'peak RSS - model (MiB)':26s}{b['peak_rss_mib'] - b['rss_after_build_mib']:14.0f}"
            f"{lstc['peak_rss_mib'] - lstc['rss_after_build_mib']:14.0f}"
        )
        print("parameters:")
        for key in lstc["params"]:
            print(f"  {key:24s}{b['params'][key]:14,d}{lstc['params'][key]:14,d}")
        verdict = "OK" if ratio <= 1.3 else "ABOVE TARGET"
        cpu_ratio = lstc["cpu_step_s"] / b["cpu_step_s"]
        results[-1]["cpu_ratio"] = cpu_ratio
        print(f"LSTC / baseline median step time = {ratio:.3f} (target <= 1.3: {verdict})")
        print(f"LSTC / baseline median CPU time per step = {cpu_ratio:.3f}\n")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
