"""``train.compile`` and ``train.channels_last`` (pipelines/train/speed.py) keep what is computed.

* Compiled vs eager under 2-rank DDP (gloo, two local processes, tests/compile_ddp_worker.py):
  the tiny network and its loss compiled in place (backend ``aot_eager``) give the eager
  losses and, after 2 optimizer steps with gradient accumulation (``no_sync``), the eager
  weights; both ranks hold identical weights. Tolerance: rtol 1e-5 on the losses, 1e-5
  absolute on the weights (SGD lr 0.05; values O(0.1)-O(1)). aot_eager runs the graphs that
  dynamo captures and AOTAutograd functionalises and differentiates - the compiled forward and
  backward - with PyTorch's eager kernels; decompositions change the order of some float32
  reductions (BatchNorm statistics, losses), so results agree to rounding (measured: losses
  differ by < 1e-6), not bit for bit. Inductor is not used here: on a 2-core machine its C++
  kernel builds of this network take minutes (benchmarks/model_speed.py exercises it).
* Channels-last (4-D weights channels_last, 5-D channels_last_3d, clip channels_last_3d)
  vs contiguous: float32 logits within 1e-5 absolute + 1e-4 relative and the loss within 1e-5
  relative (another memory layout lets oneDNN pick other kernels, another summation order);
  in float64 logits, loss and every gradient agree to 1e-10: never other maths.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port

REPO = Path(__file__).resolve().parent.parent


def _tiny_batch(model, batch: int = 2, seed: int = 0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.input_size
    clip = torch.randint(0, 256, (batch, 3, cfg.num_frames, h, w), generator=g).to(torch.uint8)
    target = (torch.rand(batch, 1, h, w, generator=g) > 0.7).float()
    tok = model.tokenizer(["the red square moving left", "a small blue circle"][:batch])
    return clip, tok["input_ids"], tok["attention_mask"], target


def _channels_last_run(channels_last: bool, dtype: torch.dtype):
    from lstc.config import LossConfig, ModelConfig
    from lstc.losses import SegmentationLoss
    from lstc.model import build_model
    from pipelines.train.speed import model_input, to_channels_last

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").without_pretrained().replace(input_size=(32, 32))
    model = build_model(cfg).to(dtype).train()
    if channels_last:
        to_channels_last(model)
        convs = [p for p in model.parameters() if p.dim() in (4, 5)]
        assert convs, "the network has conv weights"
        for p in convs:
            fmt = torch.channels_last if p.dim() == 4 else torch.channels_last_3d
            assert p.is_contiguous(memory_format=fmt)
    clip, ids, attn, target = _tiny_batch(model)
    x = model_input(clip, torch.device("cpu"), channels_last=channels_last).to(dtype)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt)
    out = model(x, ids, attn)
    loss, _ = SegmentationLoss(LossConfig()).to(dtype)(out, target.to(dtype))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), float(loss.detach()), grads


def test_channels_last_keeps_outputs_and_gradients():
    """float32 (what training runs): same logits and loss to rounding. float64: same logits,
    loss and gradients to 1e-10 - the maths is unchanged. (float32 gradients are compared in
    float64 only: through BatchNorm in training mode, float32 rounding that differs with the
    summation order is amplified to ~1e-2 relative in some weight gradients, in either
    layout alike.)"""
    l0, loss0, _ = _channels_last_run(False, torch.float32)
    l1, loss1, _ = _channels_last_run(True, torch.float32)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-4)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    l0, loss0, g0 = _channels_last_run(False, torch.float64)
    l1, loss1, g1 = _channels_last_run(True, torch.float64)
    torch.testing.assert_close(l1, l0, atol=1e-10, rtol=0)
    assert loss1 == pytest.approx(loss0, rel=1e-12)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-10, rtol=0, msg=name)


def test_model_input_scales_uint8_on_the_device():
    from pipelines.train.speed import model_input

    clip = (
        torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(1, 1, 1, 2, 2).expand(1, 3, 1, 2, 2)
    )
    x = model_input(clip, torch.device("cpu"), channels_last=False)
    assert x.dtype == torch.float32
    want = torch.tensor([[0.0, 1.0], [128.0, 255.0]], dtype=torch.float32) / 255
    assert torch.equal(x[0, 0, 0], want) and torch.equal(x[0, 2, 0], want)
    f = torch.rand(1, 3, 2, 4, 4)
    assert torch.equal(model_input(f, torch.device("cpu"), channels_last=True), f)


def test_compile_switch_rejects_unknown_modes():
    from pipelines.train.speed import compile_modules

    m = torch.nn.Linear(2, 2)
    compile_modules(m, mode="none")  # eager: nothing compiled
    assert m._compiled_call_impl is None
    with pytest.raises(ValueError, match="train.compile must be one of"):
        compile_modules(m, mode="fast")
    with pytest.raises(ValueError, match="train.compile_backend"):
        compile_modules(m, mode="default", backend="tvm")


def test_compiled_model_trains_like_eager_under_two_rank_ddp(tmp_path):
    port = free_port()
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    # each rank logs to a file: with pipes read one after the other, rank 1 could block on its
    # full pipe while the test waits for rank 0, which waits for rank 1 in an all-reduce
    logs = [tmp_path / f"rank{r}.log" for r in range(2)]
    procs = []
    for r in range(2):
        with open(logs[r], "w") as fh:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(REPO / "tests" / "compile_ddp_worker.py"), str(r), "2"]
                    + [str(port), str(outs[r])],
                    cwd=REPO,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        for p in procs:  # a bound: 650 s measured at load average ~25 on 2 cores
            p.wait(timeout=1800)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text(errors="replace")[-4000:]
    res = [torch.load(o, weights_only=True) for o in outs]
    for r in res:
        eager_losses, eager_state = r["eager"]
        comp_losses, comp_state = r["compiled"]
        # same losses at every micro-batch (the first one: same weights, same input)
        assert comp_losses == pytest.approx(eager_losses, rel=1e-5)
        assert eager_state.keys() == comp_state.keys()  # in-place compile: same state_dict keys
        for k in eager_state:
            torch.testing.assert_close(comp_state[k], eager_state[k], atol=1e-5, rtol=0, msg=k)
    # DDP averaged the gradients: the ranks (different data) hold the same weights, and they moved
    init = res[0]["eager"][1]
    for mode in ("eager", "compiled"):
        a, b = res[0][mode][1], res[1][mode][1]
        assert all(torch.equal(a[k], b[k]) for k in a), mode
    assert res[0]["eager"][0] != res[1]["eager"][0]  # ranks saw different batches
    from compile_ddp_worker import tiny_config

    from lstc.model import build_model

    torch.manual_seed(0)
    fresh = build_model(tiny_config()).state_dict()
    moved = [
        k for k in fresh if fresh[k].is_floating_point() and not torch.equal(fresh[k], init[k])
    ]
    assert len(moved) > len(fresh) // 2
