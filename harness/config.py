"""Typed run configuration: frozen dataclasses hold the schema and the only defaults; YAML holds the values.

`pipelines/params.yaml` (tracked by DVC) has one top-level group per dataclass below. Loading is strict: an unknown key,
a missing group's unknown key or a value of the wrong type raises :class:`ConfigError` naming the key and the file.
Hyperparameter defaults follow the BNAS official recipes (Kim, Singh, Choi, ECCV 2020, arXiv 2002.06963; see
docs/bnas.md §4-5).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import ConfigError
from harness.io import atomic_write_text

__all__ = [
    "DataConfig",
    "TrainConfig",
    "SearchConfig",
    "TrackingConfig",
    "Config",
    "load_config",
    "explain_config",
    "resolve_layers",
    "config_from_dict",
    "config_to_dict",
    "flatten",
    "parse_override",
    "pipeline_overrides",
    "RENAMED",
]


@dataclass(frozen=True)
class DataConfig:
    """How prepared datasets are split, subset and augmented."""

    split_seed: int = 0  # seed of the stratified permutation that defines every recorded split
    search_train_fraction: float = 0.5  # BNAS search: this share of the train set trains weights, the rest the alphas
    train_subset: int = 0  # train on this many images (stratified, seeded by split_seed); 0 = the whole train set
    test_subset: int = 0  # evaluate on this many test images (stratified); 0 = the whole test set (always for results)
    augment: bool = True  # CIFAR: random crop 32 pad 4 + horizontal flip; ImageNet: RandomResizedCrop + flip + jitter
    color_jitter: float = 0.4  # ImageNet brightness/contrast/saturation jitter (BNAS recipe: 0.4)
    color_jitter_hue: float = 0.2  # ImageNet hue jitter (BNAS recipe: 0.2)
    image_size: int = 224  # ImageNet train crop and val centre crop
    val_resize: int = 256  # ImageNet val: resize the short side to this, then centre crop image_size
    num_workers: int = 4  # ImageNet decoding workers per process (CIFAR is decoded once by `bnas prepare`)
    on_device: bool = True  # CIFAR: keep the uint8 images on the training device and augment there


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, optimiser, schedule, precision, checkpointing."""

    model: str = "resnet18_cifar"  # a timm model name (our methods register theirs with timm)
    num_classes: int = 10  # classifier outputs
    epochs: int = 600  # BNAS CIFAR recipe: 600; ImageNet: 250
    batch_size: int = 256  # global (all processes together): each of N processes takes batch_size / N
    opt: str = "momentum"  # timm optimizer name; "momentum" = SGD without Nesterov (BNAS), timm's "sgd" is Nesterov
    lr: float = 0.05  # peak learning rate (BNAS CIFAR README command: 0.05)
    momentum: float = 0.9  # SGD momentum (one-cycle cycles it between 0.85 and 0.95)
    weight_decay: float = 3e-6  # BNAS CIFAR: 3e-6; ImageNet: 3e-5
    filter_bias_and_bn: bool = False  # exempt biases and norm weights from weight decay (BNAS: no, decay everything)
    sched: Literal["onecycle", "cosine", "cosine_restarts", "linear", "multistep", "constant"] = "onecycle"  # per step
    decay_milestones: list[int] = field(default_factory=list)  # multistep: the epochs at which lr is multiplied by
    decay_rate: float = 0.1  # multistep: this factor (BinaryDuo, CBCN: 0.1)
    min_lr: float = 0.0  # cosine floor (restarts: eta_min = 0 in the BNAS ImageNet recipe)
    warmup_epochs: float = 0.0  # linear warm-up for the cosine schedules
    restart_epochs: int = 50  # cosine_restarts cycle length T_0 (BNAS ImageNet: 50 -> 5 cycles in 250 epochs)
    onecycle_pct: float = 0.45  # one-cycle: share of steps in each of the two ramps (BNAS: 90% ramp up+down, 10% tail)
    onecycle_div: float = 20.0  # one-cycle: start lr = lr / onecycle_div (BNAS: 0.05 * lr)
    onecycle_final_div: float = 100.0  # one-cycle: final lr = start lr / onecycle_final_div (BNAS: 0.0005 * lr)
    label_smoothing: float = 0.0  # timm LabelSmoothingCrossEntropy on training batches (BNAS ImageNet: 0.1)
    clip_grad: float = 0.0  # norm clip of the raw gradients (binary weights: before the XNOR rescale, as the release)
    drop_path: float = 0.0  # maximum drop-path probability, ramped linearly as drop_path * epoch / epochs (BNAS: 0.2)
    amp: bool = False  # opt-in bf16/fp16 autocast on CUDA (the release trains in float32); ignored on CPU (cpu_amp)
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"  # float16 adds a GradScaler
    cpu_amp: bool = False  # bf16 autocast on CPU (for CPUs with AVX512-BF16/AMX); off: float32 + exact int8 binary fwd
    channels_last: bool = True  # channels_last memory format (CUDA and CPU: 7-16 % faster training on CPU too)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    seed: int = 0  # model init, dropout/drop-path and data order; the DVC matrix sets it per run
    eval_interval: int = 1  # evaluate every N epochs (and always after the last)
    log_interval: int = 50  # progress-bar refresh and non-finite-loss check interval on CUDA (every step on CPU)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    nproc_per_node: int = 1  # > 1: `bnas train` relaunches itself under torchrun with this many processes (DDP)
    compile: bool = False  # torch.compile the model (minutes of first compile: for long GPU runs, not for tests)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra model arguments, e.g. {scale_shape: factorised}
    init_from: str = ""  # initialise the model from this model.pt (weights only), e.g. stage 1 of a two-stage recipe
    official_init_skips_binary: bool = False  # release (ReActNet-A step 2): init_from loads all but the binary convs'
    # latent weights, which keep their fresh init (docs/recipes.md, "ReActNet")
    init_decouple: bool = False  # init_from holds a coupled BinaryDuo network: decouple it (exactly), then load it
    # into this run's decoupled one (model_kwargs.decoupled: true): BinaryDuo's stage 2
    teacher: str = ""  # distil from this real-valued timm model (ReActNet's loss); "" = the label loss only
    teacher_weights: str = ""  # the teacher's weights: the model.pt of a finished `bnas train` run, or "pretrained"
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)  # the teacher's model arguments (as its run had)
    distill_weight: float = 1.0  # share of the distillation loss (1: distillation only, as ReActNet); the rest: labels
    center_loss: float = 0.0  # weight of the center loss on the classifier's input (Wen et al. 2016; CBCN's
    # fine-tune, PCNN's L_C); 0 = off
    center_lr: float = 0.5  # the centres' update rate alpha (Wen et al.'s eq. 4; their default 0.5)
    projection_loss: float = 0.0  # PCNN's projection loss weight lambda (Gu et al. 2019: 1e-4); 0 = off
    projection_lr_scale: float = 1.0  # PCNN's projection matrices train at lr x this (their own lr, eta_2)
    bayes_kernel_loss: float = 0.0  # BONN's Bayesian kernel loss weight lambda (Gu et al. 2019: 1e-4); 0 = off
    bayes_kernel_prior: float = 1e-4  # its prior term's weight nu (UNVERIFIED)
    bayes_feature_loss: float = 0.0  # BONN's Bayesian feature loss weight theta (1e-3); 0 = off; class statistics
    # move at center_lr
    official_lr_offset: bool = False  # release (ReActNet): per-epoch schedule stepped before each epoch, so epoch e
    # trains at the value of epoch e + 1 and the last epoch at lr 0 (with sched linear: docs/recipes.md)
    recipe: str = ""  # name of the recipe (params group `recipes`) applied to this run; set by --recipe
    recipe_batch_size: int = 0  # the recipe's global batch (set with `recipe`); a run with another batch says so
    binary_stats: bool = True  # log binary weights' flip ratio and latent saturation per epoch (binary models only)
    cost_policy: str = "bireal"  # counting policy of the cost figures logged with the run (see `bnas profile`)


