"""Checkpoints (atomic write, full round trip incl. RNG state) and the LR schedule."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from pipelines.checkpoint import (
    is_checkpoint,
    load_metrics,
    load_model_from_checkpoint,
    load_train_state,
    save_checkpoint,
    set_rng_state,
)
from pipelines.config import Recipe, load_recipe
from pipelines.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe("configs/refer_shapes_tiny.yaml", ["optim.backbone_lr_mult=0.1"])


@pytest.fixture(scope="module")
def model(recipe):
    from lstc.model import build_model

    torch.manual_seed(0)
    return build_model(recipe.model)


def test_save_and_load_round_trip(tmp_path, recipe, model):
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, steps_per_epoch=10)
    for p in model.parameters():
        p.grad = torch.ones_like(p) * 0.01
    opt.step()
    sched.step()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    path = save_checkpoint(
        tmp_path / "ckpt",
        model=model,
        recipe=recipe,
        epoch=3,
        global_step=30,
        optimizer=opt,
        scheduler=sched,
        metrics={"val/mean_iou": 0.5, "val/F": float("nan")},
        extra={"history": {"val/mean_iou": [0.1, 0.5]}},
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    assert is_checkpoint(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"
    state = load_train_state(path)
    assert state["epoch"] == 3 and state["global_step"] == 30
    assert state["extra"]["history"]["val/mean_iou"] == [0.1, 0.5]
    assert state["scheduler"]["last_epoch"] == 1
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    metrics = load_metrics(path)
    assert metrics["epoch"] == 3 and metrics["val/mean_iou"] == 0.5 and metrics["val/F"] is None

    loaded, rec = load_model_from_checkpoint(path)
    assert rec == recipe and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    opt2 = build_optimizer(loaded, rec)
    opt2.load_state_dict(state["optimizer"])


def test_save_replaces_existing_checkpoint_atomically(tmp_path, recipe, model):
    first = save_checkpoint(tmp_path / "c", model=model, recipe=recipe, epoch=1, global_step=1)
    second = save_checkpoint(tmp_path / "c", model=model, recipe=recipe, epoch=2, global_step=2)
    assert first == second and load_train_state(second)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_model_from_checkpoint(tmp_path)


def test_backbone_lr_multiplier(recipe, model):
    groups = {g["name"]: g for g in param_groups(model, 1.0, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(0.1) and groups["head"]["lr"] == 1.0
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_language_update_lr_multiplier(model):
    """``update_lr_mult``: the CMAM+ updates (and only they) get a group of their own; at 1 the
    groups are the old two (older checkpoints' optimizer state keeps its layout)."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in param_groups(model, 1.0, 0.1, 0.25)}
    assert groups["language_update"]["lr"] == pytest.approx(0.25)
    update = {names[id(p)] for p in groups["language_update"]["params"]}
    expected = {
        n
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith(("spatial.updates.", "temporal.updates."))
    }
    assert update == expected and expected
    assert not any(".updates." in names[id(p)] for p in groups["head"]["params"])
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert [g["name"] for g in param_groups(model, 1.0, 0.1, 1.0)] == ["head", "backbone"]


def test_schedules():
    paper = load_recipe("configs/a2d_paper.yaml").schedule
    f = lr_factor(paper, epochs=9, steps_per_epoch=100)
    assert f(0) == pytest.approx(0.1)  # warm-up starts at warmup_factor
    assert f(100) == pytest.approx(0.55)  # half-way through the 2-epoch warm-up
    assert f(200) == pytest.approx(1.0) and f(799) == pytest.approx(1.0)
    assert f(800) == pytest.approx(0.1)  # x0.1 at epoch 8
    tiny = load_recipe("configs/refer_shapes_tiny.yaml").schedule
    g = lr_factor(tiny, epochs=4, steps_per_epoch=10)
    assert g(2) == pytest.approx(1.0)  # warm-up (0.2 epoch) over
    assert g(21) == pytest.approx(
        tiny.min_lr_factor + (1 - tiny.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    assert g(40) == pytest.approx(tiny.min_lr_factor)
