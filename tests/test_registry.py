"""Registry: pyfunc logging, champion/challenger aliasing and loading by alias (SQLite store)."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from pipelines.mlops.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_METRIC,
    TAG_VALUE,
    current_champion,
    get_version,
    is_better,
    load_pyfunc,
    load_registered,
    lookup_metric,
    mlflow_uri,
    parse_model_uri,
    register_checkpoint,
)
from pipelines.mlops.serving import decode_mask_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised tiny-preset checkpoint and its recipe (SQLite store in tmp)."""
    import torch

    from lstc.model import build_model
    from pipelines.checkpoint import save_checkpoint
    from pipelines.config import load_recipe

    root = tmp_path_factory.mktemp("registry")
    recipe = load_recipe(
        "configs/refer_shapes_tiny.yaml",
        [
            f"tracking.uri=sqlite:///{root}/mlflow.db",
            "registry.model_name=lstc-test",
            # no shards there: the serving spec is lstc prep's defaults whatever the cwd holds
            f"data.root={root / 'no-shards'}",
        ],
    )
    torch.manual_seed(0)
    model = build_model(recipe.model.without_pretrained()).eval()
    ckpt = save_checkpoint(
        root / "ckpt", model=model, recipe=recipe, epoch=1, global_step=1, metrics={}
    )
    return ckpt, recipe, model, f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="module")
def served_model(tiny_checkpoint):
    """The tiny checkpoint registered once as ``lstc-serve@champion``."""
    ckpt, recipe, model, uri = tiny_checkpoint
    recipe = recipe.replace(["registry.model_name=lstc-serve"])
    version, alias = register_checkpoint(
        ckpt, recipe=recipe, run_id=_run(uri), metrics={"mean_iou": 0.1}
    )
    assert (version, alias) == ("1", CHAMPION)
    return f"models:/lstc-serve@{CHAMPION}", recipe, model, uri


def _run(uri: str) -> str:
    from pipelines.mlops.tracking import Tracker

    tracker = Tracker.start({"tracking": {"uri": uri, "experiment": "reg"}}, system_metrics=False)
    tracker.end()
    assert tracker.run_id is not None
    return tracker.run_id


def test_helpers():
    assert parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert parse_model_uri("models:/m/3") == ("m", None, "3")
    with pytest.raises(ValueError, match="models:/"):
        parse_model_uri("runs:/x/model")
    assert lookup_metric({"val/mean_iou": 0.4}, "mean_iou") == 0.4
    assert lookup_metric({"val/J_and_F": 0.7}, "J&F") == 0.7
    assert math.isnan(lookup_metric({}, "mean_iou"))
    assert is_better(0.5, 0.4, "max") and not is_better(0.4, 0.4, "max")
    assert is_better(0.3, 0.4, "min") and not is_better(0.5, 0.4, "min")
    assert not is_better(math.nan, 0.4, "max") and is_better(0.1, math.nan, "max")


