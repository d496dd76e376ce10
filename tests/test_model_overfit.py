"""The network overfits a handful of synthetic referring samples, for every ablation switch.

Two clips, two objects each; each object is referred to by "the <colour> <shape>", so the two
samples of a clip differ only in the expression: a model that ignores language cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from model_synth import make_samples, mean_iou

from lstc.config import LossConfig, ModelConfig
from lstc.losses import SegmentationLoss
from lstc.model import build_model

SIZE = 32
MAX_STEPS = 300
EVAL_EVERY = 10

VARIANTS = {
    "full": {},
    "cmam_none": {"cmam": "none"},
    "lasp_off": {"lasp": "off"},
    "spatial_only": {"streams": "spatial"},
    "temporal_only": {"streams": "temporal"},
    # also the cmam="cmam" switch value
    "cstm_baseline": {"cmam": "cmam", "lasp": "off", "fusion": "concat"},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_overfits_a_handful_of_samples(variant):
    cfg = ModelConfig.preset("tiny").replace(input_size=(SIZE, SIZE), **VARIANTS[variant])
    torch.manual_seed(0)
    model = build_model(cfg)
    clips, texts, masks = make_samples(
        num_clips=2, size=SIZE, frames=cfg.num_frames, target_index=cfg.target_index, seed=0
    )
    tok = model.tokenizer(texts)
    args = (clips, tok["input_ids"], tok["attention_mask"])
    loss_fn = SegmentationLoss(LossConfig())
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    best = 0.0
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss, _ = loss_fn(model(*args), masks)
        assert torch.isfinite(loss), f"loss is {loss} at step {step}"
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0:
            model.eval()
            with torch.no_grad():
                best = max(best, mean_iou(model(*args).logits, masks))
            if best > 0.9:
                break
    assert best > 0.9, f"{variant}: mean IoU {best:.3f} after {MAX_STEPS} steps"
