"""Every shipped recipe runs, as its header documents it; the held-out validation split.

``test_every_shipped_recipe_runs_end_to_end`` is parametrised over ``configs/*.yaml`` (sweep
spaces excluded, :func:`pipelines.config.list_recipes`), so a new recipe is covered
automatically. A recipe's header documents the commands that run it (``#   lstc prep ...``,
``#   lstc train ...``, ``#   lstc eval --config ...``); the test runs those same commands on the
tiny native-format fakes of ``tests/data_fakes.py`` with size overrides only:

* prep: the documented ``lstc prep`` (dataset, splits, ``--heldout-fraction``) with ``--root``
  and ``--out`` pointing at the fake and a tmp folder, tiny clips (4 frames, 64x64);
* train (recipes with epochs): the recipe with the tiny model preset (keeping its ablation
  switches ``streams``/``cmam``/``lasp``/``fusion``), random init, 1 CPU worker, 1 epoch of 2-3
  steps; its ``train_split`` / ``val_split`` / selection metric / loss / schedule unchanged.
  Validation runs on the recipe's ``val_split`` and sees every sample of it;
* eval: the documented ``lstc eval --config`` line with ``--model`` = the checkpoint just
  trained (for an evaluation-only recipe: the one trained from its ``base`` recipe) and
  ``data.root`` = the fake's shards.

Model selection never uses the test split of a real benchmark: a recipe that trains validates
on another split (refer-shapes, a generated benchmark, is the documented exception).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import pytest

from pipelines.config import list_recipes

REPO = Path(__file__).resolve().parent.parent
RECIPES = list_recipes()
COMMAND = re.compile(r"^#\s+(lstc\s+(\w+)\s.*?)\s*$")
TINY_CLIP = ["--frames", "4", "--stride", "1", "--size", "64", "64"]
SWITCHES = ("streams", "cmam", "lasp", "fusion")
GENERATED = {"refer_shapes"}  # synthetic benchmarks: their test split is a generator split


# ---------------------------------------------------------------------------- held-out split


def test_video_score_is_the_sha256_prefix_of_the_video_id():
    from data_prep.heldout import video_score

    # printf vA | sha256sum -> 3a90fff2ef7eaab3b484...; its first 16 hex digits / 2^64
    assert video_score("vA") == int("3a90fff2ef7eaab3", 16) / 2.0**64
    assert video_score("vA") == pytest.approx(0.2287, abs=1e-4)  # 0x3a90... / 0x10000...
    assert 0.0 <= video_score("") < 1.0


def test_heldout_choice_is_by_video_stable_and_near_the_fraction():
    from data_prep.heldout import HeldoutSpec

    spec = HeldoutSpec(0.1)
    ids = [f"video{i:04d}" for i in range(2000)]
    held = spec.chosen(ids)
    assert 0.08 * len(ids) < len(held) < 0.12 * len(ids)
    assert spec.chosen(reversed(ids)) == held  # order does not matter
    more = spec.chosen(ids + [f"extra{i}" for i in range(500)])
    assert {v for v in more if v.startswith("video")} == held  # new videos never move old ones


def test_tiny_splits_keep_both_sides_non_empty():
    from data_prep.heldout import HeldoutSpec, video_score

    spec = HeldoutSpec(0.001)
    assert spec.chosen(["only"]) == set()  # one video: it stays in training
    pair = ["a", "b"]
    smallest = min(pair, key=video_score)
    assert spec.chosen(pair) == {smallest}
    assert HeldoutSpec(0.999).chosen(pair) == {smallest}  # the largest score always trains


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_heldout_fraction_out_of_range_is_refused(bad, tmp_path, capsys):
    from pipelines.cli import main

    args = ["prep", "--dataset", "ytvos", "--root", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*args, "--heldout-fraction", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"--heldout-fraction {bad} is not valid" in err and "(0, 1)" in err


# ----------------------------------------------------------------------------- lstc eval --config


def test_eval_recipe_supplies_the_eval_options():
    from pipelines.cli.eval import recipe_defaults
    from pipelines.config import load_recipe

    got = recipe_defaults(load_recipe(REPO / "configs/davis_eval.yaml", ["eval.threshold=0.4"]))
    assert got == {
        "model": "models:/lstc-ytvos@champion",  # registry.model_name of davis_eval.yaml
        "data": "data/davis/shards",
        "split": "valid",
        "batch_size": 8,  # data.eval_batch_size of its base a2d_paper.yaml
        "threshold": 0.4,
        "threshold_rule": "absolute",
        "experiment": "lstc-davis",
        "tracking_uri": None,
    }


def test_eval_flags_win_over_the_recipe_and_errors_say_what_to_do(tmp_path, capsys):
    from pipelines.cli import main

    # a flag beats the recipe: the missing model folder named on the command line is reported
    absent = tmp_path / "no_such_checkpoint"
    rc = main(["eval", "--config", "configs/jhmdb_eval.yaml", "--model", str(absent)])
    assert rc == 2 and str(absent) in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path)]) == 2
    assert "--model required (or --config RECIPE" in capsys.readouterr().err
    assert main(["eval", "--model", str(absent), "data.root=x"]) == 2
    assert "overrides need --config" in capsys.readouterr().err
    assert main(["eval", "--config", "configs/jhmdb_eval.yaml", "data.rooot=x"]) == 2
    assert "unknown key 'data.rooot'" in capsys.readouterr().err


# ------------------------------------------------------------------------- documented commands


def documented(path: Path) -> dict[str, list[str]]:
    """``{"prep": argv, "train": argv, "eval": argv}`` from the recipe's header comment."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = COMMAND.match(line)
        if m:
            assert m.group(2) not in out, f"{path.name}: two 'lstc {m.group(2)}' lines"
            out[m.group(2)] = shlex.split(m.group(1))[1:]
    return out


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def with_flag(argv: list[str], name: str, value: str) -> list[str]:
    if name in argv:
        i = argv.index(name)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, name, value]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_header_documents_how_to_run_it(path):
    from pipelines.config import load_recipe

    recipe = load_recipe(path)
    cmds = documented(path)
    assert "prep" in cmds, f"{path.name}: document the '#   lstc prep ...' that writes its data"
    assert "eval" in cmds, f"{path.name}: document its '#   lstc eval --config ...' line"
    prep = cmds["prep"]
    assert flag(prep, "--out") == recipe.data.root, "the documented prep writes data.root"
    assert flag(cmds["eval"], "--config") == f"configs/{path.name}"
    if recipe.train.epochs > 0:
        assert flag(cmds.get("train", []), "--config") == f"configs/{path.name}"
        if flag(prep, "--dataset") not in GENERATED:
            assert recipe.data.val_split != "test", "model selection on the test split"
        if recipe.data.val_split == "heldout":
            assert flag(prep, "--heldout-fraction") is not None, "nothing writes 'heldout'"
    from pipelines.cli import build_parser

    parser = build_parser()
    for argv in cmds.values():
        parser.parse_args(argv)  # every documented command parses


