"""The sweep spec: one YAML file (``configs/sweeps/*.yaml``) describing an Optuna sweep.

::

    name: refer_shapes_tiny            # sweep name = default study name = MLflow parent run
    recipe: ../refer_shapes_tiny.yaml  # base recipe, relative to this file
    overrides: [train.num_workers=1]   # recipe overrides applied to every trial
    space:                             # recipe keys -> distributions
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      loss.pos_weight: {type: float, low: 1.0, high: 10.0}
      model.lasp: {type: categorical, choices: ["on", "off"]}
    objective: {metric: val/mean_iou, direction: maximize}
    n_trials: 8
    parallel: auto                     # or an int; auto = cluster CPUs // CPUs per trial
    sampler: {kind: tpe, seed: 0}
    pruner: {kind: median, n_startup_trials: 2, n_warmup_steps: 1}
    budget: {epochs: 4}
    storage: null                      # null: sqlite:///<output_dir>/<name>/optuna.db
    heartbeat_s: 30                    # running trials beat every 30 s (RDB/SQLite studies)
    grace_s: null                      # silent that long (null: 2 x heartbeat_s) -> FAIL, retry

:func:`load_spec` validates the whole spec before any trial starts: unknown spec fields, space
keys that are not recipe keys (:func:`pipelines.config.recipe_keys`), empty or inverted
ranges, bounds or choices the key rejects, a log range that is not positive, an objective
that training does not report - each raises ONE :class:`SweepSpecError` naming the spec file
and the key. ``pipelines.config.KeySpec.check`` judges each bound and choice, and a recipe is
built at every corner of the space so that cross-key checks run too. A pruner that could never
act within ``budget.epochs`` and a ``grace_s`` not above ``heartbeat_s`` are refused too.

``heartbeat_s`` / ``grace_s`` (integers, Optuna's ``heartbeat_interval`` / ``grace_period``):
on an RDB or SQLite study the driver records a heartbeat of each of its running trials every
``heartbeat_s``; a RUNNING trial silent for more than ``grace_s`` (its driver was killed or
lost) is failed by whichever driver of the study notices and retried once. Optuna's journal
storage has no heartbeat; there (and with ``heartbeat_s: null``) a rerun fails every RUNNING
trial at its start, so only one driver may work on such a study at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.config import ConfigError, Recipe, load_recipe, recipe_keys, yaml_load

#: the objective's metric family: validation metrics reported by every epoch
OBJECTIVE_PREFIX = "val/"


class SweepSpecError(ValueError):
    """The sweep spec is not valid; the message names the spec file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Strict):
    """One dimension of the search space over a recipe key."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("a categorical parameter takes only 'choices'")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError(f"choices repeat a value: {list(self.choices)}")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"empty range: low={self.low} must be < high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got low={self.low})")
        if self.log and self.step:
            raise ValueError("'log' and 'step' cannot be combined (Optuna's rule)")
        if self.type == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"an int parameter needs an integer {name} (got {v})")
        return self

    def corners(self) -> list[Any]:
        """The values a trial can take at the edges of this dimension (every choice)."""
        if self.type == "categorical":
            return list(self.choices or ())
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class ObjectiveSpec(_Strict):
    """What a trial's value is: a validation metric of its best epoch."""

    metric: str = "val/mean_iou"
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerSpec(_Strict):
    kind: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(4, ge=0, description="tpe: random trials before TPE")