@dataclass(frozen=True)
class SearchConfig:
    """BNAS search (docs/bnas.md §4): supernet, bilevel optimisers, diversity regulariser, derivation, release switches
    (§8)."""

    init_channels: int = 16  # C of the supernet's first cells
    layers: int = 8  # supernet cells (reductions at layers//3 and 2*layers//3)
    epochs: int = 50  # search epochs
    batch_size: int = 64  # global, for both the weight and the architecture batches; each rank takes batch/world_size
    lr: float = 0.025  # weights: SGD lr, cosine-annealed per epoch to lr_min
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_lr: float = 3e-4  # alphas: Adam
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    lam: float = 1.0  # diversity regulariser weight lambda (0 = the "No Div" ablation)
    tau: float = 7.7  # its decay: lambda * exp(-epoch / tau)
    exclude_zeroise: bool = False  # Zeroise out of the search space and the derivation ("No Zeroise")
    skip: bool = True  # the T_B skip connections (false: the "No Skip" ablation)
    space: Literal["bnas", "darts", "bats"] = "bnas"  # the ops: S_B (the paper's), DARTS's with binarised separable
    # convs (claim 6, "separable convs are detrimental"), or BATS's grouped binary convs (the last two: supernet
    # reference)
    temperature: float = 1.0  # mixing weights softmax(alpha / temperature); BATS's temperature-controlled softmax < 1
    real_weight_fraction: float = 0.0  # BATS's binary-first phases: the first round(fraction x epochs) epochs run on
    # real weights behind binary activations, the rest fully binary
    gamma: float = 3.0  # ImageNet transfer: Zeroise weights divided by gamma before deriving the ImageNet genotype
    train_subset: int = 0  # use this many images of each search split (stratified); 0 = all 25k + 25k
    seed: int = 2  # the release's search seed
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    official_entropy_bug: bool = False  # release: the reduce entropy reads the last edge 14 times (docs/bnas.md §8.3)
    official_gamma_bug: bool = False  # release: gamma divides row 0 instead of the Zeroise column (docs/bnas.md §8.4)
    official_genotype_offset: bool = False  # release: keep the best epoch's START-of-epoch genotype (docs/bnas.md §8.6)
    official_fp_tail: bool = False  # release BinOp index bug: the last 18 supernet convs keep FP weights (§8.1)
    official_binary_preprocess: bool = (
        False  # first release: preprocess and res conv weights binarised in search (§8.2)
    )
    official_lr_offset: bool = False  # release: scheduler stepped before each epoch, so epoch e uses cosine(e + 1)
    supernet: Literal["shared", "reference"] = "shared"  # shared: BN/sign/pools once per state (same math, faster)
    amp: bool = False  # opt-in bf16 autocast of the supernet forwards on CUDA (the release: float32); CPU: ignored
    official_val_augment: bool = False  # release: architecture batches and the per-epoch selection evaluation of the
    # 25k validation split use the training augmentation (crop + flip); default: un-augmented validation images
    official_val_resample: bool = False  # release: every architecture step draws a fresh random batch of the
    # validation split (`next(iter(valid_queue))`); default: one persistent shuffled pass per epoch, cycling
    compile: bool = False  # torch.compile the supernet (long first compile: for long GPU searches, not for tests)
    cuda_graph: bool = True  # CUDA, one process, not with compile: each iteration replayed from a CUDA graph
    activation_checkpointing: bool = False  # recompute each cell in backward: less memory for large batches
    nproc_per_node: int = 1  # > 1: `bnas search` relaunches itself under torchrun (shards both batches, DDP-style)
    sync_bn: bool = True  # distributed: BN statistics over the global batch (same math as one process)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking. The store defaults to `sqlite:///<project>/mlflow.db`; MLFLOW_TRACKING_URI overrides it."""

    enabled: bool = True  # log runs to MLflow
    experiment_prefix: str = "bnas"  # experiment name = <prefix>-<dataset>


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one run (one field per params.yaml group).

    `recipes` maps a recipe name to overrides of the `train` group (a method's paper recipe, or the shared recipe that
    gives every method the same budget); `--recipe NAME` applies one (see :func:`apply_recipe`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str = ""  # the selected profile: `profiles.<profile>` is applied over the groups (quick | paper)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # profile name -> group overrides
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # `--method NAME`: recipe + group overrides
    pipeline: dict[str, Any] = field(default_factory=dict)  # lists the DVC pipeline iterates over (seeds, ...)


GROUPS = ("data", "train", "search", "tracking")
# yaml.safe_load's loader, in C when PyYAML has libyaml (10x faster on the params file: every `bnas` call reads it)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
OWN_RECIPE = "own"  # `--recipe own`: the method's own recipe (methods.<name>.recipe), by name; no recipe may take it
ENVIRONMENT = "environment"  # the top-level key of a run's config.yaml that records its process-wide switches


def deep_merge(base: Mapping[str, Any] | None, over: Mapping[str, Any] | None) -> dict[str, Any]:
    """`base` with `over` merged in: mappings merge key by key, everything else is replaced."""
    out = dict(base or {})
    for k, v in (over or {}).items():
        out[k] = deep_merge(out.get(k), v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _is_plain(value: Any) -> bool:
    """Plain YAML data: scalars, and lists or string-keyed mappings of plain data."""
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "plain YAML data"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """Return `value` converted to `tp`, or raise ConfigError naming `key` and `source`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_value(value, arg, key, source)
            except ConfigError:
                continue
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        if _is_plain(value):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            et = typing.get_args(tp)[0]
            return [_check_value(v, et, f"{key}[{i}]", source) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, Mapping):
            vt = typing.get_args(tp)[1]
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ConfigError(f"{source}: {key}: keys must be strings, got {k!r}")
                out[k] = _check_value(v, vt, f"{key}.{k}", source)
            return out
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return _build(tp, value, key, source)
    else:  # pragma: no cover - schema bug, not user input
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class _Range:
    """An interval a numeric field must lie in; `str` gives the wording of the error message (e.g. "in [0, 1)")."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = True

    def __contains__(self, v: float) -> bool:
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


_POSITIVE = _Range(0, lo_open=True)
_NON_NEGATIVE = _Range(0)
_FRACTION = _Range(0, 1)
_OPEN_FRACTION = _Range(0, 1, lo_open=True)

# Value ranges per field (the types are checked first). A value outside is a ConfigError naming the key.
RANGES: dict[str, dict[str, _Range]] = {
    "DataConfig": {
        "train_subset": _NON_NEGATIVE,
        "test_subset": _NON_NEGATIVE,
        "search_train_fraction": _OPEN_FRACTION,
        "color_jitter": _NON_NEGATIVE,
        "color_jitter_hue": _Range(0, 0.5, hi_open=False),
        "image_size": _POSITIVE,
        "val_resize": _POSITIVE,
        "num_workers": _NON_NEGATIVE,
    },
    "TrainConfig": {
        "num_classes": _POSITIVE,
        "epochs": _POSITIVE,
        "batch_size": _POSITIVE,
        "lr": _POSITIVE,
        "momentum": _FRACTION,
        "weight_decay": _NON_NEGATIVE,
        "min_lr": _NON_NEGATIVE,
        "warmup_epochs": _NON_NEGATIVE,
        "restart_epochs": _POSITIVE,
        "onecycle_pct": _Range(0, 0.5, lo_open=True, hi_open=False),
        "onecycle_div": _POSITIVE,
        "onecycle_final_div": _POSITIVE,
        "label_smoothing": _FRACTION,
        "clip_grad": _NON_NEGATIVE,
        "drop_path": _FRACTION,
        "eval_interval": _POSITIVE,
        "log_interval": _POSITIVE,
        "threads": _NON_NEGATIVE,
        "nproc_per_node": _POSITIVE,
        "recipe_batch_size": _NON_NEGATIVE,
        "distill_weight": _Range(0, 1, lo_open=True, hi_open=False),
        "center_loss": _NON_NEGATIVE,
        "center_lr": _Range(0, 1, lo_open=True, hi_open=False),
        "projection_loss": _NON_NEGATIVE,
        "projection_lr_scale": _POSITIVE,
        "bayes_kernel_loss": _NON_NEGATIVE,
        "bayes_kernel_prior": _NON_NEGATIVE,
        "bayes_feature_loss": _NON_NEGATIVE,
        "decay_rate": _OPEN_FRACTION,
    },
    "SearchConfig": {
        "init_channels": _POSITIVE,
        "layers": _Range(3),
        "epochs": _POSITIVE,
        "batch_size": _POSITIVE,
        "lr": _POSITIVE,
        "lr_min": _NON_NEGATIVE,
        "momentum": _FRACTION,
        "weight_decay": _NON_NEGATIVE,
        "arch_lr": _POSITIVE,
        "arch_beta1": _FRACTION,
        "arch_beta2": _FRACTION,
        "arch_weight_decay": _NON_NEGATIVE,
        "lam": _NON_NEGATIVE,
        "tau": _POSITIVE,
        "temperature": _POSITIVE,
        "real_weight_fraction": _FRACTION,
        "gamma": _POSITIVE,
        "train_subset": _NON_NEGATIVE,
        "threads": _NON_NEGATIVE,
        "nproc_per_node": _POSITIVE,
    },
}


def _check_range(cls: type, name: str, value: Any, key: str, source: str) -> None:
    rule = RANGES.get(cls.__name__, {}).get(name)
    if rule is not None and value not in rule:
        raise ConfigError(f"{source}: {key}: expected a value {rule}, got {value!r}")


# keys that were renamed (one name per switch, end to end): a config that still uses the old name is told the new one
RENAMED = {
    "search.no_skip": "search.skip (negated: skip: false is the No Skip ablation)",
    "search.no_zeroise": "search.exclude_zeroise",
    "search.official_stale_filter": "search.official_binary_preprocess",
}


def _build(cls: type, values: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if full in RENAMED:
            raise ConfigError(f"{source}: '{full}' is now {RENAMED[full]}")
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{full}' (expected one of: {', '.join(names)})")
        kwargs[key] = _check_value(value, hints[key], full, source)
        _check_range(cls, key, kwargs[key], full, source)
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any] | None, source: str = "<dict>") -> Config:
    """Build a Config from nested mappings; unspecified fields keep their defaults.

    Raises:
        ConfigError: on an unknown key or a value of the wrong type.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of groups at the top level, got {type(values).__name__}")
    # a run's config.yaml records the process-wide settings it ran with (`environment`, see save_config): not config
    values = {k: v for k, v in values.items() if k != ENVIRONMENT}
    cfg = _build(Config, values, "", source)
    for kind, table in (("profiles", cfg.profiles), ("methods", cfg.methods)):
        for name, entry in table.items():  # each must name known groups with valid keys
            allowed = (*GROUPS, "recipe", "profiles") if kind == "methods" else GROUPS
            for key in entry:
                if key not in allowed:
                    raise ConfigError(
                        f"{source}: {kind}.{name}: unknown key '{key}' (expected one of {', '.join(allowed)})"
                    )
            groups = {g: entry[g] for g in GROUPS if g in entry}
            _build(Config, {g: deep_merge(values.get(g), v) for g, v in groups.items()}, f"{kind}.{name}", source)
            for pname, pentry in (entry.get("profiles") or {}).items() if kind == "methods" else ():
                bad = [k for k in pentry if k not in GROUPS]
                if bad:
                    raise ConfigError(f"{source}: methods.{name}.profiles.{pname}: unknown group '{bad[0]}'")
                _build(Config, {g: deep_merge(values.get(g), v) for g, v in pentry.items()}, f"methods.{name}", source)
            if kind == "methods" and "recipe" in entry and entry["recipe"] not in cfg.recipes:
                raise ConfigError(f"{source}: methods.{name}.recipe: unknown recipe '{entry['recipe']}'")
    for name, groups in cfg.profiles.items():
        _check_profile(name, groups, source)
    if cfg.profile and cfg.profiles and cfg.profile not in cfg.profiles:
        known = ", ".join(sorted(cfg.profiles)) or "none defined"
        raise ConfigError(f"{source}: profile: unknown profile '{cfg.profile}' (params group 'profiles': {known})")
    base = dataclasses.asdict(cfg.train)
    if OWN_RECIPE in cfg.recipes:
        raise ConfigError(
            f"{source}: recipes.{OWN_RECIPE}: '{OWN_RECIPE}' is reserved (--recipe {OWN_RECIPE}: the method's own)"
        )
    for name, overrides in cfg.recipes.items():  # every recipe must make a valid train group
        if "recipe" in overrides:
            raise ConfigError(f"{source}: recipes.{name}: 'recipe' is set by --recipe, not inside a recipe")
        _build(TrainConfig, {**base, **overrides}, f"recipes.{name}", source)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain nested dicts (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (`train.lr`), e.g. for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `group.key=value` (value read as a YAML scalar, never evaluated as code)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=0.1")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not a YAML scalar ({e})") from None
    return key.strip(), value


def _set_nested(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: '{p}' is a value, not a group")
        node = child
    node[parts[-1]] = value


# What a profile may change: sizes only (epochs, subsets, widths, layers, batch), never an optimiser or a schedule.
# A method that needs another optimiser value at small scale says so in its own entry (methods.<name>.profiles.<p>).
PROFILE_KEYS: dict[str, frozenset[str]] = {
    "data": frozenset({"train_subset", "test_subset"}),
    "train": frozenset({"epochs", "batch_size", "eval_interval", "model_kwargs"}),
    "search": frozenset({"epochs", "train_subset", "layers", "init_channels", "batch_size"}),
}
PROFILE_MODEL_KWARGS = frozenset({"layers", "init_channels", "widths"})


def _check_profile(name: str, groups: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError if profile `name` sets anything but a size (PROFILE_KEYS)."""
    for g, values in groups.items():
        allowed = PROFILE_KEYS.get(g, frozenset())
        for k, v in (values or {}).items():
            if k not in allowed:
                raise ConfigError(
                    f"{source}: profiles.{name}.{g}.{k}: a profile changes only sizes ({g}: "
                    f"{', '.join(sorted(allowed)) or 'nothing'}); put a method's small-scale optimiser values in "
                    f"methods.<name>.profiles.{name}"
                )
            if k == "model_kwargs":
                bad = sorted(set(v or {}) - PROFILE_MODEL_KWARGS)
                if bad:
                    raise ConfigError(
                        f"{source}: profiles.{name}.train.model_kwargs.{bad[0]}: a profile changes only "
                        f"{', '.join(sorted(PROFILE_MODEL_KWARGS))}"
                    )


def _read_params(path: str | Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        return {}, "<defaults>"
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{source}: params file not found (expected a YAML file with groups data/train/...)")
    try:
        loaded = yaml.load(p.read_text(), Loader=_YAML_LOADER)  # noqa: S506 (a safe loader: libyaml's, when built)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{source}: expected a mapping of groups at the top level, got {type(loaded).__name__}")
    return loaded or {}, source


def pipeline_overrides(path: str | Path, profile: str) -> dict[str, Any]:
    """The params that run the pipeline of dvc.yaml at `profile`: `profile` itself and, for each key of
    `pipeline.<profile>` in the params file, `pipeline.<key>` (e.g. the paper profile's seeds and searches).

    Raises:
        ConfigError: a missing or malformed params file, or no `pipeline.<profile>` mapping in it.
    """
    raw, source = _read_params(path)
    pipeline = raw.get("pipeline")
    block = pipeline.get(profile) if isinstance(pipeline, dict) else None
    if not isinstance(block, dict) or profile not in raw.get("profiles", {}):
        have = (
            sorted(k for k, v in (pipeline or {}).items() if isinstance(v, dict)) if isinstance(pipeline, dict) else []
        )
        raise ConfigError(
            f"{source}: no pipeline.{profile} values for profile '{profile}' (expected a mapping under pipeline: and a "
            f"profiles.{profile}; pipelines here: {', '.join(have) or 'none'})"
        )
    return {"profile": profile, **{f"pipeline.{k}": v for k, v in block.items()}}


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    return f"; closest: {', '.join(close)}" if close else ""


def resolve_layers(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    recipe: str | None = None,
    method: str | None = None,
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], str]:
    """The raw params file and the layers one run's config is made of, in the order they apply (later wins).

    Layers: `params` (the file's groups), `recipe <name>` (`recipes.<name>` over `train`), `method <name>`
    (`methods.<name>` groups), `profile <p>` (sizes only), `method <name>, profile <p>`
    (`methods.<name>.profiles.<p>`), `override` (the dotted -S keys). Returns (raw file, layers, source).

    Raises:
        ConfigError: missing/malformed file, unknown key, recipe, method or profile (with the closest names).
    """
    raw, source = _read_params(path)
    overrides = dict(overrides or {})
    if "profile" in overrides:
        raw["profile"] = overrides.pop("profile")
    config_from_dict(raw, source)  # validate the file itself, recipes included, before combining anything
    methods = raw.get("methods") or {}
    entry: dict[str, Any] = {}
    if method:
        if method not in methods:
            raise ConfigError(
                f"{source}: unknown method '{method}' (params group 'methods'){_closest(method, sorted(methods))}"
            )
        entry = methods[method] or {}
    if recipe == OWN_RECIPE:  # the method's own (paper) recipe, asked for by name: it must have one
        if not entry.get("recipe"):
            what = f"method '{method}' has no recipe (methods.{method}.recipe)" if method else "it needs a --method"
            raise ConfigError(f"{source}: recipe '{OWN_RECIPE}' means the method's own recipe, but {what}")
        recipe = entry["recipe"]
    explicit_recipe = recipe
    if method and not recipe:
        recipe = entry.get("recipe", recipe)
    layers: list[tuple[str, dict[str, Any]]] = [("params", {g: raw[g] for g in GROUPS if g in raw})]
    if recipe:
        recipes = raw.get("recipes") or {}
        if recipe not in recipes:
            raise ConfigError(
                f"{source}: unknown recipe '{recipe}' (params group 'recipes'){_closest(recipe, sorted(recipes))}"
            )
        batch = recipes[recipe].get("batch_size", (raw.get("train") or {}).get("batch_size", TrainConfig.batch_size))
        train = {**recipes[recipe], "recipe": recipe, "recipe_batch_size": batch}
        layers.append((f"recipe {recipe}", {"train": train}))
    if entry:
        layers.append((f"method {method}", {g: entry[g] for g in GROUPS if g in entry}))
    profile, profiles = raw.get("profile") or "", raw.get("profiles") or {}
    # a resolved run config (config.yaml, loaded as is) records its profile without the profiles group
    if profile and (profile in profiles or recipe is not None or method):
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none defined"
            raise ConfigError(f"{source}: profile: unknown profile '{profile}' (params group 'profiles': {known})")
        layers.append((f"profile {profile}", dict(profiles[profile] or {})))
        mp = (entry.get("profiles") or {}).get(profile)
        if mp:
            layers.append((f"method {method}, profile {profile}", dict(mp)))
    if explicit_recipe and entry and entry.get("recipe") != explicit_recipe:
        # another recipe than the method's own was asked for: its values stand. The method's entries keep what the
        # recipe does not set (model, sizes); their values of the recipe's keys belong to the method's own recipe.
        rkeys = set(flatten({"train": (raw.get("recipes") or {}).get(explicit_recipe, {})}))
        for i, (name, groups) in enumerate(layers):
            if not name.startswith("method "):
                continue
            flat = flatten(groups)
            dropped = sorted(k for k in flat if k in rkeys)
            if dropped:
                logging.getLogger(__name__).info(
                    "%s: recipe %s sets %s: the values of %s are not applied",
                    source,
                    explicit_recipe,
                    ", ".join(dropped),
                    name,
                )
                kept: dict[str, Any] = {}
                for k, v in flat.items():
                    if k not in rkeys:
                        _set_nested(kept, k, v)
                layers[i] = (name, kept)
    if overrides:
        node: dict[str, Any] = {}
        for key, value in overrides.items():
            _set_nested(node, key, value)
        layers.append(("override", node))
    return raw, layers, source


def load_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    recipe: str | None = None,
    method: str | None = None,
) -> Config:
    """Load a params YAML file strictly and resolve one run's config.

    Order (later wins, see :func:`resolve_layers`): the file's groups; the recipe (`recipes.<name>` over `train`);
    the method's groups (`methods.<method>`); the selected profile (`profiles.<profile>`: sizes only), then
    `methods.<method>.profiles.<profile>`; the dotted-key overrides (`{"train.seed": 1}`; a `profile` override
    selects the profile first).

    Args:
        path: the params file (None: defaults only).
        overrides: dotted keys applied last.
        recipe: None loads the file as is (with its `recipes` group); a name applies `recipes.<name>` over `train`
            and records it as `train.recipe`; "own" the method's own (an error if it has none); "" applies none (or
            the method's recipe). In both of the latter cases
            the result is a run's resolved config, without the `recipes`/`profiles`/`methods`/`pipeline` groups.
        method: a key of `methods` (its recipe and group overrides are applied).

    Raises:
        ConfigError: the file is missing or not YAML, a key, type or range is wrong (the message names key and file),
            or the recipe, method or profile is unknown.
    """
    raw, layers, source = resolve_layers(path, overrides, recipe, method)
    return _merge_layers(raw, layers, source, resolved=recipe is not None or bool(method))


