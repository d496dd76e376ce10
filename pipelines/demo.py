"""The demo behind ``lstc demo``: the whole pipeline on embedded defaults, offline, on this machine.

Steps (each one resumable, so rerunning the command finishes an interrupted demo):

1. ``lstc synth``  — generate the refer-shapes benchmark in the A2D Sentences layout;
2. ``lstc prep``   — Ray Data + decord → Parquet shards, manifest, rejects;
3. ``lstc train``  — Ray Train (2 CPU workers, DDP) on the tiny recipe, tracked in MLflow
   (SQLite ``./mlflow.db``), best model registered with alias champion/challenger;
4. ``lstc eval``   — the registered model re-evaluated from the registry.

Resuming: the synthetic benchmark is kept when its marker (``raw/.complete.json``) matches;
prep keeps finished shards; a training run that finished and was registered for the same
resolved recipe, shards and tracking store is kept (``<workdir>/.demo_state.json``), as is the
evaluation of the same model version. An interrupted training resumes from its last epoch
checkpoint (``pipelines.train.driver.train``).

At the end the demo writes its summary, ``<workdir>/demo_summary.json`` and the human-readable
``<workdir>/demo_summary.md`` (the text the README quotes): the evaluation metrics of the
registered model, the best validation metrics, per-stage timings, the machine, the date, the
git commit and the command line. Both are written atomically.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "refer_shapes_tiny.yaml"

SUMMARY_JSON = "demo_summary.json"
SUMMARY_MD = "demo_summary.md"
STATE_FILE = ".demo_state.json"  # finished train / eval stages (what a rerun keeps)
STAGES = ("synth", "prep", "train", "eval")

#: display names of the metrics of ``lstc.metrics`` in the markdown summary
METRIC_LABELS: dict[str, str] = {
    "overall_iou": "overall IoU",
    "mean_iou": "mean IoU",
    "mAP@0.5:0.95": "mAP@0.5:0.95 (mean of P@K)",
    "coco_mAP@0.5:0.95": "COCO mAP@0.5:0.95",
    "coco_AP@0.5": "COCO AP@0.5",
    "J&F": "J&F",
}
#: key of the training throughput in an epoch's metrics (current name first, then the older)
SAMPLES_PER_S_KEYS = ("train/epoch/samples_per_s", "train/samples_per_s")
#: validation metrics shown in the markdown (all of them are in the JSON)
HEADLINE = ("mean_iou", "overall_iou", "P@0.5", "mAP@0.5:0.95", "J&F")


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """Knobs of ``lstc demo`` (one field per command-line flag)."""

    workdir: str = "data/refer_shapes"
    scale: str = "demo"  # tiny | demo
    videos: int | None = None
    seed: int = 0
    recipe: str = str(DEFAULT_RECIPE)
    overrides: list[str] = field(default_factory=list)
    stride: int = 3  # a slow refer-shapes object moves ~1.5 radii in a 4-frame clip
    skip_train: bool = False


# ----------------------------------------------------------------------------- small helpers


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finite(v: Any) -> float | None:
    """``v`` as a float, or None for NaN / inf / non-numbers (JSON has no NaN)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def command_line(args: DemoOptions) -> str:
    """The ``lstc demo`` command equivalent to ``args`` (flags left at their default omitted)."""
    default = DemoOptions()
    parts = ["lstc", "demo"]
    for name, flag in (
        ("workdir", "--workdir"),
        ("scale", "--scale"),
        ("videos", "--videos"),
        ("seed", "--seed"),
        ("recipe", "--recipe"),
        ("stride", "--stride"),
    ):
        value = getattr(args, name)
        if value != getattr(default, name):
            parts += [flag, str(value)]
    if args.skip_train:
        parts.append("--skip-train")
    return shlex.join([*parts, *args.overrides])


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, RAM, OS, Python, library versions and GPUs of this machine."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        ram = None
    versions = {}
    for name in ("torch", "ray", "mlflow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a description only
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "ram_gib": round(ram, 1) if ram else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "gpus": gpus,
    }


