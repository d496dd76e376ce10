"""Recipes on pydantic: every shipped config loads and round-trips; overrides; ONE clear error
naming the file (or ``<override>``), the dotted key, the bad value and what is allowed; one
flatten for MLflow params; the walkable key schema (``recipe_keys``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.checkpoint import load_recipe_from_checkpoint
from pipelines.config import (
    ConfigError,
    Recipe,
    list_recipes,
    load_recipe,
    recipe_keys,
    yaml_load,
)
from pipelines.mlops.tracking import flatten

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = CONFIGS / "refer_shapes_tiny.yaml"
EXPECTED = {
    "refer_shapes_tiny.yaml",
    "a2d_paper.yaml",
    "jhmdb_eval.yaml",
    "ytvos_paper.yaml",
    "davis_eval.yaml",
}

# recipe.yaml as `Recipe.to_yaml()` wrote it into checkpoints before the pydantic rewrite
# (refer_shapes_tiny.yaml; it still carries the removed key train.fail_at_epoch: null).
OLD_CHECKPOINT_RECIPE = """\
description: LSTC tiny preset on synthetic refer-shapes, 2 CPU workers
model:
  spatial_backbone: tiny
  temporal_backbone: tiny
  spatial_weights: null
  temporal_weights: null
  tiny_width: 8
  freeze_spatial: false
  freeze_temporal: false
  input_size:
  - 64
  - 64
  num_frames: 4
  target_index: 2
  text_encoder: tiny
  text_pretrained: false
  tokenizer: auto
  max_words: 12
  freeze_text: false
  lang_dim: 32
  streams: both
  cmam: cmam_plus
  lasp: 'on'
  fusion: concat
  decoder_dims:
  - 32
  - 32
  - 32
  - 16
  - 16
  head_dim: 8
  lasp_prototypes: 4
  lasp_dim: 16
  update_heads: 2
loss:
  pos_weight: 3.0
  bce_weight: 1.0
  dice_weight: 1.0
  main_weight: 1.0
  level_weights:
  - 0.1
  - 0.1
  - 0.2
  - 0.3
  - 0.5
  lasp_weight: 0.0
  dice_smooth: 1.0
data:
  root: data/refer_shapes/shards
  train_split: train
  val_split: test
  batch_size: 2
  eval_batch_size: 8
  num_frames: null
  shuffle_buffer: 32
  prefetch_batches: 2
  val_limit: null
  cache_train: true
  cache_val: true
  augment:
    enabled: true
    crop_prob: 0.5
    crop_scale:
    - 0.7
    - 1.0
    crop_ratio:
    - 0.75
    - 1.3333
    hflip: 0.5
    swap_left_right: true
optim:
  name: adam
  lr: 0.002
  weight_decay: 0.0
  momentum: 0.9
  backbone_lr_mult: 1.0
  update_lr_mult: 1.0
  grad_clip: 5.0
  accumulation: 1
schedule:
  kind: cosine
  warmup_epochs: 0.2
  warmup_factor: 0.1
  step_epochs: []
  gamma: 0.1
  min_lr_factor: 0.05
train:
  epochs: 4
  num_workers: 2
  use_gpu: false
  cpus_per_worker: 1.0
  amp: true
  seed: 0
  storage_path: outputs/ray_results
  run_name: refer_shapes_tiny
  max_failures: 2
  fail_at_epoch: null
  find_unused_parameters: false
  ray_address: null
  measure_loader: false
  log_level: WARNING
tracking:
  uri: null
  experiment: lstc-refer-shapes
  log_every_steps: 5
  num_overlays: 4
  system_metrics: true
registry:
  model_name: lstc-refer-shapes-tiny
  selection_metric: mean_iou
  mode: max
  register: true
