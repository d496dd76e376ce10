"""Training recipes: frozen pydantic models loaded from YAML (docs/INTERFACES.md section 5).

A recipe file has the sections ``model`` (-> :class:`lstc.config.ModelConfig`, a ``preset`` key
picks the base), ``loss`` (-> :class:`lstc.config.LossConfig`), ``data``, ``optim``,
``schedule``, ``train``, ``tracking``, ``registry`` and ``eval``, plus an optional top-level
``description`` and ``base`` (another recipe file, relative to this one, deep-merged under it).
:class:`Recipe` is one schema over all of them; :func:`recipe_keys` walks it (one
:class:`KeySpec` per leaf key, with type, default, bounds, choices and a ``check``).

``load_recipe(path, ["train.epochs=3", "model.lasp=off"])`` applies dotted ``key=value``
overrides whose values are parsed as YAML (``[96, 96]``, ``null``, ``5e-4``). Validation is
strict (see lstc/config.py): an unknown key, a wrong type or an out-of-range value raises ONE
:class:`ConfigError` naming the file that set the key (a ``base`` file, the recipe itself or
``<override>``), the dotted key, the bad value and what is allowed. Numbers like ``5e-4`` are
floats (YAML 1.2 rule; PyYAML's YAML 1.1 default would read them as strings).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from lstc.config import (
    LIST_AS_TUPLE,
    FrozenConfig,
    LossConfig,
    ModelConfig,
    describe_error,
    describe_reason,
    invalid,
)
from lstc.config import ConfigError as _ModelConfigError
from lstc.metrics import METRIC_NAMES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
OVERRIDE = "<override>"


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
    """Parse YAML with the recipe rules (``5e-4`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


# --------------------------------------------------------------------------- MLflow params


def param_text(value: Any) -> str:
    """A leaf value as MLflow param text: None -> ``null``, lists/tuples -> JSON, else str()."""
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def flatten_params(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, str]:
    """Nested mappings / config models / dataclasses -> ``{"a.b.c": param_text(leaf)}``.

    The one flattening of params (``Recipe.flatten`` and ``pipelines.mlops.tracking.flatten``);
    an empty mapping is written as ``{}``.
    """
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, BaseModel):
            v = v.model_dump(mode="json")
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = dataclasses.asdict(v)
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key, sep) if v else {key: "{}"})
        else:
            out[key] = param_text(v)
    return out


# ------------------------------------------------------------------------------ sections


class _Section(FrozenConfig):
    """Base of the recipe's own sections: construction errors are this module's ConfigError."""

    error_type: ClassVar[type[_ModelConfigError]] = ConfigError


def _unit_range(v: tuple[float, float]) -> tuple[float, float]:
    if not 0 < v[0] <= v[1] <= 1:
        raise ValueError("must be 0 < lo <= hi <= 1")
    return v


def _positive_range(v: tuple[float, float]) -> tuple[float, float]:
    if not 0 < v[0] <= v[1]:
        raise ValueError("must be 0 < lo <= hi")
    return v


def _increasing_epochs(v: tuple[int, ...]) -> tuple[int, ...]:
    if any(e < 1 for e in v) or list(v) != sorted(v):
        raise ValueError("must be increasing epochs >= 1")
    return v


class AugmentConfig(_Section):
    """Joint clip + mask augmentation (training only), the same draw for every frame and the mask.

    ``crop_scale``/``crop_ratio``: random resized crop (area fraction, aspect ratio), then resize
    to the model input size. ``hflip``: probability of a horizontal flip; a flipped sample's
    expression has its left/right words swapped (``swap_left_right``), or, with
    ``swap_left_right: false``, samples whose expression mentions left/right are never flipped.
    """

    enabled: bool = Field(True, description="augment training samples")
    crop_prob: float = Field(0.5, ge=0, le=1, description="probability of a random resized crop")
    crop_scale: Annotated[tuple[float, float], LIST_AS_TUPLE, AfterValidator(_unit_range)] = Field(
        (0.6, 1.0), description="crop area fraction [lo, hi]"
    )
    crop_ratio: Annotated[tuple[float, float], LIST_AS_TUPLE, AfterValidator(_positive_range)] = (
        Field((0.75, 1.3333), description="crop aspect ratio [lo, hi]")
    )
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    swap_left_right: bool = Field(True, description="swap left/right words of flipped samples")

    def replace(self, **changes: Any) -> AugmentConfig:
        """A validated copy with `changes` applied."""
        return AugmentConfig.from_dict({**self.__dict__, **changes})


class DataConfig(_Section):
    """Shards and the per-worker data path."""

    root: str = Field("data/refer_shapes/shards", description="shard root (folder or URI)")
    train_split: str = Field("train", description="split to train on")
    val_split: str = Field("test", description="split to validate on")
    batch_size: int = Field(4, ge=1, description="training batch per worker")
    eval_batch_size: int = Field(8, ge=1, description="validation batch per worker")
    num_frames: int | None = Field(None, ge=1, description="null: the model's num_frames")
    shuffle_buffer: int = Field(
        64, ge=0, description="local shuffle buffer (rows) per worker, reseeded every epoch"
    )
    prefetch_batches: int = Field(2, ge=0, description="batches prefetched per worker")
    val_limit: int | None = Field(
        None, ge=1, description="validate on the first N clips of val_split (null: all)"
    )
    cache_train: bool = Field(
        False, description="materialise decoded training samples in the object store"
    )
    cache_val: bool = Field(
        True, description="each worker keeps its val clip rows (JPEG) in memory after epoch 1"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class OptimConfig(_Section):
    """Optimizer."""

    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    lr: float = Field(5e-4, gt=0, description="base learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    momentum: float = Field(0.9, ge=0, description="sgd only")
    backbone_lr_mult: float = Field(
        1.0, ge=0, description="lr factor of the pretrained encoders (visual + text)"
    )
    update_lr_mult: float = Field(
        1.0, ge=0, description="lr factor of the CMAM+ language updates (0 keeps them identity)"
    )
    grad_clip: float = Field(0.0, ge=0, description="max global grad norm; 0 = off")
    accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")


class ScheduleConfig(_Section):
    """Per optimizer step: linear warm-up from ``warmup_factor`` over ``warmup_epochs``, then
    ``step`` (x ``gamma`` at each epoch in ``step_epochs``), ``cosine`` (to ``min_lr_factor``) or
    ``constant``."""

    kind: Literal["step", "cosine", "constant"] = Field("step", description="lr schedule")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length (epochs)")
    warmup_factor: float = Field(0.1, gt=0, le=1, description="lr factor at the warm-up start")
    step_epochs: Annotated[tuple[int, ...], LIST_AS_TUPLE, AfterValidator(_increasing_epochs)] = (
        Field((), description="step: epochs where the lr is multiplied by gamma")
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step: lr factor per step")
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine: final lr factor")


class TrainConfig(_Section):
    """Ray Train run."""

    epochs: int = Field(9, ge=0, description="training epochs (0: evaluation only)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers (STRICT_SPREAD: one per node)"
    )
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored (fp32) on CPU")
    compile: Literal["none", "default", "max-autotune"] = Field(
        "none", description="torch.compile mode of the model and loss in training (none: eager)"
    )
    compile_backend: Literal["inductor", "aot_eager"] = Field(
        "inductor",
        description="torch.compile backend (aot_eager: captured graphs run by eager kernels, "
        "for debugging and CPU tests without a C++ toolchain)",
    )
    channels_last: bool = Field(
        False,
        description="channels-last (2D) / channels_last_3d (3D) weights and clips; meant for "
        "CUDA (cuDNN NHWC kernels, bf16), off by default: no gain measured on CPU",
    )
    seed: int = Field(0, description="random seed")
    storage_path: str = Field("outputs/ray_results", description="Ray Train storage (path/URI)")
    run_name: str = Field(
        "lstc", pattern=r"^[A-Za-z0-9_.\-]+$", description="run folder name under storage_path"
    )
    max_failures: int = Field(0, ge=-1, description="worker-group restarts (-1 = unlimited)")
    find_unused_parameters: bool = Field(False, description="DDP find_unused_parameters")
    ray_address: str | None = Field(None, description="null: RAY_ADDRESS or a local instance")
    measure_loader: bool = Field(
        False, description="benchmark: time one loader-only pass before each epoch"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", description="Ray Train's own console logs; our epoch lines always show"
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_removed_keys(cls, data: Any) -> Any:
        """Checkpoints written before fault injection moved to the tests carry
        ``fail_at_epoch: null``; that (and only the null value) is still read."""
        if isinstance(data, Mapping) and "fail_at_epoch" in data and data["fail_at_epoch"] is None:
            return {k: v for k, v in data.items() if k != "fail_at_epoch"}
        return data


class TrackingConfig(_Section):
    """MLflow tracking."""

    uri: str | None = Field(
        None, description="null: env MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"
    )
    experiment: str = Field("lstc", description="MLflow experiment")
    log_every_steps: int = Field(10, ge=1, description="training metrics every N steps")
    num_overlays: int = Field(4, ge=0, description="validation overlays logged per epoch")
    system_metrics: bool = Field(True, description="MLflow system metrics")


class EvalConfig(_Section):
    """How a prediction becomes a mask, wherever one is made (validation during training,
    ``lstc eval``, ``lstc predict``, the served model): ``p = sigmoid(logit)`` resized to the
    original frame, then ``absolute``: ``p > threshold``; ``relative``: ``p > threshold ·
    max(p)`` per prediction (the CSTM release binarises at half of each prediction's maximum:
    ``relative`` with 0.5). docs/METRICS.md."""

    threshold: float = Field(0.5, gt=0, lt=1, description="mask threshold (see threshold_rule)")
    threshold_rule: Literal["absolute", "relative"] = Field(
        "absolute", description="absolute: p > threshold; relative: p > threshold * max(p)"
    )


MetricName = Literal[METRIC_NAMES]  # type: ignore[valid-type]


# `register` is also ABCMeta.register on the class (never on instances): pydantic's warning
# about the shadowed name is noise here.
warnings.filterwarnings("ignore", r'Field name "register" in "RegistryConfig" shadows')


class RegistryConfig(_Section):
    """MLflow model registry."""

    model_name: str = Field("lstc", description="registered model name")
    selection_metric: MetricName = Field(
        "mean_iou", description="validation metric that picks the champion"
    )
    mode: Literal["max", "min"] = Field("max", description="better is larger or smaller")
    register: bool = Field(True, description="register the best checkpoint")


class Recipe(_Section):
    """A complete, validated training / evaluation recipe.

    Equality and :meth:`hash` ignore :attr:`source`. ``Recipe.from_dict`` ignores a ``base`` key
    (only files resolve it, see :func:`load_recipe`).
    """

    input_only_keys: ClassVar[tuple[str, ...]] = ("base",)

    description: str = Field("", description="free text")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.preset("tiny"))
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    _source: str = PrivateAttr("<dict>")

    @model_validator(mode="before")
    @classmethod
    def _drop_base(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "base" in data:
            return {k: v for k, v in data.items() if k != "base"}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        frames = self.data.num_frames
        if frames is not None and frames != self.model.num_frames:
            raise invalid(
                "data.num_frames",
                frames,
                f"must equal model.num_frames={self.model.num_frames} (or be null)",
            )
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipe):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    # -- derived ---------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The file this recipe came from (``<dict>`` when built from a mapping)."""
        return self._source

    @property
    def num_frames(self) -> int:
        return self.data.num_frames or self.model.num_frames

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flatten(self) -> dict[str, str]:
        """``{"optim.lr": "0.0005", "data.val_limit": "null", ...}`` for MLflow params."""
        return flatten_params(self.to_dict())

    def hash(self) -> str:
        """Stable 16-hex-digit hash of the resolved recipe (key order and source ignored)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, overrides: Sequence[str]) -> Recipe:
        """A copy with dotted ``key=value`` overrides applied and validated."""
        raw = self.to_dict()
        origin: dict[str, str] = {}
        for item in overrides:
            _apply_override(raw, item, origin)
        return _build_recipe(raw, self.source, origin)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Recipe:
        """Validate a nested mapping (``to_dict`` output, a parsed YAML file)."""
        return _build_recipe(data, source, {})


# -------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: Sequence[str] | None = None) -> Recipe:
    """Read, merge (``base``), override and validate a recipe file."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path.name).exists():
        path = CONFIG_DIR / path.name
    origin: dict[str, str] = {}
    raw = _read_with_base(path, (), origin)
    for item in overrides or ():
        _apply_override(raw, item, origin)
    return _build_recipe(raw, str(path), origin)


def _dotted(d: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        yield key
        if isinstance(v, Mapping):
            yield from _dotted(v, key)


def _set_origin(origin: dict[str, str], key: str, value: Any, label: str) -> None:
    """Record that `label` set `key` (and everything under it, when `value` is a mapping)."""
    for old in [k for k in origin if k.startswith(key + ".")]:
        del origin[old]
    origin[key] = label
    if isinstance(value, Mapping):
        origin.update(dict.fromkeys(_dotted(value, key), label))


def _read_with_base(path: Path, seen: tuple[Path, ...], origin: dict[str, str]) -> dict[str, Any]:
    """The file's mapping deep-merged over its ``base`` chain; `origin` maps every dotted key
    to the file that set it last."""
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
    merged: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base={base!r} must be a file name")
        parent = Path(os.path.normpath(path.parent / base))  # relative to this file
        merged = _read_with_base(parent, (*seen, path.resolve()), origin)
    origin.update(dict.fromkeys(_dotted(data, ""), str(path)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _apply_override(raw: dict[str, Any], item: str, origin: dict[str, str]) -> None:
    if "=" not in item:
        raise ConfigError(f"{OVERRIDE}: {item!r} is not key=value (e.g. train.epochs=3)")
    key, _, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"{OVERRIDE}: {item!r} has an empty key")
    try:
        value = yaml_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{OVERRIDE}: {key}: value {text!r} is not valid YAML: {exc}") from None
    node = raw
    for n, p in enumerate(parts[:-1], 1):
        child = node.get(p)
        if child is None:
            child = node[p] = {}
            origin[".".join(parts[:n])] = OVERRIDE  # a section only the override names
        if not isinstance(child, dict):
            raise ConfigError(f"{OVERRIDE}: {key}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value
    _set_origin(origin, key, value, OVERRIDE)


def _build_recipe(raw: Any, source: str, origin: Mapping[str, str]) -> Recipe:
    """Validate `raw`; an error names the file (or ``<override>``) that set the bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(raw).__name__}")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        key, message = describe_error(exc, Recipe, raw)
        raise ConfigError(f"{_origin_of(key, origin, source)}: {message}") from None
    recipe._source = source
    return recipe


def _origin_of(key: str, origin: Mapping[str, str], default: str) -> str:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        label = origin.get(".".join(parts[:n]))
        if label is not None:
            return label
    return default


# ---------------------------------------------------------------------------- key schema


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One leaf key of the recipe schema (for sweep spaces and documentation).

    `type` is the annotation (``float``, ``int | None``, ``tuple[int, int]``, a ``Literal``);
    `choices` lists a Literal's values; bounds are the field's own constraints. :meth:`check`
    validates one value alone: cross checks between keys (``model.target_index <
    model.num_frames``, ``data.num_frames``) run when a whole recipe is built.
    """

    key: str
    type: Any
    default: Any
    description: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    _adapter: TypeAdapter[Any] | None = dataclasses.field(default=None, repr=False, compare=False)
    _info: Any = dataclasses.field(default=None, repr=False, compare=False)

    def check(self, value: Any) -> Any:
        """The validated value (lists become tuples, ``False`` becomes ``"off"`` for switches);
        ConfigError names the key, the value and what is allowed."""
        assert self._adapter is not None
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            why = describe_reason(exc.errors(include_url=False)[0], self._info)
            raise ConfigError(f"{self.key}={value!r} is not valid: {why}") from None


_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


def _leaf_specs(cls: type[FrozenConfig], default: Any, prefix: str) -> Iterator[KeySpec]:
    for name, info in cls.model_fields.items():
        key = f"{prefix}{name}"
        value = getattr(default, name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, FrozenConfig):
            yield from _leaf_specs(info.annotation, value, key + ".")
            continue
        bounds = {
            b: getattr(m, b)
            for m in info.metadata
            for b in ("gt", "ge", "lt", "le")
            if hasattr(m, b)
        }
        args = get_args(info.annotation)
        is_literal = get_origin(info.annotation) is Literal
        meta = tuple(info.metadata)
        annotated = Annotated[(info.annotation, *meta)] if meta else info.annotation
        yield KeySpec(
            key=key,
            type=info.annotation,
            default=value,
            description=info.description or "",
            choices=tuple(args) if is_literal else None,
            _adapter=TypeAdapter(annotated, config=_STRICT),
            _info=info,
            **bounds,
        )


@functools.cache
def _recipe_keys() -> tuple[KeySpec, ...]:
    return tuple(_leaf_specs(Recipe, Recipe(), ""))


def recipe_keys() -> list[KeySpec]:
    """One :class:`KeySpec` per leaf key of a recipe (``optim.lr``, ``model.cmam``, ...), in
    schema order; defaults are those of ``Recipe()`` (the model section: the tiny preset)."""
    return list(_recipe_keys())


def list_recipes() -> list[Path]:
    """The recipe files shipped in ``configs/`` (sweep spaces excluded)."""
    return sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.name.startswith("sweep"))


__all__ = [
    "CONFIG_DIR",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "KeySpec",
    "OptimConfig",
    "Recipe",
    "RegistryConfig",
    "ScheduleConfig",
    "TrackingConfig",
    "TrainConfig",
    "flatten_params",
    "list_recipes",
    "load_recipe",
    "param_text",
    "recipe_keys",
    "yaml_load",
]