# ------------------------------------------------------------------------ fakes per dataset


def _a2d(root: Path) -> None:
    """The A2D fake plus 4 copies of its one usable train video (so a held-out part and a
    training part both have samples)."""
    from data_fakes import make_a2d

    make_a2d(root)
    rel, ann = root / "Release", root / "text_annotations"
    videoset = (rel / "videoset.csv").read_text().splitlines()
    rows = (ann / "a2d_annotation.txt").read_bytes().splitlines()
    v1_set = next(ln for ln in videoset if ln.startswith("v1,"))
    v1_rows = [r for r in rows[1:4] if r.startswith(b"v1,")]
    for k in range(4):
        vid = f"c{k}"
        shutil.copy(rel / "clips320H/v1.mp4", rel / f"clips320H/{vid}.mp4")
        inst = ann / "a2d_annotation_with_instances"
        shutil.copytree(inst / "v1", inst / vid)
        videoset.append(vid + v1_set[2:])
        rows += [vid.encode() + r[2:] for r in v1_rows]
    (rel / "videoset.csv").write_text("\n".join(videoset) + "\n")
    (ann / "a2d_annotation.txt").write_bytes(b"\n".join(rows) + b"\n")


def _ytvos(root: Path) -> None:
    """The Ref-YouTube-VOS fake plus 3 copies of its fully annotated train video."""
    from data_fakes import make_ytvos

    make_ytvos(root)
    meta = root / "meta_expressions/train/meta_expressions.json"
    data = json.loads(meta.read_text())
    for k in range(3):
        vid = f"c{k}"
        for part in ("JPEGImages", "Annotations"):
            shutil.copytree(root / "train" / part / "vA", root / "train" / part / vid)
        data["videos"][vid] = data["videos"]["vA"]
    meta.write_text(json.dumps(data))


def _fake(dataset: str, root: Path, tiny_shards: Path) -> Path:
    """The fake benchmark `dataset` in its native layout (a folder under `root`)."""
    from data_fakes import make_davis, make_jhmdb

    if dataset == "refer_shapes":
        return tiny_shards.parent / "source"  # the session's generated tiny benchmark
    makers = {"a2d": _a2d, "ytvos": _ytvos, "jhmdb": make_jhmdb, "davis": make_davis}
    assert dataset in makers, f"no fake for --dataset {dataset}: add one to tests/test_recipes.py"
    out = root / dataset
    out.mkdir(parents=True, exist_ok=True)
    makers[dataset](out)
    return out


# ---------------------------------------------------------------------------- end to end