def test_mlflow_uri_restores_environment(monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with mlflow_uri("sqlite:////tmp/elsewhere.db"):
        assert mlflow.get_tracking_uri() == "sqlite:////tmp/elsewhere.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before


def test_champion_challenger(tiny_checkpoint):
    ckpt, recipe, model, uri = tiny_checkpoint
    recipe = recipe.replace(["registry.model_name=lstc-alias"])
    run_id = _run(uri)
    name = recipe.registry.model_name

    v1, a1 = register_checkpoint(ckpt, recipe=recipe, run_id=run_id, metrics={"val/mean_iou": 0.40})
    assert a1 == CHAMPION  # first version: nothing to beat
    v2, a2 = register_checkpoint(ckpt, recipe=recipe, run_id=run_id, metrics={"val/mean_iou": 0.30})
    assert a2 == CHALLENGER  # worse
    v3, a3 = register_checkpoint(ckpt, recipe=recipe, run_id=run_id, metrics={"val/mean_iou": 0.55})
    assert a3 == CHAMPION  # better (ties and min mode: see test_helpers' is_better cases)
    assert [v1, v2, v3] == ["1", "2", "3"]

    champ = current_champion(name, tracking_uri=uri)
    assert str(champ.version) == "3"
    assert champ.tags[TAG_METRIC] == "mean_iou" and float(champ.tags[TAG_VALUE]) == 0.55
    assert str(get_version(f"models:/{name}@{CHALLENGER}", tracking_uri=uri).version) == "2"
    assert get_version(f"models:/{name}/2", tracking_uri=uri).tags[TAG_VALUE] == "0.3"

    # a champion chosen under another mode cannot be compared: the new version takes over
    low = recipe.replace(["registry.mode=min"])
    _, a4 = register_checkpoint(ckpt, recipe=low, run_id=run_id, metrics={"val/mean_iou": 0.9})
    assert a4 == CHAMPION


def test_load_by_alias_and_predict(served_model):
    import torch

    model_uri, recipe, model, uri = served_model
    loaded, loaded_recipe = load_registered(model_uri, tracking_uri=uri)
    assert loaded_recipe.to_dict()["model"] == recipe.to_dict()["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    pyfunc = load_pyfunc(model_uri, tracking_uri=uri)
    out = pyfunc.predict(
        pd.DataFrame(
            {"video": ["example", "example"], "expression": ["a square", "the square"]}
        ).assign(frames=["4:6", "5:6"])
    )
    assert list(out.columns) == ["row", "frame", "mask_png", "height", "width", "score", "area"]
    assert out["row"].tolist() == [0, 0, 1] and out["frame"].tolist() == [4, 5, 5]
    assert out["height"].tolist() == [48] * 3 and out["width"].tolist() == [64] * 3
    mask = decode_mask_png(out["mask_png"][0])
    assert mask.shape == (48, 64) and mask.dtype == bool
    assert int(mask.sum()) == int(out["area"][0])


def test_pyfunc_matches_predict_masks_on_a_frame_folder(served_model, tmp_path):
    """The served mask equals `predict_masks` on the same clip collated by the eval path."""
    from PIL import Image

    from data_prep.clipspec import read_clip
    from pipelines.data import collate, collate_kwargs
    from pipelines.inference import predict_masks
    from pipelines.mlops.serving import ServingSpec

    model_uri, recipe, model, uri = served_model
    rng = np.random.default_rng(1)
    folder = tmp_path / "video"
    folder.mkdir()
    for t in range(12):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
            folder / f"{t:05d}.jpg"
        )
    pyfunc = load_pyfunc(model_uri, tracking_uri=uri)
    out = pyfunc.predict(
        pd.DataFrame({"video": [str(folder)], "expression": ["the red one"], "target_frame": [3]})
    )
    served = decode_mask_png(out["mask_png"][0])

    frames, t_idx, orig = read_clip(str(folder), 3, ServingSpec.from_shards(None).clip)
    sample = {
        "clip": frames,
        "mask": None,
        "text": "the red one",
        "video_id": "v",
        "clip_id": "c",
        "object_id": "0",
        "expression_id": "0",
        "target_index": t_idx,
        "orig_size": orig,
        "meta": "",
    }
    kw = collate_kwargs(recipe)
    kw.pop("augment")
    loaded, _ = load_registered(model_uri, tracking_uri=uri)
    expected = predict_masks(loaded, collate([sample], train=False, **kw))[0]
    assert orig == (30, 40)
    assert np.array_equal(served, expected)


def test_bad_target_frame_is_a_clear_error(served_model):
    model_uri, recipe, model, uri = served_model
    pyfunc = load_pyfunc(model_uri, tracking_uri=uri)
    with pytest.raises(Exception, match="frame range '99:100' is outside the video's 10 frames"):
        pyfunc.predict(
            pd.DataFrame({"video": ["example"], "expression": ["x"], "target_frame": [99]})
        )
