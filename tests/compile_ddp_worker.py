"""One rank of the compiled-vs-eager DDP check of tests/test_compile.py (run as a script).

    python tests/compile_ddp_worker.py RANK WORLD PORT OUT.pt

Joins a gloo process group on 127.0.0.1:PORT, then trains the tiny LSTC network twice from the
same seed under ``DistributedDataParallel`` — eager, then compiled in place with
``pipelines.train.speed.compile_modules`` (backend aot_eager) — on this rank's uint8 batches
(``pipelines.train.speed.model_input`` scales them), 2 micro-batches per optimizer step
(``no_sync`` on the first, as the training loop does), plain SGD. Saves the per-micro-batch
losses and the final weights of both runs to OUT.pt.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MICRO_BATCHES = 4
ACCUM = 2
BATCH = 2


def tiny_config():
    """The tiny preset at 32x32 (the smallest input its five stride-2 stages take)."""
    from lstc.config import ModelConfig

    return ModelConfig.preset("tiny").without_pretrained().replace(input_size=(32, 32))


def make_batches(model, rank: int) -> list[dict]:
    import torch

    cfg = model.cfg
    g = torch.Generator().manual_seed(100 + rank)
    h, w = cfg.input_size
    texts = ["the red square moving left", "a small blue circle"]
    tok = model.tokenizer(texts)
    out = []
    for _ in range(MICRO_BATCHES):
        clip = torch.randint(0, 256, (BATCH, 3, cfg.num_frames, h, w), generator=g)
        target = (torch.rand(BATCH, 1, h, w, generator=g) > 0.7).float()
        out.append({"clip": clip.to(torch.uint8), "target": target, **tok})
    return out


def train(compiled: bool, rank: int) -> tuple[list[float], dict]:
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lstc.config import LossConfig
    from lstc.losses import SegmentationLoss
    from lstc.model import build_model
    from pipelines.train.speed import compile_modules, model_input

    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    loss_fn = SegmentationLoss(LossConfig())
    batches = make_batches(model, rank)
    if compiled:
        compile_modules(model, loss_fn, mode="default", backend="aot_eager")
    ddp = DDP(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for i, b in enumerate(batches):
        sync = (i + 1) % ACCUM == 0
        with contextlib.nullcontext() if sync else ddp.no_sync():
            clip = model_input(b["clip"], torch.device("cpu"), channels_last=False)
            out = ddp(clip, b["input_ids"], b["attention_mask"])
            loss, _ = loss_fn(out, b["target"])
            (loss / ACCUM).backward()
        losses.append(float(loss.detach()))
        if sync:
            opt.step()
            opt.zero_grad(set_to_none=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return losses, state


def main() -> None:
    import torch
    import torch.distributed as dist

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        eager_losses, eager_state = train(False, rank)
        comp_losses, comp_state = train(True, rank)
    finally:
        dist.destroy_process_group()
    torch.save({"eager": (eager_losses, eager_state), "compiled": (comp_losses, comp_state)}, out)


if __name__ == "__main__":
    main()