class Runs:
    """Shared state of the end-to-end test: fakes, shards and trained checkpoints per recipe."""

    def __init__(self, base: Path, tiny_shards: Path) -> None:
        self.base, self.tiny_shards = base, tiny_shards
        self.shards: dict[str, Path] = {}
        self.checkpoints: dict[str, Path] = {}

    def prep(self, path: Path) -> Path:
        """Run the recipe's documented prep on its fake; the shard root."""
        from pipelines.cli import main

        if path.name in self.shards:
            return self.shards[path.name]
        argv = documented(path)["prep"]
        fake = _fake(flag(argv, "--dataset"), self.base / "fakes" / path.stem, self.tiny_shards)
        out = self.base / "shards" / path.stem
        argv = with_flag(with_flag(argv, "--root", str(fake)), "--out", str(out))
        argv = [*argv, *TINY_CLIP, "--clips-per-shard", "4", "--no-progress"]
        assert main(argv) == 0, argv
        self.shards[path.name] = out
        return out

    def train(self, path: Path) -> Path:
        """Train the recipe at tiny size; its best checkpoint (an evaluation-only recipe: the
        checkpoint of its ``base`` recipe, prepared and trained on that recipe's own fake)."""
        from data_prep.shards import load_manifest
        from lstc.config import ModelConfig
        from pipelines.config import Recipe, load_recipe, yaml_load
        from pipelines.train.driver import train

        if path.name in self.checkpoints:
            return self.checkpoints[path.name]
        recipe = load_recipe(path)
        if recipe.train.epochs == 0:
            base = (yaml_load(path.read_text()) or {}).get("base")
            assert base, f"{path.name} trains nothing and has no base recipe to take a model from"
            ckpt = self.train(path.parent / base)
            self.checkpoints[path.name] = ckpt
            return ckpt
        shards = self.prep(path)
        counts = load_manifest(str(shards))["counts"]
        d = recipe.data
        assert counts.get(d.train_split, {}).get("samples"), (d.train_split, counts)
        assert counts.get(d.val_split, {}).get("samples"), (d.val_split, counts)
        n_train = counts[d.train_split]["samples"]
        if d.val_split == "heldout":  # by video: disjoint, and the videos the hash rule picks
            from data_prep.heldout import HeldoutSpec
            from pipelines.eval.runner import split_videos

            held, kept = split_videos(str(shards), "heldout"), split_videos(str(shards), "train")
            fraction = float(flag(documented(path)["prep"], "--heldout-fraction"))
            assert held and kept and not held & kept
            assert HeldoutSpec(fraction).chosen(held | kept) == held
        raw = recipe.to_dict()
        raw["model"] = {
            **ModelConfig.preset("tiny").to_dict(),
            **{k: getattr(recipe.model, k) for k in SWITCHES},
        }
        tiny = Recipe.from_dict(raw, source=str(path)).replace(
            [
                f"data.root={shards}",
                f"data.batch_size={max(1, n_train // 2)}",  # 2 (3 when n is 3) steps
                "data.eval_batch_size=4",
                "data.val_limit=null",
                "data.num_frames=null",
                "data.shuffle_buffer=0",
                "train.epochs=1",
                "train.num_workers=1",
                "train.use_gpu=false",
                "train.cpus_per_worker=1",
                "train.max_failures=0",
                f"train.storage_path={self.base / 'runs'}",
                f"train.run_name={path.stem}",
                f"tracking.uri=sqlite:///{self.base / 'mlflow.db'}",
                "tracking.num_overlays=0",
                "tracking.system_metrics=false",
                "registry.register=false",
            ]
        )
        result = train(tiny)
        assert result.last_metrics["epoch"] == 1
        # validation ran on the recipe's val_split, every sample of it
        assert result.last_metrics["val/num_samples"] == counts[d.val_split]["samples"]
        assert math.isfinite(result.last_metrics[f"val/{_key(recipe)}"])
        self.checkpoints[path.name] = Path(result.best_checkpoint)
        return self.checkpoints[path.name]


def _key(recipe) -> str:
    from pipelines.mlops.tracking import metric_key

    return metric_key(recipe.registry.selection_metric)


@pytest.fixture(scope="module")
def runs(ray_local, tiny_shards, tmp_path_factory, monkeypatch_module) -> Runs:
    return Runs(tmp_path_factory.mktemp("recipes"), tiny_shards)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield mp


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_runs_end_to_end(runs, path, tmp_path):
    from data_prep.shards import load_manifest
    from pipelines.cli import main

    ckpt = runs.train(path)
    shards = runs.prep(path)
    argv = documented(path)["eval"]
    out = tmp_path / "metrics.json"
    argv = with_flag(argv, "--model", str(ckpt))
    argv = [*argv, "--output", str(out), "--no-tracking", "--device", "cpu", f"data.root={shards}"]
    if "--submission" in argv:
        argv = with_flag(argv, "--submission", str(tmp_path / "submission.zip"))
    assert main(argv) == 0, argv
    metrics = json.loads(out.read_text())
    split = flag(argv, "--split") or _val_split(path)
    counts = load_manifest(str(shards))["counts"]
    assert split in counts, (split, counts)
    if "--submission" in argv:
        assert (tmp_path / "submission.zip").stat().st_size > 0
    else:
        assert metrics["num_samples"] == counts[split]["samples"]


def _val_split(path: Path) -> str:
    from pipelines.config import load_recipe

    return load_recipe(path).data.val_split
