"""Recipes: every shipped config loads and validates; overrides; clear errors naming key + file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, Recipe, list_recipes, load_recipe, yaml_load

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = CONFIGS / "refer_shapes_tiny.yaml"
EXPECTED = {
    "refer_shapes_tiny.yaml",
    "a2d_paper.yaml",
    "jhmdb_eval.yaml",
    "ytvos_paper.yaml",
    "davis_eval.yaml",
}


def test_all_recipes_are_shipped():
    assert EXPECTED <= {p.name for p in list_recipes()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_loads_validates_and_round_trips(name):
    recipe = load_recipe(CONFIGS / name)
    assert recipe.num_frames == recipe.model.num_frames
    again = Recipe.from_dict(yaml_load(recipe.to_yaml()))
    assert again == recipe
    assert again.hash() == recipe.hash()
    flat = recipe.flatten()
    assert flat["optim.lr"] == str(recipe.optim.lr)
    assert all(isinstance(v, str) for v in flat.values())


def test_paper_defaults():
    r = load_recipe(CONFIGS / "a2d_paper.yaml")
    assert r.optim.name == "adam" and r.optim.lr == pytest.approx(5e-4)
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


def test_overrides_are_yaml_typed():
    r = load_recipe(
        TINY,
        [
            "train.epochs=3",
            "optim.lr=1e-3",
            "model.lasp=off",
            "model.input_size=[96, 96]",
            "train.fail_at_epoch=2",
            "data.val_limit=null",
            "schedule.step_epochs=[1, 2]",
        ],
    )
    assert r.train.epochs == 3 and r.optim.lr == pytest.approx(1e-3)
    assert r.model.lasp == "off" and r.model.input_size == (96, 96)
    assert r.train.fail_at_epoch == 2 and r.data.val_limit is None
    assert r.schedule.step_epochs == (1, 2)
    assert r.hash() != load_recipe(TINY).hash()
    assert r.replace(["train.epochs=4"]).train.epochs == 4


def test_recipe_by_bare_name_resolves_to_configs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("refer_shapes_tiny.yaml") == load_recipe(TINY)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("optim.lr=abc", "optim.lr"),
        ("optim.lr=-1", "optim.lr"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.use_gpu=maybe", "train.use_gpu"),
        ("schedule.kind=linear", "schedule.kind"),
        ("data.augment.hflip=2", "data.augment.hflip"),
        ("data.augment.crop_scale=[0.9, 0.5]", "data.augment.crop_scale"),
        ("model.lasp=maybe", "lasp"),
        ("model.nope=1", "nope"),
        ("loss.pos_weight=-1", "pos_weight"),
        ("nosection.x=1", "nosection"),
        ("registry.selection_metric=accuracy", "registry.selection_metric"),
        ("registry.mode=best", "registry.mode"),
        ("train.fail_at_epoch=99", "train.fail_at_epoch"),
        ("data.num_frames=3", "data.num_frames"),
        ("train.run_name=a b", "train.run_name"),
    ],
)
def test_bad_values_name_key_and_file(override, needle):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, [override])
    msg = str(err.value)
    assert needle in msg
    assert str(TINY) in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(TINY, ["train.epochs"])


def test_unknown_key_in_file_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(TINY) + "\ntrain:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    assert "train.epoch" in str(err.value) and str(bad) in str(err.value)


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


def test_train_cli_print_config_and_errors(capsys):
    from pipelines.cli import main

    assert main(["train", "--config", str(TINY), "train.epochs=3", "--print-config"]) == 0
    printed = yaml_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3
    assert Recipe.from_dict(printed) == load_recipe(TINY, ["train.epochs=3"])
    assert main(["train", "--config", str(TINY), "train.epoch=3"]) == 2
    assert "train.epoch" in capsys.readouterr().err


def test_train_cli_help(capsys):
    from pipelines.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "KEY=VALUE" in capsys.readouterr().out