def _merge_layers(raw: dict[str, Any], layers: list[tuple[str, dict[str, Any]]], source: str, resolved: bool) -> Config:
    out = {k: v for k, v in raw.items() if k not in GROUPS}
    if resolved:
        for key in ("recipes", "profiles", "methods", "pipeline"):
            out.pop(key, None)
    for _name, groups in layers:
        for g, v in groups.items():
            if isinstance(v, Mapping) and isinstance(out.get(g), Mapping):
                out[g] = deep_merge(out[g], v)
            else:
                out[g] = v
    if any(name == "override" for name, _ in layers):
        source = f"{source} (with overrides)"
    return config_from_dict(out, source)


def explain_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    recipe: str | None = None,
    method: str | None = None,
) -> tuple[Config, dict[str, str]]:
    """The resolved config of a run and, for every dotted key, the layer its value came from: `default` (the
    dataclasses), `params`, `recipe <name>`, `method <name>`, `profile <p>`, `method <name>, profile <p>` or
    `override` (what `bnas config` prints)."""
    raw, layers, source = resolve_layers(path, overrides, recipe if recipe is not None else "", method)
    cfg = _merge_layers(raw, layers, source, resolved=True)
    origin = {k: "default" for k in flatten(config_to_dict(cfg))}
    for name, groups in layers:
        for k in flatten({g: v for g, v in groups.items() if g in GROUPS}):
            if k in origin:
                origin[k] = name
    return cfg, origin


def save_config(cfg: Config, path: str | Path, environment: Mapping[str, Any] | None = None) -> None:
    """Write the fully resolved config as YAML, atomically; `environment` (the process-wide switches a run ran with,
    which no config key sets: e.g. BNAS_INT8_CONV) is recorded under its own top-level key, which loading ignores."""
    values = config_to_dict(cfg)
    if environment:
        values[ENVIRONMENT] = dict(environment)
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=False))
