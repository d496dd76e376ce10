"""GPU training-step throughput of the LSTC network: DDP over NCCL, bf16 autocast vs fp32.

Runs the same step the Ray Train loop runs (``lstc.model`` forward, ``SegmentationLoss``,
backward, gradient clipping, AdamW step) inside a ``DistributedDataParallel`` wrapper on an
NCCL process group (one process per GPU of this machine; world size 1 on a one-GPU machine
still goes through NCCL's all-reduce), with the loop's own autocast helper
(``pipelines.train.loop._autocast``: bf16 on CUDA). Random weights and random clips: nothing is
downloaded. Prints samples/s, the step-time ratio fp32 / bf16, peak GPU memory, and how far
the bf16 loss of the first step is from the fp32 one (same weights, same batch).

    python benchmarks/gpu_step.py                          # paper preset, batch 8
    python benchmarks/gpu_step.py --preset tiny --batch 4  # smoke run (CPU works too, no DDP)
    python benchmarks/gpu_step.py --tokenizer /path/to/bert-tokenizer-dir   # offline tokenizer
    python benchmarks/gpu_step.py --batch 16 --bn-float32 --profile   # BatchNorm on cuDNN in bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_dist(device) -> bool:
    """An NCCL process group of this process alone (rank 0 of 1) when on CUDA."""
    import torch.distributed as dist

    if device.type != "cuda":
        return False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    return True


def run(args: argparse.Namespace) -> dict:
    import torch

    from lstc.config import LossConfig, ModelConfig
    from lstc.losses import SegmentationLoss
    from lstc.model import build_model
    from pipelines.train.loop import _autocast
    from pipelines.train.norm_precision import batchnorm_float32

    use_cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    ddp = _init_dist(device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    cfg = ModelConfig.preset(args.preset).without_pretrained()
    if args.tokenizer:
        cfg = cfg.replace(tokenizer=args.tokenizer)
    if args.variant == "baseline":
        cfg = cfg.baseline()
    h, w = cfg.input_size
    gen = torch.Generator().manual_seed(0)
    clip = torch.rand(args.batch, 3, cfg.num_frames, h, w, generator=gen).to(device)
    target = (torch.rand(args.batch, 1, h, w, generator=gen) > 0.9).float().to(device)
    texts = ["the man in a red shirt jumping over the fence"] * args.batch

    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "variant": args.variant,
        "batch": args.batch,
        "input": [args.batch, 3, cfg.num_frames, h, w],
        "ddp_backend": "nccl" if ddp else None,
    }
    first_loss: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        if args.bn_float32:  # bf16 input -> cuDNN's float32 BatchNorm (fp32 runs unchanged)
            result["bn_float32_layers"] = batchnorm_float32(model)
        tok = model.tokenizer(texts)
        ids, attn = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        net = (
            torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
            if ddp
            else model
        )
        loss_fn = SegmentationLoss(LossConfig()).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        amp = precision == "bf16"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, losses = [], []
        for i in range(args.warmup + args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with _autocast(device, amp):
                out = net(clip, ids, attn)
                loss, _ = loss_fn(out, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            losses.append(float(loss.detach()))
            if i >= args.warmup:
                times.append(dt)
        if args.profile and device.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                with _autocast(device, amp):
                    out = net(clip, ids, attn)
                    loss, _ = loss_fn(out, target)
                loss.backward()
                torch.cuda.synchronize(device)
            print(f"--- {precision}: top CUDA kernels of one step")
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
        step = statistics.median(times)
        first_loss[precision] = losses[0]
        result[precision] = {
            "median_step_s": step,
            "samples_per_s": args.batch / step,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else None,
            "logits_dtype": str(out.logits.dtype),
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "all_finite": all(map(math.isfinite, losses)),
        }
        del net, model, opt, out, loss
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["speedup_bf16_over_fp32"] = (
        result["fp32"]["median_step_s"] / result["bf16"]["median_step_s"]
    )
    result["first_loss_rel_diff"] = abs(first_loss["bf16"] - first_loss["fp32"]) / abs(
        first_loss["fp32"]
    )
    if ddp:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="paper")
    p.add_argument("--variant", default="lstc", choices=["lstc", "baseline"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tokenizer", default=None, help="tokenizer name or local directory")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is present")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark")
    p.add_argument("--profile", action="store_true", help="print the top CUDA kernels of a step")
    p.add_argument(
        "--bn-float32",
        action="store_true",
        help="BatchNorm in float32 on bf16 input (cuDNN kernel; pipelines/train/norm_precision.py)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    res = run(args)
    print(f"{res['device']} (torch {res['torch']}), DDP backend: {res['ddp_backend']}")
    print(f"{args.preset}/{args.variant}, input {res['input']} (B,C,T,H,W)")
    for prec in ("fp32", "bf16"):
        r = res[prec]
        mem = f"{r['peak_mem_gib']:.2f} GiB" if r["peak_mem_gib"] is not None else "n/a"
        print(
            f"  {prec}: {r['median_step_s'] * 1e3:8.1f} ms/step  {r['samples_per_s']:7.1f} samples/s"
            f"  peak {mem}  logits {r['logits_dtype']}  loss {r['loss_first']:.4f} -> "
            f"{r['loss_last']:.4f}  finite {r['all_finite']}"
        )
    print(f"  bf16 speed-up over fp32: {res['speedup_bf16_over_fp32']:.2f}x")
    print(f"  first-step loss, bf16 vs fp32: relative difference {res['first_loss_rel_diff']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