def git_info() -> dict[str, Any]:
    """Commit, branch and dirty flag of the checkout the code runs from (None outside git)."""
    from pipelines.mlops.tracking import git_tags

    tags = git_tags(Path(__file__).resolve().parent)
    dirty = tags.get("git.dirty")
    return {
        "commit": tags.get("git.commit"),
        "branch": tags.get("mlflow.source.git.branch"),
        "dirty": None if dirty is None else dirty == "true",
    }


# ----------------------------------------------------------------------------- stage state


def _load_state(work: Path) -> dict[str, Any]:
    path = work / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _save_state(work: Path, state: Mapping[str, Any]) -> None:
    from data_prep.storage import write_json

    write_json(work / STATE_FILE, state, indent=1)


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a file (the shard manifest identifies the exact shards); None if absent."""
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _kept_train(
    record: Mapping[str, Any] | None, key: str, uri: str, register: bool
) -> dict[str, Any] | None:
    """The recorded training result when it can be reused as is, else None.

    Reusable: same key (recipe hash, shards, tracking store), the best checkpoint still on disk
    and, when the recipe registers, the recorded model version still in the registry and made
    from the recorded run.
    """
    if not record or record.get("key") != key:
        return None
    result = record.get("result") or {}
    best = result.get("best_checkpoint")
    if not best or not (Path(best) / "model.pt").is_file():
        return None
    registered = result.get("registered")
    if register:
        if not registered:
            return None  # registration failed last time: train() retries it
        try:
            mv = _client(uri).get_model_version(record["model_name"], registered[0])
        except Exception:  # noqa: BLE001 - gone (or the store moved): train again
            return None
        if mv.run_id != result.get("mlflow_run_id"):
            return None
    return dict(result)


def _kept_eval(record: Mapping[str, Any] | None, key: str, uri: str) -> dict[str, Any] | None:
    """The recorded evaluation when its MLflow run still exists and finished, else None."""
    if not record or record.get("key") != key:
        return None
    run_id = record.get("run_id")
    if run_id:
        try:
            if _client(uri).get_run(run_id).info.status != "FINISHED":
                return None
        except Exception:  # noqa: BLE001
            return None
    return dict(record)


def _eval_run_ids(uri: str, experiment: str, model_uri: str) -> dict[str, int]:
    """``{run_id: start_time}`` of the eval runs of ``model_uri`` in ``experiment``."""
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return {}
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`lstc.kind` = 'eval' and tags.model_uri = '{model_uri}'",
            max_results=1000,
        )
    except Exception:  # noqa: BLE001 - the summary then lacks the eval run id
        return {}
    return {r.info.run_id: int(r.info.start_time or 0) for r in runs}


def _current_aliases(uri: str, name: str, version: str) -> list[str] | None:
    try:
        return sorted(_client(uri).get_model_version(name, version).aliases)
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------- summary


def _pct(v: Any) -> str:
    f = _finite(v)
    return "-" if f is None else f"{100 * f:.2f}"


def _label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def _ordered(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` in the order of ``lstc.metrics.METRIC_NAMES``, other keys after, sorted."""
    from lstc.metrics import METRIC_NAMES

    rank = {name: i for i, name in enumerate(METRIC_NAMES)}
    keys = sorted(metrics, key=lambda k: (rank.get(k, len(rank)), k))
    return {k: metrics[k] for k in keys}


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _label_table(by_label: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per-label rows (``samples`` is a count, the rest in %), labels sorted."""
    if not by_label:
        return []
    cols = [k for k in HEADLINE if any(k in m for m in by_label.values())]
    lines = [
        "",
        "Per label (refer-shapes: the expression kind; values in %, samples a count):",
        "",
        "| label | samples | " + " | ".join(_label(k) for k in cols) + " |",
        "|---|---:|" + "---:|" * len(cols),
    ]
    for label in sorted(by_label):
        m = by_label[label]
        n = _finite(m.get("num_samples"))
        cells = [_pct(m.get(k)) for k in cols]
        count = "-" if n is None else str(int(n))
        lines.append(f"| {label} | {count} | " + " | ".join(cells) + " |")
    return lines


def format_markdown(summary: Mapping[str, Any]) -> str:
    """The human-readable summary (what the README quotes verbatim)."""
    ev, tr, reg = summary["eval"], summary["train"], summary.get("registered_model")
    m = summary["machine"]
    lines = [f"### `{summary['command']}` — {summary['date_utc']}", ""]
    if reg:
        lines.append(
            f"Registered model `{reg['name']}` version {reg['version']} (alias "
            f"`{reg['alias']}` at registration) evaluated from the registry on the "
            f"`{ev['split']}` split, {ev['num_samples']} samples (values in %):"
        )
    else:
        lines.append(
            f"Best checkpoint (not registered) evaluated on the `{ev['split']}` split, "
            f"{ev['num_samples']} samples (values in %):"
        )
    lines += ["", "| metric | value |", "|---|---:|"]
    by_label: dict[str, dict[str, Any]] = {}
    for k, v in _ordered(ev["metrics"]).items():
        if "/" in k:  # "<label>/<metric>" (per expression kind, actor, action, ...)
            label, name = k.split("/", 1)
            by_label.setdefault(label, {})[name] = v
        elif k != "num_samples":
            lines.append(f"| {_label(k)} | {_pct(v)} |")
    lines += _label_table(by_label)
    best = tr["best_val"]
    lines += [
        "",
        f"Best validation (epoch {tr['best_epoch']} of {tr['epochs']}): "
        + ", ".join(f"{_label(k)} {_pct(best.get(k))}" for k in HEADLINE if k in best)
        + ".",
    ]
    rate = tr.get("samples_per_s_last_epoch")
    if rate is not None:
        lines.append(
            f"Training: {rate:.1f} samples/s in the last epoch on "
            f"{tr['num_workers']} Ray Train workers ({'GPU' if tr['use_gpu'] else 'CPU'})."
        )
    lines += ["", "| stage | status | time |", "|---|---|---:|"]
    for name in STAGES:
        st = summary["stages"].get(name)
        if st is None:
            continue
        when = _seconds(st["seconds"])
        if st["status"] == "kept" and st.get("seconds_when_run") is not None:
            when += f" (ran earlier in {_seconds(st['seconds_when_run'])})"
        lines.append(f"| {name} | {st['status']} | {when} |")
    lines.append(f"| total (wall) | | {_seconds(summary['wall_seconds'])} |")
    gpu = ", ".join(m["gpus"]) if m["gpus"] else "no GPU"
    v = m["versions"]
    g = summary["git"]
    dirty = {True: " (tree dirty)", False: " (clean tree)", None: ""}[g.get("dirty")]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gib']} GiB RAM, "
        f"{gpu}; {m['os']}; Python {m['python']}, torch {v.get('torch')}, ray {v.get('ray')}, "
        f"mlflow {v.get('mlflow')}.",
        f"Code: git commit `{g.get('commit') or 'unknown'}`{dirty}. Recipe `{summary['recipe']}`"
        + (
            f" with overrides `{' '.join(summary['recipe_overrides'])}`."
            if summary["recipe_overrides"]
            else " without overrides."
        ),
        f"MLflow ({summary['tracking_uri']}): train run `{tr['mlflow_run_id']}`, eval run "
        f"`{ev['mlflow_run_id']}`.",
        "",
    ]
    return "\n".join(lines)


def write_summary(work: Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``demo_summary.json`` and ``demo_summary.md`` in ``work`` (atomically)."""
    from data_prep.storage import write_json, write_text

    js, md = work / SUMMARY_JSON, work / SUMMARY_MD
    write_json(js, summary, indent=1, sort_keys=False, default=str)
    write_text(md, format_markdown(summary))
    return js, md


def _metric_names(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``val/P_at_0.5``-style keys of a training result back to ``lstc.metrics`` names."""
    from lstc.metrics import METRIC_NAMES
    from pipelines.mlops.tracking import metric_key

    back = {metric_key(n): n for n in (*METRIC_NAMES, "num_samples")}
    out = {}
    for k, v in metrics.items():
        if k.startswith("val/"):
            name = k[len("val/") :]
            out[back.get(name, name)] = _finite(v)
    return out


# ----------------------------------------------------------------------------- the demo


def run_demo(args: DemoOptions) -> int:
    """Run synth -> prep -> train -> eval in ``args.workdir``; write and print the summary."""
    wall0 = time.perf_counter()
    from data_prep.clipspec import ClipSpec
    from data_prep.prep import PrepConfig, run_prep
    from data_prep.storage import write_text
    from data_prep.synthetic import config_for, generate
    from pipelines.config import load_recipe
    from pipelines.mlops.tracking import resolve_tracking_uri

    work = Path(args.workdir)
    raw, shards = work / "raw", work / "shards"
    demo_overrides = [f"data.root={shards}", f"train.seed={args.seed}"]
    recipe = load_recipe(args.recipe, [*demo_overrides, *args.overrides])
    if not any(o.startswith("train.run_name=") for o in args.overrides):
        # one training run per benchmark size: a tiny demo after a full one (same workdir)
        # must not resume the full run's checkpoints on other shards
        size = args.scale + (f"-{args.videos}v" if args.videos else "")
        demo_overrides.append(f"train.run_name={recipe.train.run_name}-{size}")
        recipe = load_recipe(args.recipe, [*demo_overrides, *args.overrides])
    model_cfg = recipe.model
    uri = resolve_tracking_uri(recipe.tracking.uri)
    # One Ray instance for every step, sized so that Ray Data can still read while the
    # training workers hold their CPUs (a 2-core laptop would otherwise starve the reader).
    from pipelines.ray_setup import init_ray

    tr = recipe.train
    init_ray(tr.ray_address, min_cpus=tr.num_workers * tr.cpus_per_worker + 2)
    state = _load_state(work)
    stages: dict[str, dict[str, Any]] = {}

    def finish_stage(name: str, t0: float, kept: bool) -> None:
        seconds = time.perf_counter() - t0
        previous = state.get("timings", {}).get(name)
        if kept:
            stages[name] = {
                "status": "kept",
                "seconds": seconds,
                "seconds_when_run": (previous or {}).get("seconds"),
                "ran_at_utc": (previous or {}).get("at_utc"),
            }
        else:
            stages[name] = {"status": "ran", "seconds": seconds}
            state.setdefault("timings", {})[name] = {"seconds": seconds, "at_utc": _now()}
            _save_state(work, state)

    t0 = _step(f"1/4 synthetic benchmark ({args.scale}) -> {raw}")
    done_marker = raw / ".complete.json"
    synth_cfg = config_for(
        args.scale, args.seed, **({"num_videos": args.videos} if args.videos else {})
    )
    # the whole generator config: a changed generator (or scale) regenerates the benchmark
    wanted = json.dumps({"scale": args.scale, **asdict(synth_cfg)}, sort_keys=True)
    synth_kept = done_marker.exists() and done_marker.read_text() == wanted
    if synth_kept:
        print("already generated (delete the folder to regenerate)")
    else:
        counts = generate(raw, synth_cfg)
        write_text(done_marker, wanted)
        print(
            f"{counts['videos']} videos ({counts['train']} train / {counts['test']} test), "
            f"{counts['expressions']} expressions"
        )
    finish_stage("synth", t0, synth_kept)

    t0 = _step(f"2/4 prepare shards (Ray Data + decord) -> {shards}")
    prep = run_prep(
        PrepConfig(
            dataset="refer_shapes",
            root=str(raw),
            out=str(shards),
            clip=ClipSpec(
                num_frames=recipe.num_frames,
                stride=args.stride,
                height=model_cfg.input_size[0],
                width=model_cfg.input_size[1],
            ),
        )
    )
    print(prep.text())
    finish_stage("prep", t0, prep.shards > 0 and prep.shards_skipped == prep.shards)
    if args.skip_train:
        print("\n--skip-train: stopping after the shards (no summary written)")
        return 0

    from pipelines.train.driver import TrainResult, train

    shards_hash = _file_sha256(shards / "manifest.json")
    t0 = _step(f"3/4 train {tr.run_name} ({tr.num_workers} Ray Train workers)")
    train_key = json.dumps([recipe.hash(), shards_hash, uri])
    kept = _kept_train(state.get("train"), train_key, uri, recipe.registry.register)
    if kept is not None:
        result = kept
        print(
            f"already trained and registered (MLflow run {result['mlflow_run_id']}); "
            f"delete {work / STATE_FILE} to run train() again"
        )
    else:
        trained: TrainResult = train(recipe)
        result = json.loads(json.dumps(trained.to_dict(), default=str))
        state["train"] = {
            "key": train_key,
            "model_name": recipe.registry.model_name,
            "result": result,
        }
        _save_state(work, state)
    finish_stage("train", t0, kept is not None)
    best_val = _metric_names(result["best_metrics"])
    print(
        json.dumps(
            {"best_checkpoint": result["best_checkpoint"], **result["best_metrics"]},
            indent=2,
            default=str,
        )
    )

    t0 = _step("4/4 evaluate the registered model")
    from pipelines.eval.runner import EvalOptions, run_eval

    registered = result.get("registered")
    if registered:
        version, alias = registered
        model_uri = f"models:/{recipe.registry.model_name}/{version}"
        print(f"registered {recipe.registry.model_name} version {version} (alias {alias})")
    else:
        print("model was not registered (see warnings above); evaluating the best checkpoint")
        model_uri = str(result["best_checkpoint"])
    experiment = recipe.tracking.experiment
    eval_key = json.dumps([model_uri, shards_hash, uri])
    eval_kept = _kept_eval(state.get("eval"), eval_key, uri)
    if eval_kept is not None:
        metrics = eval_kept["metrics"]
        eval_run_id, split = eval_kept["run_id"], eval_kept["split"]
        print(f"already evaluated (MLflow run {eval_run_id}); delete {work / STATE_FILE} to redo")
    else:
        before = _eval_run_ids(uri, experiment, model_uri)
        results = run_eval(
            EvalOptions(model=model_uri, data=str(shards), tracking_uri=uri, experiment=experiment)
        )
        new = {
            k: s for k, s in _eval_run_ids(uri, experiment, model_uri).items() if k not in before
        }
        eval_run_id = max(new, key=new.__getitem__) if new else None
        split = recipe.data.val_split
        if eval_run_id:
            split = _client(uri).get_run(eval_run_id).data.tags.get("eval.split", split)
        metrics = {k: _finite(v) for k, v in results.items()}
        state["eval"] = {"key": eval_key, "run_id": eval_run_id, "split": split, "metrics": metrics}
        _save_state(work, state)
    finish_stage("eval", t0, eval_kept is not None)

    last = result.get("last_metrics") or {}
    summary: dict[str, Any] = {
        "date_utc": _now(),
        "command": command_line(args),
        "argv": list(sys.argv),
        "cwd": str(Path.cwd()),
        "workdir": str(work.resolve()),
        "scale": args.scale,
        "seed": args.seed,
        "recipe": args.recipe,
        "recipe_overrides": list(args.overrides),
        "demo_overrides": demo_overrides,
        "recipe_hash": recipe.hash(),
        "tracking_uri": uri,
        "experiment": experiment,
        "eval": {
            "model_uri": model_uri,
            "split": split,
            "num_samples": int(metrics.get("num_samples") or 0),
            "mlflow_run_id": eval_run_id,
            "metrics": _ordered(metrics),
        },
        "train": {
            "run_name": tr.run_name,
            "run_dir": result["run_dir"],
            "mlflow_run_id": result["mlflow_run_id"],
            "epochs": tr.epochs,
            "best_epoch": result["best_metrics"].get("epoch"),
            "best_val": best_val,
            "best_checkpoint": result["best_checkpoint"],
            "num_workers": tr.num_workers,
            "use_gpu": tr.use_gpu,
            "samples_per_s_last_epoch": _finite(
                next((last[k] for k in SAMPLES_PER_S_KEYS if k in last), None)
            ),
        },
        "registered_model": (
            {
                "name": recipe.registry.model_name,
                "version": registered[0],
                "alias": registered[1],
                "aliases_now": _current_aliases(uri, recipe.registry.model_name, registered[0]),
            }
            if registered
            else None
        ),
        "stages": stages,
        "wall_seconds": time.perf_counter() - wall0,
        "machine": machine_info(),
        "git": git_info(),
    }
    js, md = write_summary(work, summary)

    print("\n=== done ===")
    print("  ".join(f"{k}: {v['seconds']:.0f}s ({v['status']})" for k, v in stages.items()))
    print(f"summary: {md.resolve()} (and {js.name})")
    print(
        f"Browse runs, overlays and the registry:  .venv/bin/mlflow ui --backend-store-uri "
        f"{uri}   (then open http://127.0.0.1:5000)"
    )
    return 0