class PrunerSpec(_Strict):
    """``median`` / ``percentile`` (settings of Optuna's pruners of those names: n_startup_trials,
    n_warmup_steps, percentile), ``successive_halving`` (asynchronous successive halving:
    a trial goes past epoch ``min_resource * reduction_factor**k`` only if its value there is
    in the top ``1/reduction_factor`` of the trials that reached it), ``hyperband``
    (min_resource, reduction_factor; max_resource = the budget's epochs) or ``none``."""

    kind: Literal["median", "percentile", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(1, ge=0, description="epochs never pruned at the start")
    percentile: float = Field(50.0, gt=0, lt=100)
    min_resource: int = Field(1, ge=1, description="epochs before the first rung")
    reduction_factor: int = Field(3, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0, description="successive_halving: rungs skipped")


class BudgetSpec(_Strict):
    epochs: int = Field(..., ge=1, description="train.epochs of every trial")


class SweepSpec(_Strict):
    """A validated sweep; :attr:`path` is the file it came from (``<dict>`` otherwise)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    recipe: str
    overrides: tuple[str, ...] = ()
    space: dict[str, ParamSpec]
    objective: ObjectiveSpec = ObjectiveSpec()
    n_trials: int = Field(..., ge=1)
    parallel: int | Literal["auto"] = "auto"
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    budget: BudgetSpec
    storage: str | None = None
    heartbeat_s: int | None = Field(
        30, ge=1, description="seconds between a running trial's heartbeats (null: none)"
    )
    grace_s: int | None = Field(
        None, ge=1, description="heartbeat silence that fails a trial (null: 2 x heartbeat_s)"
    )
    output_dir: str = "outputs/sweeps"
    max_failed_trials: int | None = Field(
        None, ge=0, description="failed trials tolerated per invocation (null: n_trials)"
    )
    path: str = "<dict>"

    @model_validator(mode="after")
    def _parallel(self) -> SweepSpec:
        if isinstance(self.parallel, int) and self.parallel < 1:
            raise ValueError(f"parallel must be >= 1 or 'auto' (got {self.parallel})")
        if not self.space:
            raise ValueError("space is empty: name at least one recipe key to search")
        pr, epochs = self.pruner, self.budget.epochs
        if pr.kind == "successive_halving":
            first = pr.min_resource * pr.reduction_factor**pr.min_early_stopping_rate
            if first >= epochs:
                raise ValueError(
                    f"pruner: the first successive-halving rung is at epoch {first} "
                    f"(min_resource x reduction_factor^min_early_stopping_rate) but "
                    f"budget.epochs={epochs}: nothing could be pruned; lower min_resource"
                )
        if pr.kind == "hyperband" and pr.min_resource >= epochs:
            raise ValueError(
                f"pruner.min_resource={pr.min_resource} must be < budget.epochs={epochs} "
                "(hyperband's max_resource): nothing could be pruned"
            )
        if self.heartbeat_s is None and self.grace_s is not None:
            raise ValueError("grace_s needs heartbeat_s (the heartbeat it waits for)")
        if self.heartbeat_s is not None and self.grace_s is not None:
            if self.grace_s <= self.heartbeat_s:
                raise ValueError(
                    f"grace_s={self.grace_s} must be > heartbeat_s={self.heartbeat_s}, or "
                    "live trials would be failed between two heartbeats"
                )
        return self

    # -- derived ---------------------------------------------------------------------------
    @property
    def metric(self) -> str:
        """The objective as the reported key (``val/mean_iou``)."""
        return normalize_metric(self.objective.metric)

    def recipe_path(self) -> Path:
        base = Path(self.path).parent if self.path != "<dict>" else Path.cwd()
        p = Path(self.recipe)
        return p if p.is_absolute() else base / p

    def trial_overrides(self) -> list[str]:
        """Overrides every trial gets: the spec's, the budget, and the registry's selection
        set to the objective (so a trial's best checkpoint is its best objective epoch)."""
        from pipelines.mlops.tracking import metric_key

        name = next(n for n in _metric_names() if metric_key(n) == self.metric[len("val/") :])
        mode = "max" if self.objective.direction == "maximize" else "min"
        return [
            *self.overrides,
            f"train.epochs={self.budget.epochs}",
            f"registry.selection_metric={name}",
            f"registry.mode={mode}",
        ]

    def base_recipe(self, extra: Sequence[str] = ()) -> Recipe:
        """The recipe every trial starts from (before its sampled parameters)."""
        return load_recipe(self.recipe_path(), [*self.trial_overrides(), *extra])


def _metric_names() -> tuple[str, ...]:
    from lstc.metrics import METRIC_NAMES

    return METRIC_NAMES


def normalize_metric(name: str) -> str:
    """``mean_iou`` / ``val/mean_iou`` / ``J&F`` -> the reported key ``val/<metric_key>``;
    ValueError naming the known ones otherwise."""
    from pipelines.mlops.tracking import metric_key

    known = {f"{OBJECTIVE_PREFIX}{metric_key(n)}": n for n in _metric_names()}
    key = name if name.startswith(OBJECTIVE_PREFIX) else f"{OBJECTIVE_PREFIX}{metric_key(name)}"
    key = OBJECTIVE_PREFIX + metric_key(key[len(OBJECTIVE_PREFIX) :])
    if key not in known:
        raise ValueError(
            f"objective metric {name!r} is not reported by training; each epoch reports: "
            + ", ".join(sorted(known))
        )
    return key


def _value_text(value: Any) -> str:
    import json

    return json.dumps(value)


def params_to_overrides(params: Mapping[str, Any]) -> list[str]:
    """Sampled ``{recipe key: value}`` -> recipe overrides (values as JSON, which YAML reads
    back unchanged: ``"off"`` stays a string, ``1e-05`` a float)."""
    return [f"{k}={_value_text(v)}" for k, v in params.items()]


def _check_space(spec: SweepSpec, where: str) -> None:
    keys = {k.key: k for k in recipe_keys()}
    base = spec.base_recipe()
    for key, dim in spec.space.items():
        ks = keys.get(key)
        if ks is None:
            near = [k for k in keys if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise SweepSpecError(f"{where}: space.{key}: not a recipe key{hint}")
        if dim.type in ("float", "int") and ks.choices is not None:
            raise SweepSpecError(
                f"{where}: space.{key}: the key takes one of {list(ks.choices)}; "
                "use type: categorical"
            )
        if dim.type == "float" and ks.type is int:
            raise SweepSpecError(f"{where}: space.{key}: the key is an int; use type: int")
        for value in dim.corners():
            try:
                ks.check(value)
                base.replace(params_to_overrides({key: value}))
            except ConfigError as exc:
                raise SweepSpecError(f"{where}: space.{key}: {exc}") from None


def validate_spec(spec: SweepSpec) -> SweepSpec:
    """Check the objective, the base recipe and every space key (see the module docstring)."""
    where = spec.path
    try:
        normalize_metric(spec.objective.metric)
    except ValueError as exc:
        raise SweepSpecError(f"{where}: objective.metric: {exc}") from None
    if not spec.recipe_path().is_file():
        raise SweepSpecError(f"{where}: recipe: no such file {spec.recipe_path()}")
    try:
        spec.base_recipe()
    except ConfigError as exc:
        raise SweepSpecError(f"{where}: recipe/overrides: {exc}") from None
    _check_space(spec, where)
    return spec


def spec_from_dict(data: Mapping[str, Any], *, path: str = "<dict>") -> SweepSpec:
    """Build and validate a spec from a mapping (a parsed YAML file)."""
    if not isinstance(data, Mapping):
        raise SweepSpecError(f"{path}: a sweep spec is a mapping, got {type(data).__name__}")
    try:
        spec = SweepSpec(**{**data, "path": path})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        raise SweepSpecError(f"{path}: {loc or 'spec'}: {msg}") from None
    return validate_spec(spec)


def load_spec(path: str | Path, overrides: Sequence[str] = (), **changes: Any) -> SweepSpec:
    """Read and validate a sweep spec file; ``overrides`` (recipe ``key=value``) are appended
    to the spec's, ``changes`` replace top-level fields (``n_trials=``, ``parallel=``, ...;
    ``None`` values are ignored)."""
    p = Path(path)
    if not p.is_file():
        raise SweepSpecError(f"{path}: no such sweep spec")
    data = yaml_load(p.read_text(encoding="utf-8")) or {}
    if isinstance(data, Mapping):
        data = {**data, **{k: v for k, v in changes.items() if v is not None}}
        if overrides:
            data["overrides"] = [*(data.get("overrides") or ()), *overrides]
    return spec_from_dict(data, path=str(p))


__all__ = [
    "BudgetSpec",
    "ObjectiveSpec",
    "ParamSpec",
    "PrunerSpec",
    "SamplerSpec",
    "SweepSpec",
    "SweepSpecError",
    "load_spec",
    "normalize_metric",
    "params_to_overrides",
    "spec_from_dict",
    "validate_spec",
]
