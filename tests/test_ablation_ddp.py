"""Every ablation switch combination trains under DDP without the user setting
``find_unused_parameters`` (pipelines/train/ddp.py decides it).

Part 1 runs real ``DistributedDataParallel`` over gloo in 2 local processes (torch
multiprocessing, a FileStore rendezvous in the test's tmp folder, no ports) on the tiny preset
for EACH combination of ``streams x cmam x lasp`` (3 x 3 x 2 = 18), and on the release-exact
``tiny_cstm`` preset for the 9 with ``lasp=off``: the probe's unused set
equals the hand-derived one, 2 optimizer steps with different data per rank succeed, every
used parameter gets a gradient that is identical on both ranks, every unused one gets none, and
the weights stay identical on both ranks. A negative control shows that the worst combination
fails under plain DDP (the failure the probe prevents).

Part 2 is one real Ray Train run (2 workers, DDP over gloo) of ``cmam=cmam_plus, lasp=off``
through ``pipelines.train.driver.train`` with the recipe's ``train.find_unused_parameters``
left at false: it finishes, and the parameters without gradient keep their initial values
while the others moved.

Unused parameters, derived from lstc/model.py and lstc/decoder.py: the decoder reads the
language only inside LASP, so with ``lasp=off`` the words that leave the encoders are unused.
With ``cmam=cmam_plus`` and the default ``update_feeds=decoder`` the CMAM+ update chain feeds
only the decoder, so every update is unused (``<stream>.updates.*``); with
``update_feeds=all`` (the ``tiny_feeds_all`` rows) the CMAMs read the updated words and only
the update after the last stage is unused (``<stream>.updates.4``); with ``cmam=none`` no
module reads the words at all (``text.*``, ``text_proj.*``); with ``cmam=cmam`` the words feed
every CMAM, so nothing is unused. With ``lasp=on`` everything is used.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

STREAMS = ("both", "spatial", "temporal")
CMAMS = ("none", "cmam", "cmam_plus")
LASPS = ("on", "off")
#: (preset, streams, cmam, lasp): every combination on the tiny preset, and the combinations
#: with lasp off (where unused parameters arise) on the release-exact tiny_cstm preset
COMBOS = (
    [("tiny", *c) for c in itertools.product(STREAMS, CMAMS, LASPS)]
    + [("tiny_cstm", *c) for c in itertools.product(STREAMS, CMAMS, ("off",))]
    + [("tiny_feeds_all", s, "cmam_plus", lasp) for s in STREAMS for lasp in LASPS]
)
STEPS = 2
WORST = ("tiny", "both", "cmam_plus", "off")


def expected_unused_prefixes(preset: str, streams: str, cmam: str, lasp: str) -> set[str]:
    """Module prefixes whose parameters get no gradient (see the module docstring)."""
    if lasp == "on" or cmam == "cmam":
        return set()
    if cmam == "none":
        return {"text.", "text_proj."}
    used = {"both": ("spatial", "temporal")}.get(streams, (streams,))
    last = "4." if preset == "tiny_feeds_all" else ""
    return {f"{s}.updates.{last}" for s in used}


def _tiny_cfg(preset: str, streams: str, cmam: str, lasp: str):
    from lstc.config import ModelConfig

    if preset == "tiny_feeds_all":
        base = ModelConfig.preset("tiny").replace(update_feeds="all")
    else:
        base = ModelConfig.preset(preset)
    return base.replace(streams=streams, cmam=cmam, lasp=lasp)


def _flat(tensors):
    """One flat float64 tensor of `tensors` (empty when there are none)."""
    import torch

    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _ddp_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    """One DDP rank: every combination, then the negative control; results as JSON."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from lstc.config import LossConfig
    from lstc.losses import SegmentationLoss
    from lstc.model import build_model
    from pipelines.train.ddp import ddp_kwargs

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    device = torch.device("cpu")
    results = {}

    def same_on_all_ranks(values: torch.Tensor) -> bool:
        box = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(box, values)
        return all(torch.equal(box[0], b) for b in box[1:])

    for preset, streams, cmam, lasp in COMBOS:
        torch.manual_seed(0)
        model = build_model(_tiny_cfg(preset, streams, cmam, lasp))
        loss_fn = SegmentationLoss(LossConfig())
        kwargs, unused = ddp_kwargs(model, loss_fn, device)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        ddp = DDP(model, **kwargs)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        cfg = model.cfg
        h, w = cfg.input_size
        gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        grads_ok, grads_equal = True, True
        for _ in range(STEPS):
            clip = torch.rand(2, 3, cfg.num_frames, h, w, generator=gen)
            target = (torch.rand(2, 1, h, w, generator=gen) > 0.7).float()
            tok = model.tokenizer(["the red circle", "a square moving left"])
            opt.zero_grad(set_to_none=True)
            out = ddp(clip, tok["input_ids"], tok["attention_mask"])
            loss, _ = loss_fn(out, target)
            loss.backward()
            params = dict(model.named_parameters())
            got = {n for n in names if params[n].grad is not None}
            grads_ok &= got == set(names) - set(unused)
            used = [params[n] for n in names if n not in unused]  # same list on every rank
            grads = [p.grad if p.grad is not None else torch.full_like(p, torch.nan) for p in used]
            grads_equal &= same_on_all_ranks(_flat(grads))
            opt.step()
        results["/".join((preset, streams, cmam, lasp))] = {
            "unused": unused,
            "trainable": names,
            "find_unused_parameters": kwargs["find_unused_parameters"],
            "grads_ok": grads_ok,
            "grads_equal": grads_equal,
            "weights_equal": same_on_all_ranks(_flat(list(model.parameters()))),
        }

    # negative control: the worst combination under DDP's default (find_unused_parameters off)
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(*WORST))
    loss_fn = SegmentationLoss(LossConfig())
    ddp = DDP(model, find_unused_parameters=False)
    error = ""
    h, w = model.cfg.input_size
    try:
        for _ in range(STEPS):
            clip = torch.rand(2, 3, model.cfg.num_frames, h, w)
            tok = model.tokenizer(["the red circle", "a square"])
            out = ddp(clip, tok["input_ids"], tok["attention_mask"])
            loss_fn(out, torch.zeros(2, 1, h, w))[0].backward()
    except RuntimeError as exc:
        error = str(exc)
    results["control_error"] = error
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    import torch.multiprocessing as mp

    base = tmp_path_factory.mktemp("ablation_ddp")
    mp.spawn(_ddp_worker, args=(2, str(base / "store"), str(base)), nprocs=2, join=True)
    return [json.loads((base / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_ablation_trains_under_two_process_ddp(ddp_results, combo):
    key = "/".join(combo)
    r0, r1 = (r[key] for r in ddp_results)
    assert r0["unused"] == r1["unused"]
    prefixes = expected_unused_prefixes(*combo)
    expected = [n for n in r0["trainable"] if any(n.startswith(p) for p in prefixes)]
    assert r0["unused"] == expected
    if prefixes:  # every expected module does hold parameters
        assert all(any(n.startswith(p) for n in expected) for p in prefixes)
    assert r0["find_unused_parameters"] is bool(expected)
    assert r0["grads_ok"] and r1["grads_ok"], "a used parameter got no gradient, or vice versa"
    assert r0["grads_equal"] and r1["grads_equal"], "DDP did not average the gradients"
    assert r0["weights_equal"], "the ranks' weights diverged"


def test_unused_counts_of_the_tiny_preset(ddp_results):
    """Hand count of parameter tensors: a CMAM+ update holds 8 (LayerNorm 2 + the q, kv and
    out Linear layers with bias 6), five updates per stream (one with ``update_feeds=all``:
    the last); the tiny text encoder (2-layer
    BERT, no pooler) + projection hold 41 (embeddings: 3 tables + LayerNorm 2 = 5; per layer
    q/k/v/attention-output/intermediate/output Linear 12 + 2 LayerNorms 4 = 16, twice = 32;
    projection Linear 2 + LayerNorm 2 = 4)."""
    r = ddp_results[0]
    assert len(r["tiny/both/cmam_plus/off"]["unused"]) == 80
    assert len(r["tiny/spatial/cmam_plus/off"]["unused"]) == 40
    assert len(r["tiny_feeds_all/both/cmam_plus/off"]["unused"]) == 16
    assert len(r["tiny_feeds_all/spatial/cmam_plus/off"]["unused"]) == 8
    assert len(r["tiny/both/none/off"]["unused"]) == 41


def test_plain_ddp_fails_on_the_worst_combination(ddp_results):
    """The control: without the probe, DDP stops at the second step."""
    for r in ddp_results:
        assert (
            "did not receive grad" in r["control_error"]
            or "prior iteration" in (r["control_error"])
        ), r["control_error"]


# ------------------------------------------------------------------ one real Ray Train run


@pytest.mark.slow
def test_ray_train_two_workers_cmam_plus_without_lasp(
    ray_local, tiny_shards, tmp_path, monkeypatch
):
    import torch

    from lstc.model import build_model
    from pipelines.checkpoint import load_model_state
    from pipelines.config import load_recipe
    from pipelines.train.driver import train
    from pipelines.train.loop import seed_everything

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe(
        "configs/refer_shapes_tiny.yaml",
        [
            f"data.root={tiny_shards}",
            "model.cmam=cmam_plus",
            "model.lasp=off",
            "train.epochs=1",
            "train.num_workers=2",
            "train.max_failures=0",  # a DDP error fails the run at once
            "data.batch_size=8",  # 3 steps per worker on the tiny shards
            "data.cache_train=false",
            f"train.storage_path={tmp_path / 'runs'}",
            "train.run_name=ablation_ddp",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.num_overlays=0",
            "tracking.system_metrics=false",
            "registry.register=false",
            "data.val_limit=2",
        ],
    )
    assert recipe.train.find_unused_parameters is False  # the user does not touch it
    result = train(recipe)
    assert result.last_metrics["epoch"] == 1
    seed_everything(recipe.train.seed)
    init = build_model(recipe.model).state_dict()
    final = load_model_state(result.last_checkpoint)
    unused = [k for k in init if k.startswith(("spatial.updates.", "temporal.updates."))]
    assert len(unused) == 80  # update_feeds=decoder and no LASP: no update is read
    assert all(torch.equal(final[k], init[k]) for k in unused)
    moved = [k for k in init if k.startswith("decoder.") and init[k].is_floating_point()]
    assert any(not torch.equal(final[k], init[k]) for k in moved)
