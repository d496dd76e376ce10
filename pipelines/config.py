"""Training recipes: typed dataclasses loaded from YAML (docs/INTERFACES.md section 5).

A recipe file has the sections ``model`` (-> :class:`lstc.config.ModelConfig`, a ``preset`` key
picks the base), ``loss`` (-> :class:`lstc.config.LossConfig`), ``data``, ``optim``,
``schedule``, ``train``, ``tracking`` and ``registry``, plus an optional top-level
``description`` and ``base`` (another recipe file, relative to this one, deep-merged under it).

``load_recipe(path, ["train.epochs=3", "model.lasp=off"])`` applies dotted ``key=value``
overrides whose values are parsed as YAML (``[96, 96]``, ``null``, ``5e-4``). Validation is
strict: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` naming
the dotted key and the file (or ``<override>``). Numbers like ``5e-4`` are floats (YAML 1.2 rule;
PyYAML's YAML 1.1 default would read them as strings).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lstc.config import ConfigError as _ModelConfigError
from lstc.config import LossConfig, ModelConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(_ModelConfigError):
    """A recipe key or value is not valid; the message names the key and the file."""


# ------------------------------------------------------------------------------------ YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``5e-4`` / ``1e3`` as floats (YAML 1.2 float syntax)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


# ------------------------------------------------------------------------------ sections


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Joint clip + mask augmentation (training only), the same draw for every frame and the mask.

    ``crop_scale``/``crop_ratio``: random resized crop (area fraction, aspect ratio), then resize
    to the model input size. ``hflip``: probability of a horizontal flip; a flipped sample's
    expression has its left/right words swapped (``swap_left_right``), or, with
    ``swap_left_right: false``, samples whose expression mentions left/right are never flipped.
    """

    enabled: bool = True
    crop_prob: float = 0.5
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333)
    hflip: float = 0.5
    swap_left_right: bool = True


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    root: str = "data/refer_shapes/shards"
    train_split: str = "train"
    val_split: str = "test"
    batch_size: int = 4  # per worker
    eval_batch_size: int = 8
    num_frames: int | None = None  # None: the model's num_frames
    shuffle_buffer: int = 64  # local shuffle buffer (rows) on each worker, reseeded every epoch
    prefetch_batches: int = 2
    val_limit: int | None = None  # validate on the first N clips of val_split (None: all)
    cache_train: bool = False  # materialise decoded training samples in the object store
    cache_val: bool = True  # each worker keeps its val clip rows (JPEG) in memory after epoch 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 5e-4
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    backbone_lr_mult: float = 1.0  # lr factor of the pretrained encoders (visual + text)
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    accumulation: int = 1  # micro-batches per optimizer step


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Per optimizer step: linear warm-up from ``warmup_factor`` over ``warmup_epochs``, then
    ``step`` (x ``gamma`` at each epoch in ``step_epochs``), ``cosine`` (to ``min_lr_factor``) or
    ``constant``."""

    kind: Literal["step", "cosine", "constant"] = "step"
    warmup_epochs: float = 0.0
    warmup_factor: float = 0.1
    step_epochs: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr_factor: float = 0.0


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 9
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    amp: bool = True  # bf16 autocast on CUDA; ignored (fp32) on CPU
    seed: int = 0
    storage_path: str = "outputs/ray_results"
    run_name: str = "lstc"
    max_failures: int = 0
    fail_at_epoch: int | None = None  # test hook: rank 1 raises in this (1-based) epoch, once
    find_unused_parameters: bool = False
    ray_address: str | None = None  # None: RAY_ADDRESS or a local instance
    measure_loader: bool = False  # benchmark: time one loader-only pass before each epoch
    log_level: str = "WARNING"  # Ray Train's own console logs; our epoch lines always show


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    uri: str | None = None  # None: env MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "lstc"
    log_every_steps: int = 10
    num_overlays: int = 4
    system_metrics: bool = True


@dataclass(frozen=True, kw_only=True)
class RegistryConfig:
    model_name: str = "lstc"
    selection_metric: str = "mean_iou"  # an lstc.metrics name (validation)
    mode: Literal["max", "min"] = "max"
    register: bool = True


# Ranges checked after type validation: dotted key -> (predicate, message).
_RANGES: dict[str, tuple[Any, str]] = {
    "data.batch_size": (lambda v: v >= 1, "must be >= 1"),
    "data.eval_batch_size": (lambda v: v >= 1, "must be >= 1"),
    "data.num_frames": (lambda v: v is None or v >= 1, "must be >= 1 or null"),
    "data.shuffle_buffer": (lambda v: v >= 0, "must be >= 0"),
    "data.prefetch_batches": (lambda v: v >= 0, "must be >= 0"),
    "data.val_limit": (lambda v: v is None or v >= 1, "must be >= 1 or null"),
    "data.augment.crop_prob": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "data.augment.hflip": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "data.augment.crop_scale": (lambda v: 0 < v[0] <= v[1] <= 1, "must be 0 < lo <= hi <= 1"),
    "data.augment.crop_ratio": (lambda v: 0 < v[0] <= v[1], "must be 0 < lo <= hi"),
    "optim.lr": (lambda v: v > 0, "must be > 0"),
    "optim.weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "optim.backbone_lr_mult": (lambda v: v >= 0, "must be >= 0"),
    "optim.grad_clip": (lambda v: v >= 0, "must be >= 0 (0 = off)"),
    "optim.accumulation": (lambda v: v >= 1, "must be >= 1"),
    "schedule.warmup_epochs": (lambda v: v >= 0, "must be >= 0"),
    "schedule.warmup_factor": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "schedule.step_epochs": (
        lambda v: all(e >= 1 for e in v) and list(v) == sorted(v),
        "must be increasing epochs >= 1",
    ),
    "schedule.gamma": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "schedule.min_lr_factor": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "train.epochs": (lambda v: v >= 0, "must be >= 0"),
    "train.num_workers": (lambda v: v >= 1, "must be >= 1"),
    "train.cpus_per_worker": (lambda v: v > 0, "must be > 0"),
    "train.max_failures": (lambda v: v >= -1, "must be >= -1 (-1 = unlimited)"),
    "train.fail_at_epoch": (lambda v: v is None or v >= 1, "must be >= 1 or null"),
    "train.log_level": (
        lambda v: v in ("DEBUG", "INFO", "WARNING", "ERROR"),
        "must be DEBUG, INFO, WARNING or ERROR",
    ),
    "train.run_name": (
        lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", v)),
        "must match [A-Za-z0-9_.-]+",
    ),
    "tracking.log_every_steps": (lambda v: v >= 1, "must be >= 1"),
    "tracking.num_overlays": (lambda v: v >= 0, "must be >= 0"),
}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A complete, validated training / evaluation recipe."""

    description: str = ""
    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("tiny"))
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    source: str = field(default="<dict>", compare=False)  # file it came from (not serialised)

    # -- derived ---------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self.data.num_frames or self.model.num_frames

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples); ``from_dict(to_dict())`` round-trips."""
        out: dict[str, Any] = {"description": self.description}
        out["model"] = self.model.to_dict()
        out["loss"] = self.loss.to_dict()
        for name in ("data", "optim", "schedule", "train", "tracking", "registry"):
            out[name] = _plain(dataclasses.asdict(getattr(self, name)))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flatten(self) -> dict[str, str]:
        """``{"optim.lr": "0.0005", ...}`` for MLflow params (every leaf, as text)."""
        return _flatten(self.to_dict())

    def hash(self) -> str:
        """Stable 16-hex-digit hash of the resolved recipe (key order and source ignored)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, overrides: Sequence[str]) -> Recipe:
        """A copy with dotted ``key=value`` overrides applied and validated."""
        raw = self.to_dict()
        for item in overrides:
            _apply_override(raw, item)
        return Recipe.from_dict(raw, source=self.source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Recipe:
        return _build_recipe(data, source)


# -------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: Sequence[str] | None = None) -> Recipe:
    """Read, merge (``base``), override and validate a recipe file."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path.name).exists():
        path = CONFIG_DIR / path.name
    raw = _read_with_base(path, seen=())
    for item in overrides or ():
        _apply_override(raw, item)
    return _build_recipe(raw, str(path))


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base={base!r} must be a file name")
    parent = _read_with_base((path.parent / base), seen + (path.resolve(),))
    return _deep_merge(parent, data)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"<override>: {item!r} is not key=value (e.g. train.epochs=3)")
    key, _, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"<override>: {item!r} has an empty key")
    try:
        value = yaml_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"<override>: {key}: value {text!r} is not valid YAML: {exc}") from None
    node = raw
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"<override>: {key}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


# ----------------------------------------------------------------------------- validation


def _build_recipe(raw: Mapping[str, Any], source: str) -> Recipe:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(raw).__name__}")
    sections = {f.name for f in dataclasses.fields(Recipe) if f.name != "source"}
    unknown = sorted(set(raw) - sections - {"base"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r}; valid top-level keys are {sorted(sections)}"
        )
    kwargs: dict[str, Any] = {"source": source}
    if "description" in raw:
        if not isinstance(raw["description"], str):
            raise ConfigError(f"{source}: description must be text")
        kwargs["description"] = raw["description"]
    for name, builder in (("model", ModelConfig.from_dict), ("loss", LossConfig.from_dict)):
        section = raw.get(name)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ConfigError(f"{source}: {name} must be a mapping")
        try:
            kwargs[name] = builder(_normalise_model_values(name, section))
        except _ModelConfigError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{source}: {name}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {name}: {exc}") from None
    hints = typing.get_type_hints(Recipe)
    for name in ("data", "optim", "schedule", "train", "tracking", "registry"):
        if name in raw and raw[name] is not None:
            kwargs[name] = _build_section(hints[name], raw[name], name, source)
    recipe = Recipe(**kwargs)
    _check_cross(recipe, source)
    return recipe


def _normalise_model_values(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Floats written as ints (``pos_weight: 2``) are fine for lstc's own dataclasses, and YAML's
    ``on``/``off`` booleans are the strings ``"on"``/``"off"`` for text switches (``lasp: off``)."""
    cls = ModelConfig if section == "model" else LossConfig
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    out = dict(values)
    for k, v in out.items():
        if isinstance(defaults.get(k), float) and isinstance(v, int) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(defaults.get(k), str) and isinstance(v, bool):
            out[k] = "on" if v else "off"
    return out


def _build_section(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}.{unknown[0]}'; valid keys of {prefix} are "
            f"{sorted(fields)}"
        )
    values = {}
    for k, v in data.items():
        key = f"{prefix}.{k}"
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            values[k] = _build_section(tp, v if v is not None else {}, key, source)
        else:
            values[k] = _coerce(tp, v, key, source)
        check = _RANGES.get(key)
        if check is not None and not check[0](values[k]):
            raise ConfigError(f"{source}: {key}={v!r} {check[1]}")
    return cls(**values)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    def bad(expect: str) -> ConfigError:
        return ConfigError(f"{source}: {key}={value!r} is not valid: expected {expect}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key, source)
        raise bad(_type_name(tp))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}={value!r} is not valid: choose one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key, source) for v in value)
        if len(value) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(a, v, key, source) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("text")
        return value
    raise bad(_type_name(tp))  # pragma: no cover - unsupported annotation