"""


def test_all_recipes_are_shipped():
    assert EXPECTED <= {p.name for p in list_recipes()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_loads_validates_and_round_trips(name):
    recipe = load_recipe(CONFIGS / name)
    assert recipe.source == str(CONFIGS / name)
    assert recipe.num_frames == recipe.model.num_frames
    again = Recipe.from_dict(yaml_load(recipe.to_yaml()))
    assert again == recipe and again.source == "<dict>"  # equality ignores the source
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert again.hash() == recipe.hash() == load_recipe(CONFIGS / name).hash()
    assert len(recipe.hash()) == 16 and int(recipe.hash(), 16) >= 0
    # key order does not change the hash
    shuffled = {k: v for k, v in reversed(list(recipe.to_dict().items()))}
    assert Recipe.from_dict(shuffled).hash() == recipe.hash()
    flat = recipe.flatten()
    assert flat["optim.lr"] == str(recipe.optim.lr)
    assert all(isinstance(v, str) for v in flat.values())


def test_paper_defaults():
    r = load_recipe(CONFIGS / "a2d_paper.yaml")
    assert r.optim.name == "adam" and r.optim.lr == pytest.approx(5e-4)
    assert isinstance(r.optim.lr, float)
    assert r.optim.weight_decay == 0.0
    assert r.schedule.kind == "step" and r.schedule.warmup_epochs == 2
    assert r.schedule.step_epochs == (8,) and r.schedule.gamma == pytest.approx(0.1)
    assert r.train.epochs == 9 and r.data.batch_size == 4
    assert r.loss.pos_weight == pytest.approx(1.5)
    assert r.model.input_size == (320, 320) and r.model.num_frames == 8
    assert r.model.target_index == 4


def test_eval_recipes_inherit_and_do_not_train():
    jhmdb = load_recipe(CONFIGS / "jhmdb_eval.yaml")
    assert jhmdb.train.epochs == 0 and jhmdb.data.augment.enabled is False
    assert jhmdb.model == load_recipe(CONFIGS / "a2d_paper.yaml").model
    davis = load_recipe(CONFIGS / "davis_eval.yaml")
    assert davis.registry.selection_metric == "J&F" and davis.train.epochs == 0


def test_tiny_recipe_is_cpu_and_two_workers():
    r = load_recipe(TINY)
    assert r.train.num_workers == 2 and r.train.use_gpu is False
    assert r.model.spatial_backbone == "tiny" and r.model.text_pretrained is False


def test_recipes_are_frozen():
    r = load_recipe(TINY)
    with pytest.raises(ValueError, match="frozen"):
        r.optim.lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        r.model.cmam = "none"  # type: ignore[misc]


def test_overrides_are_yaml_typed():
    r = load_recipe(
        TINY,
        [
            "train.epochs=3",
            "optim.lr=1e-3",
            "model.lasp=off",
            "model.input_size=[96, 96]",
            "data.val_limit=null",
            "schedule.step_epochs=[1, 2]",
            "loss.pos_weight=2",
        ],
    )
    assert r.train.epochs == 3 and r.optim.lr == pytest.approx(1e-3)
    assert r.model.lasp == "off" and r.model.input_size == (96, 96)
    assert r.data.val_limit is None
    assert r.schedule.step_epochs == (1, 2)
    assert r.loss.pos_weight == 2.0 and isinstance(r.loss.pos_weight, float)  # int for float
    assert r.hash() != load_recipe(TINY).hash()
    again = r.replace(["train.epochs=4"])
    assert again.train.epochs == 4 and again.source == r.source == str(TINY)
    assert again.replace(["train.epochs=3"]) == r


def test_yaml_1_2_floats():
    data = yaml_load("a: 5e-4\nb: 1e3\nc: -2.5E+2\nd: 7\ne: '5e-4'\nf: .5")
    assert data == {"a": 5e-4, "b": 1000.0, "c": -250.0, "d": 7, "e": "5e-4", "f": 0.5}
    assert [type(data[k]) for k in "abcdef"] == [float, float, float, int, str, float]


def test_lasp_off_and_on_in_a_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(f"base: {TINY}\nmodel:\n  preset: tiny\n  lasp: off\n")
    assert load_recipe(f).model.lasp == "off"
    f.write_text(f"base: {TINY}\nmodel:\n  preset: tiny\n  lasp: on\n")
    assert load_recipe(f).model.lasp == "on"


def test_empty_section_means_defaults(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("loss:\n  # pos_weight: 9\ntrain:\n  epochs: 2\n")
    r = load_recipe(f)
    assert r.loss == Recipe().loss and r.train.epochs == 2
    assert r.model == Recipe().model  # no model section: the tiny preset


def test_recipe_by_bare_name_resolves_to_configs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("refer_shapes_tiny.yaml") == load_recipe(TINY)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'; valid keys of optim are ['accumulation',"),
        ("optim.lr=abc", "optim.lr='abc' is not valid: expected a number"),
        ("optim.lr=-1", "optim.lr=-1 is not valid: must be > 0"),
        ("optim.lr=.inf", "optim.lr=inf is not valid: expected a finite number"),
        ("train.epochs=1.5", "train.epochs=1.5 is not valid: expected an integer"),
        ("train.epochs=true", "train.epochs=True is not valid: expected an integer"),
        ("train.epochs=-1", "train.epochs=-1 is not valid: must be >= 0"),
        ("train.use_gpu=maybe", "train.use_gpu='maybe' is not valid: expected true or false"),
        ("schedule.kind=linear", "choose one of ['step', 'cosine', 'constant']"),
        ("data.augment.hflip=2", "data.augment.hflip=2 is not valid: must be <= 1"),
        ("data.augment.crop_scale=[0.9, 0.5]", "must be 0 < lo <= hi <= 1"),
        ("data.augment.crop_scale=[0.5]", "crop_scale=[0.5] is not valid: expected a list of 2"),
        ("model.lasp=maybe", "model.lasp='maybe' is not valid: choose one of ['on', 'off']"),
        ("model.cmam=foo", "model.cmam='foo' is not valid: choose one of ['none', 'cmam', 'cmam_"),
        ("model.nope=1", "unknown key 'model.nope'; valid keys of model are ['cmam',"),
        ("model.input_size=[100, 100]", "model.input_size=[100, 100] is not valid: must be two"),
        (
            "model.preset=huge",
            "model.preset='huge' is not valid: choose one of ['cstm', 'cstm_baseline'",
        ),
        ("loss.pos_weight=-1", "loss.pos_weight=-1 is not valid: must be >= 0"),
        ("nosection.x=1", "unknown key 'nosection'; valid keys are ['base', 'data',"),
        ("optim=3", "optim=3 is not valid: expected a mapping"),
        ("registry.selection_metric=accuracy", "choose one of ['overall_iou', 'mean_iou', 'P@"),
        ("registry.mode=best", "registry.mode='best' is not valid: choose one of ['max', 'min']"),
        ("data.num_frames=3", "data.num_frames=3 is not valid: must equal model.num_frames=4"),
        ("train.run_name=a b", "train.run_name='a b' is not valid: must match"),
        ("train.fail_at_epoch=2", "unknown key 'train.fail_at_epoch'"),  # removed key
    ],
)
def test_bad_override_names_override_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, [override])
    msg = str(err.value)
    assert msg.startswith("<override>: ") and message in msg
    assert "\n" not in msg


def test_cross_check_names_the_key_and_the_file():
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, ["model.num_frames=2"])  # the file's tiny preset has target_index 2
    assert str(err.value) == (
        f"{TINY}: model.target_index=2 is not valid: must be in [0, num_frames=2)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  epoch: 3\n", "unknown key 'train.epoch'; valid keys of train are ['amp',"),
        ("optim:\n  lr: fast\n", "optim.lr='fast' is not valid: expected a number"),
        ("optim:\n  lr: -1.0e-3\n", "optim.lr=-0.001 is not valid: must be > 0"),
        ("model:\n  cmam: foo\n", "model.cmam='foo' is not valid: choose one of ['none', 'cmam'"),
        ("data:\n  batch_size: 0\n", "data.batch_size=0 is not valid: must be >= 1"),
        ("description: 5\n", "description=5 is not valid: expected text"),
    ],
)
def test_bad_value_in_a_file_names_the_file(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {TINY}\n" + text)
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    assert str(err.value).startswith(f"{bad}: ") and message in str(err.value)


def test_error_in_a_base_file_names_the_base_file(tmp_path):
    (tmp_path / "sub").mkdir()
    base = tmp_path / "base.yaml"
    base.write_text("optim:\n  lr: -1\ntrain:\n  epochs: 2\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../base.yaml\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(child)
    assert str(err.value) == f"{base}: optim.lr=-1 is not valid: must be > 0"
    # the child (or an override) setting the key fixes it; the rest is inherited
    child.write_text("base: ../base.yaml\noptim:\n  lr: 1.0e-3\n")
    assert load_recipe(child).optim.lr == pytest.approx(1e-3)
    assert load_recipe(child).train.epochs == 2
    fixed = load_recipe(child, ["optim.lr=2e-3", "train.epochs=5"])
    assert (fixed.optim.lr, fixed.train.epochs) == (pytest.approx(2e-3), 5)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(TINY, ["train.epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        load_recipe(TINY, ["train.epochs.x=1"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(broken)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(loop)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(a)


def test_from_dict_names_its_source():
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict({"optim": {"lr": 0}}, source="x/recipe.yaml")
    assert str(err.value) == "x/recipe.yaml: optim.lr=0 is not valid: must be > 0"


# --------------------------------------------------------------------- old checkpoints


def test_old_checkpoint_recipe_still_loads(tmp_path):
    (tmp_path / "recipe.yaml").write_text(OLD_CHECKPOINT_RECIPE)
    recipe = load_recipe_from_checkpoint(tmp_path)
    # the tiny recipe as it was then (SHAPES_MOTION_V1 and 128-d language since issue 14)
    then = [
        "model.temporal_weights=null",
        "model.freeze_text=false",
        "model.freeze_temporal=false",
        "model.lang_dim=32",
    ]
    assert recipe == load_recipe(TINY, then)
    assert recipe.source == str(tmp_path / "recipe.yaml")
    # today's writer: every key of the old file (but the removed one) with its value, in the
    # same order, plus the keys added since at their defaults (a fresh Recipe of the same file)
    old = flatten(yaml_load(OLD_CHECKPOINT_RECIPE))
    del old["train.fail_at_epoch"]
    written = flatten(yaml_load(recipe.to_yaml()))
    assert {k: written[k] for k in old} == old
    assert [k for k in written if k in old] == list(old)
    added = {k: v for k, v in written.items() if k not in old}
    assert {"eval.threshold", "eval.threshold_rule", "train.placement_strategy"} <= set(added)
    assert added == {k: v for k, v in load_recipe(TINY).flatten().items() if k in added}
    # a value other than null for the removed key is an error, not silently dropped
    with pytest.raises(ConfigError, match="unknown key 'train.fail_at_epoch'"):
        Recipe.from_dict(yaml_load(OLD_CHECKPOINT_RECIPE.replace("at_epoch: null", "at_epoch: 2")))


# ------------------------------------------------------------------------- flattening


def test_one_flatten_for_recipes_and_tracking():
    recipe = load_recipe(TINY, ["data.val_limit=null", "schedule.step_epochs=[2, 3]"])
    flat = recipe.flatten()
    assert flat == flatten(recipe.to_dict())  # tracking's flatten writes the same text
    assert flat["data.val_limit"] == "null" and flat["train.ray_address"] == "null"
    assert flat["model.input_size"] == "[64, 64]"
    assert flat["schedule.step_epochs"] == "[2, 3]"
    assert flat["data.augment.crop_scale"] == "[0.7, 1.0]"
    assert flat["optim.lr"] == "0.002" and flat["train.epochs"] == "4"
    assert flat["model.lasp"] == "on" and flat["train.use_gpu"] == "False"
    assert flat["registry.selection_metric"] == "mean_iou"
    # sections passed as config objects flatten like their dicts
    assert flatten({"optim": recipe.optim}) == {
        k: v for k, v in flat.items() if k.startswith("optim.")
    }
    assert flatten({"a": None, "b": ["x", None], "c": {}}) == {
        "a": "null",
        "b": '["x", null]',
        "c": "{}",
    }


# --------------------------------------------------------------------------- key schema


def test_recipe_keys_describe_bounds_choices_and_types():
    keys = {k.key: k for k in recipe_keys()}
    lr = keys["optim.lr"]
    assert lr.type is float and lr.gt == 0 and lr.ge is None and lr.default == 5e-4
    assert keys["model.cmam"].choices == ("none", "cmam", "cmam_plus")
    epochs = keys["train.epochs"]
    assert epochs.type is int and epochs.ge == 0 and epochs.gt is None and epochs.default == 9
    hflip = keys["data.augment.hflip"]
    assert (hflip.ge, hflip.le) == (0, 1)
    assert keys["registry.selection_metric"].choices[:2] == ("overall_iou", "mean_iou")
    assert keys["model.input_size"].default == (64, 64)  # Recipe() has the tiny preset
    assert keys["data.val_limit"].default is None and keys["data.val_limit"].ge == 1
    assert keys["optim.lr"].description
    assert "train.fail_at_epoch" not in keys
    # one spec per leaf: exactly the keys of the flattened recipe, in the same order
    assert list(keys) == list(Recipe().flatten())


def test_every_key_can_be_overridden_with_its_default():
    base = Recipe()
    for spec in recipe_keys():
        again = base.replace([f"{spec.key}={json.dumps(spec.default)}"])
        assert again == base, spec.key
        assert spec.check(spec.default) == spec.default, spec.key


def test_key_spec_check():
    keys = {k.key: k for k in recipe_keys()}
    assert keys["optim.lr"].check(1) == 1.0 and isinstance(keys["optim.lr"].check(1), float)
    assert keys["model.lasp"].check(False) == "off"
    assert keys["model.input_size"].check([96, 128]) == (96, 128)
    assert keys["data.num_frames"].check(None) is None
    with pytest.raises(ConfigError) as err:
        keys["optim.lr"].check(-1.0)
    assert str(err.value) == "optim.lr=-1.0 is not valid: must be > 0"
    with pytest.raises(ConfigError, match=r"model.cmam='x' is not valid: choose one of"):
        keys["model.cmam"].check("x")
    with pytest.raises(ConfigError, match="expected an integer"):
        keys["train.epochs"].check(2.5)
    with pytest.raises(ConfigError, match="multiples of 32"):
        keys["model.input_size"].check([100, 100])


# --------------------------------------------------------------------------------- CLI


def test_train_cli_print_config_and_errors(capsys):
    from pipelines.cli import main

    assert main(["train", "--config", str(TINY), "train.epochs=3", "--print-config"]) == 0
    printed = yaml_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3
    assert Recipe.from_dict(printed) == load_recipe(TINY, ["train.epochs=3"])
    assert main(["train", "--config", str(TINY), "train.epoch=3"]) == 2
    assert "train.epoch" in capsys.readouterr().err
    assert main(["train", "--config", str(TINY), "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err == "lstc train: <override>: optim.lr=-1 is not valid: must be > 0\n"


def test_train_cli_help(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "KEY=VALUE" in capsys.readouterr().out