def _check_cross(recipe: Recipe, source: str) -> None:
    m = recipe.model
    if recipe.data.num_frames is not None and recipe.data.num_frames != m.num_frames:
        raise ConfigError(
            f"{source}: data.num_frames={recipe.data.num_frames} must equal "
            f"model.num_frames={m.num_frames} (or be null)"
        )
    if recipe.train.fail_at_epoch is not None and recipe.train.fail_at_epoch > max(
        recipe.train.epochs, 1
    ):
        raise ConfigError(
            f"{source}: train.fail_at_epoch={recipe.train.fail_at_epoch} is after the last "
            f"epoch (train.epochs={recipe.train.epochs})"
        )
    valid_metrics = _metric_names()
    if recipe.registry.selection_metric not in valid_metrics:
        raise ConfigError(
            f"{source}: registry.selection_metric={recipe.registry.selection_metric!r} is not "
            f"valid: choose one of {sorted(valid_metrics)}"
        )


def _metric_names() -> set[str]:
    names = {"overall_iou", "mean_iou", "mAP@0.5:0.95", "coco_mAP@0.5:0.95", "coco_AP@0.5"}
    names |= {f"P@{k / 100:.1f}" for k in (50, 60, 70, 80, 90)}
    names |= {"J", "F", "J&F"}
    return names


# ---------------------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        else:
            out[key] = "null" if v is None else str(v)
    return out


def list_recipes() -> list[Path]:
    """The recipe files shipped in ``configs/`` (sweep spaces excluded)."""
    return sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("sweep"))


__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "Recipe",
    "RegistryConfig",
    "ScheduleConfig",
    "TrackingConfig",
    "TrainConfig",
    "list_recipes",
    "load_recipe",
    "yaml_load",
]
