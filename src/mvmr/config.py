"""Typed config schema, YAML loading, ``--set a.b=c`` overrides and validation.

Every entry point loads its config through :func:`load_config`; nothing is ``eval``-ed. A bad key,
type or value raises :class:`~mvmr.errors.ConfigError` with a one-line message naming the key
and what is allowed, before any work starts.

Schemas are plain dataclasses. A field's type drives validation; bounds and choices live in the
field's ``metadata`` (``ge``, ``gt``, ``le``, ``choices``), and each field has a ``help`` string
that ``describe_schema`` turns into the README's config reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from mvmr.authors_config import fill_authors_defaults, is_authors_format
from mvmr.errors import ConfigError
from mvmr.registry import registered_names


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **bounds: Any):
    """A dataclass field with a help string and validation bounds (ge, gt, le, choices, registry: the kind of a
    :mod:`mvmr.registry` registry whose names are the allowed values)."""
    meta = {"help": help, **bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Schema sections shared by every protocol
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    name: str = option("digits", "dataset name", registry="dataset")
    path: Optional[str] = option(None, "folder holding the dataset files (None: the dataset's default)")
    size: int = option(32, "training / evaluation image size (pixels)", ge=8)
    n_classes: Optional[int] = option(None, "number of classes (None: read from the data; checked if given)", ge=1)
    aug_policy: str = option(
        "custom",
        "augmentation policy of the x' view (authors: the authors' 'custom' "
        "transform; cifar20: the authors' 'cifar20' transform)",
        registry="aug_policy",
    )
    aug_strength: float = option(1.0, "scale of the colour-jitter magnitudes", ge=0.0)
    crop_scale: Optional[List[float]] = option(
        None,
        "area range [lo, hi] of the random resized crop (None: [0.2, 1] "
        "for size <= 64, else [0.08, 1]; not used by cifar)",
    )
    erase_p: float = option(
        0.0,
        "random erasing of x' after the policy: probability per sample of one rectangle "
        "(2-33 % of the area) set to the dataset mean (0: off)",
        ge=0.0,
        le=1.0,
    )
    classes_file: Optional[str] = option(None, "file with one class (wnid) per line: restricts imagenet / image_folder")
    to_rgb: bool = option(False, "repeat grayscale images to 3 channels")
    mean: Optional[List[float]] = option(
        None,
        "per-channel normalisation mean in [0, 1] units (None: the dataset's "
        "own; the authors normalise STL10 with ImageNet's, CIFAR with CIFAR-10's)",
    )
    std: Optional[List[float]] = option(None, "per-channel normalisation std in [0, 1] units (None: the dataset's own)")
    val_fraction: float = option(
        0.1, "fraction of the labelled train split held out for model selection", ge=0.0, le=0.5
    )
    load_size: Optional[int] = option(
        None, "decode size for file datasets: x̄ is Resize(load_size) + CenterCrop(size) (None: size*256/224)", ge=8
    )
    crops_in_loader: Optional[bool] = option(
        None,
        "the loader's workers cut x' (random resized crop + flip) from the "
        "whole decoded image, the device runs the rest of the policy "
        "(None: for file datasets when the policy starts with a resized "
        "crop; false: crops from the decoded load_size square)",
    )
    percentage: Optional[float] = option(
        None, "semi-supervised: percent of labelled train images kept", gt=0.0, le=100.0
    )
    split_file: Optional[str] = option(None, "semi-supervised: file listing the labelled train images to keep")


@dataclass
class EncoderConfig:
    backbone: str = option("resnet50", "torchvision ResNet", registry="backbone")
    out_dim: str = option("8192-8192-8192", "projector widths, e.g. 8192-8192-8192 (Linear-BN-ReLU, last Linear)")
    small_kernel: bool = option(
        False, "3x3 stride-1 first convolution for small images (no max-pool unless maxpool: true; the authors keep it)"
    )
    maxpool: Optional[bool] = option(None, "keep the stem max-pool (None: not with small_kernel, else yes)")
    projector_last_bias: bool = option(True, "bias in the projector's last Linear (the authors' projector has none)")
    zero_init_residual: bool = option(True, "zero-init the last BN of each residual block")
    width: int = option(
        64, "channels of the first ResNet stage (64: the standard ResNets; 32 quarters the compute)", ge=8
    )
    pool_grid: int = option(
        1,
        "average-pool the last feature map to a g x g grid and flatten it: features g² times "
        "wider (1: global average pooling, the standard ResNet; 2 keeps the coarse layout "
        "of aligned images such as Fashion-MNIST)",
        ge=1,
    )
    small_map_matmul: bool = option(
        True,
        "on the CPU, run the 3x3 convolutions whose input map has at most 4 positions "
        "(2x2, 1x1) as one matrix product: the same function with at most half the "
        "multiply-adds, faster there (false: always nn.Conv2d)",
    )


@dataclass
class TrainerConfig:
    accelerator: str = option("auto", "Lightning accelerator", choices=("auto", "cpu", "gpu"))
    devices: Union[int, str] = option(1, "number of devices, or 'auto'")
    num_nodes: int = option(1, "number of nodes", ge=1)
    strategy: str = option(
        "auto", "Lightning strategy", choices=("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
    )
    sync_batchnorm: bool = option(False, "convert BatchNorm to SyncBatchNorm under DDP")
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: epochs decide)", ge=-1)
    checkpoint_every_n_steps: int = option(0, "also write last.ckpt every N optimiser steps (0: off)", ge=0)
    checkpoint_every_minutes: float = option(15.0, "also write last.ckpt every N minutes of training (0: off)", ge=0)
    limit_train_batches: Union[int, float] = option(1.0, "Lightning limit_train_batches (for quick runs)")
    limit_val_batches: Union[int, float] = option(1.0, "Lightning limit_val_batches")
    precision: Optional[str] = option(
        None,
        "Lightning precision (None: from fp16; 16-mixed: fp16 with loss scaling, as the authors' runs)",
        choices=(None, "32-true", "16-mixed", "bf16-mixed"),
    )
    progress_bar: bool = option(True, "show a progress bar")
    args: Dict[str, Any] = option(
        help="any other pytorch_lightning.Trainer argument, passed as it is (e.g. "
        "benchmark: true); other Trainer arguments written directly under trainer: "
        "land here; checked against the Trainer's signature",
        factory=dict,
    )


# Trainer arguments this project sets from keys of its own (a Lightning user's spelling gets the project's key)
TRAINER_SPELLINGS = {
    "max_epochs": "epochs",
    "accumulate_grad_batches": "accumulate_grad_batches",
    "gradient_clip_val": "gradient_clip_val",
    "log_every_n_steps": "log_every",
    "check_val_every_n_epoch": "eval_every",
    "deterministic": "deterministic",
    "enable_progress_bar": "trainer.progress_bar",
}
TRAINER_MANAGED = ("callbacks", "logger", "plugins", "default_root_dir", "enable_checkpointing")


def lightning_trainer_arguments() -> list[str]:
    """The keyword arguments of pytorch_lightning.Trainer (imports Lightning: only when a config needs it)."""
    import inspect

    import pytorch_lightning as pl

    return [name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"]


def route_trainer_keys(data: dict, prefix: str) -> dict:
    """The ``trainer:`` mapping with every pytorch_lightning.Trainer argument that is not a key of
    :class:`TrainerConfig` moved under ``args``; a Lightning spelling of a key this project names otherwise, a
    managed argument or an unknown name is a one-line ConfigError (with a "did you mean")."""
    own = {f.name for f in dataclasses.fields(TrainerConfig)}
    args = dict(data.get("args") or {})
    args.update({key: value for key, value in data.items() if key not in own})
    if not args:
        return data
    known = lightning_trainer_arguments()
    for key in args:
        if key in TRAINER_SPELLINGS:
            raise ConfigError(
                f"{prefix}{key}: this project's key is '{TRAINER_SPELLINGS[key]}', e.g. "
                f"--set {TRAINER_SPELLINGS[key]}=..."
            )
        if key in TRAINER_MANAGED:
            raise ConfigError(
                f"{prefix}{key} is set by mvmr (logging, checkpoints and resilience callbacks); it cannot be configured"
            )
        if key in own:
            raise ConfigError(f"{prefix}args.{key}: use {prefix}{key}, a key of its own")
        if key not in known:
            raise ConfigError(
                f"unknown config key '{prefix}{key}'{did_you_mean(key, sorted(own) + known)}; "
                f"allowed under '{prefix.rstrip('.')}': {', '.join(sorted(own))} and the arguments "
                "of pytorch_lightning.Trainer"
            )
    return {**{key: value for key, value in data.items() if key in own}, "args": args}


def did_you_mean(word: str, choices: list[str]) -> str:
    """ "; did you mean 'X'?" for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass
class ProbeConfig:
    enabled: bool = option(True, "train an online linear probe on detached backbone features")
    lr: float = option(1e-3, "probe learning rate (same optimiser type, no weight decay)", gt=0.0)
    source: str = option(
        "batch",
        "batch: the labelled samples of each pretraining batch (their x̄ features); "
        "labelled: a full batch drawn from the labelled train split at every step (the "
        "authors' OnlineFineTuner; for mostly unlabelled sets such as STL10)",
        choices=("batch", "labelled"),
    )
    scheduled: bool = option(
        True, "the probe's learning rate follows the run's schedule (false: constant, as the authors' probe optimiser)"
    )


@dataclass
class EvalConfig:
    epochs: int = option(100, "linear-evaluation epochs (the --epochs flag overrides)", ge=1)
    lrs: List[float] = option(
        help="linear-evaluation learning rates tried, chosen on the validation split",
        factory=lambda: [1e-3, 3e-3, 1e-2],
    )
    wds: List[float] = option(help="linear-evaluation weight decays tried", factory=lambda: [0.0, 1e-5])
    batch_size: int = option(256, "linear-evaluation batch size", ge=1)
    ten_crop: bool = option(True, "average the probe over ten crops at test time (when dataset.size >= 64)")
    mirror: bool = option(
        False,
        "--retrain trains the head on x̄ and its mirror image (one drawn per sample and "
        "epoch), averages the two logits on validation and test (where ten-crop does "
        "not apply) and gives k-NN the mean of the two features; the online probe, "
        "trained on x̄, is evaluated on x̄",
    )
    refit: bool = option(
        True,
        "--retrain also trains a head on train + validation with the lr/wd/epochs chosen "
        "on validation (the usual protocol's last step); both heads are reported",
    )
    weights: str = option(
        "auto",
        "backbone weights to evaluate: ema (the run's moving average, ema_decay > 0), "
        "online (the trained weights), auto (ema when the checkpoint has it)",
        choices=("auto", "online", "ema"),
    )
    knn_k: int = option(20, "k of the cosine k-NN classifier", ge=1)
    knn_temperature: float = option(0.07, "temperature of the k-NN vote weights exp(sim/T)", gt=0.0)


@dataclass
class LossConfig:
    mse_weight: float = option(1.0, "weight of MSE(z̄, z)")
    std_margin: float = option(1.0, "γ of the variance hinge relu(γ - std_j) (the seed's top-level std_margin)", ge=0.0)
    normalize_z: bool = option(
        False, "L2-normalise z and z̄ before the loss (the authors' option; the seed's top-level normalize_z)"
    )
    std_weight: float = option(1.0, "weight of the variance hinge on z and z̄")
    dcor_weight: float = option(1.0, "weight of 1 - dCor(z̄, z) (of -dCov²(z̄, z) with statistic dcov)")
    statistic: str = option(
        "dcor",
        "dependence statistic of the z̄-z and representation terms: dcor (1 - dCor) or "
        "dcov (-dCov², unbounded: see docs/statistics.md)",
        choices=("dcor", "dcov"),
    )
    unbiased: bool = option(False, "bias-corrected dCor² (U-statistic) instead of the V-statistic dCor")
    gather: bool = option(True, "compute every batch-level term on the global batch under DDP")
    gather_dim: Optional[int] = option(
        None,
        "under DDP with gather: gather each representation as a seeded random "
        "projection to this many dims, the same on every rank (None: exactly)",
        ge=1,
    )


@dataclass
class RepresentationConfig:
    name: str = option(help="representation φ_k", registry="representation")
    weight: float = option(1.0, "weight w_k of 1 - dCor(φ_k(x̄), z); negative = the authors' sign")
    statistic: Optional[str] = option(
        None, "dcor or dcov for this term (None: loss.statistic)", choices=(None, "dcor", "dcov")
    )
    params: Dict[str, Any] = option(help="parameters of the representation", factory=dict)
    standardize: bool = option(
        False,
        "z-score each feature of φ_k over the (global) batch before dCor, so that "
        "a few large-magnitude features (ScatNet's low-pass) do not dominate the "
        "distances",
    )
    power: float = option(
        1.0,
        "signed power sign(φ)·|φ|^p applied to each feature of φ_k before `standardize` "
        "(0.5: the Hellinger / RootSIFT map of histograms; small p compresses sparse, "
        "heavy-tailed features such as HOG's; 1 = unchanged)",
        gt=0.0,
    )


@dataclass
class HogConfig:
    nbins: int = option(24, "HOG orientation bins (default for a 'hog' representation)", ge=2)
    pool: int = option(8, "HOG cell size (average pooling)", ge=1)


@dataclass
class ScatnetConfig:
    J: int = option(2, "scattering scales (default for a 'scatnet' representation)", ge=1)
    L: int = option(8, "scattering angles", ge=1)
    shape: Optional[List[int]] = option(
        None, "input [height, width] (the authors' key; must be [dataset.size, dataset.size])"
    )


@dataclass
class BaseTrainConfig:
    """Keys every trainer script shares (names from the original project's configs)."""

    batch_size: int = option(256, "batch size per device", ge=1)
    epochs: int = option(100, "training epochs", ge=1)
    warmup_epochs: int = option(10, "linear warm-up epochs before the cosine decay", ge=0)
    lr: float = option(1e-4, "learning rate", gt=0.0)
    wd: float = option(1e-6, "weight decay", ge=0.0)
    optimizer: str = option("adam", "optimiser", registry="optimizer")
    momentum: float = option(0.9, "momentum (sgd, lars)", ge=0.0, le=1.0)
    scheduler: str = option(
        "warmup_cosine",
        "learning-rate schedule (authors_clip / authors_epoch_cosine: the "
        "authors' CLIP and semi-supervised schedules, see docs/authors.md)",
        registry="scheduler",
    )
    min_lr: Optional[float] = option(
        None,
        "warmup_cosine: the lr it starts from and decays to (None: 1e-3 x lr, the "
        "warm-up starting near 0; the authors: 1e-6)",
        ge=0.0,
    )
    schedule_epoch: str = option(
        "run",
        "what one epoch is to the schedule's lengths: run (the run's optimiser steps "
        "per epoch) | single_device (floor(train images / batch_size) optimiser "
        "steps, as the authors' code counted it: with gradient accumulation or "
        "several devices their schedule runs slower than the epochs)",
        choices=("run", "single_device"),
    )
    wd_norm_and_bias: bool = option(
        False,
        "decay biases and normalisation weights too, and the fine-tuning head "
        "(the authors' Adam decays every parameter it optimises)",
    )
    gradient_clip_val: Optional[float] = option(
        None, "clip the gradient norm to this value (None: no clipping)", gt=0.0
    )
    milestones: List[int] = option(help="multistep: epochs at which lr is multiplied by 0.1", factory=list)
    fp16: bool = option(
        False,
        "mixed precision: bf16 where the hardware has it (CUDA, AVX512-BF16/AMX CPUs), "
        "else fp16 on CUDA; losses stay float32",
    )
    channels_last: bool = option(True, "channels_last memory format for the encoder")
    compile: bool = option(False, "torch.compile the backbone")
    compile_view_ops: bool = option(
        True,
        "torch.compile the x' view's colour jitter, grayscale and solarize into "
        "fused kernels (eager, with a one-line warning, where compiling fails)",
    )
    accumulate_grad_batches: int = option(1, "gradient accumulation steps", ge=1)
    n_workers: int = option(2, "data-loader worker processes", ge=0)
    log_every: int = option(50, "log every N steps", ge=1)
    eval_every: int = option(1, "validate every N epochs", ge=1)
    seed: int = option(0, "random seed")
    deterministic: bool = option(False, "deterministic algorithms (slower)")
    resume: bool = option(True, "continue from <run>/checkpoints/last.ckpt when it exists")
    run_dir: str = option("runs", "folder that holds run directories")
    name: Optional[str] = option(None, "run name (None: config file name + comment)")
    comment: str = option("", "free text appended to the run name")
    dataset: DatasetConfig = option(factory=DatasetConfig, help="dataset section")
    trainer: TrainerConfig = option(factory=TrainerConfig, help="hardware / Lightning section")
    batch_size_suggested: Optional[int] = option(None, "written by --auto_bs")
    lr_suggested: Optional[float] = option(None, "written by --auto_lr")


@dataclass
class CacheConfig:
    enabled: bool = option(True, "compute deterministic φ_k(x̄) once per dataset and read them by sample index")
    dir: Optional[str] = option(None, "cache folder (None: <run_dir>/cache, shared by runs)")
    dtype: str = option("float16", "storage dtype", choices=("float16", "float32"))
    max_dim: Optional[int] = option(None, "seeded random projection of larger representations to this many dims", ge=1)
    max_gb: Optional[float] = option(
        None,
        "refuse to build a cache larger than this many GB (None: the free space of cache.dir is the limit)",
        gt=0.0,
    )


@dataclass
class ClipConfig:
    model_name: str = option("ViT-B-16", "open_clip architecture (default for a 'teacher' representation; seed key)")
    pretrained: Optional[str] = option(None, "local open_clip checkpoint file, or a tag already in the local cache")


@dataclass
class PretrainConfig(BaseTrainConfig):
    """MV-MR pretraining (main_self_supervised.py, main_clip_self_supervised.py)."""

    encoder_type: str = option("resnet", "encoder family (seed key)", choices=("resnet",))
    clip: ClipConfig = option(
        factory=ClipConfig, help="defaults for a 'teacher' representation of kind open_clip (seed key)"
    )

    fine_tune_from: Optional[str] = option(None, "checkpoint whose weights initialise the encoder")
    encoder: EncoderConfig = option(factory=EncoderConfig, help="encoder / projector section")
    loss: LossConfig = option(factory=LossConfig, help="loss-term weights")
    representations: Optional[List[RepresentationConfig]] = option(
        None, "the φ_k terms ([]: none; absent: the authors' format, see mvmr.authors_format)"
    )
    hog: HogConfig = option(factory=HogConfig, help="defaults for 'hog' representations (seed key)")
    scatnet: ScatnetConfig = option(factory=ScatnetConfig, help="defaults for 'scatnet' representations (seed key)")
    cache: CacheConfig = option(factory=CacheConfig, help="representation cache")
    probe: ProbeConfig = option(factory=ProbeConfig, help="online linear probe")
    eval: EvalConfig = option(factory=EvalConfig, help="linear / k-NN evaluation")
    ema_decay: float = option(
        0.0,
        "keep an exponential moving average of the backbone's weights with this decay "
        "(0: none; e.g. 0.999); checkpoints hold it as ema_backbone.*, and evaluation "
        "uses it by default (eval.weights)",
        ge=0.0,
        le=0.9999,
    )


@dataclass
class SemiSupervisedConfig(BaseTrainConfig):
    """Fine-tuning backbone + linear head on a labelled fraction (main_semi_supervised.py)."""

    lr_head: Optional[float] = option(None, "learning rate of the linear head (None: 10 x lr)", gt=0.0)
    fine_tune_from: Optional[str] = option(None, "pretrained checkpoint (the --path_ckpt flag overrides)")
    encoder: Optional[EncoderConfig] = option(
        None,
        "if given, checked against the checkpoint's encoder (the "
        "architecture of a checkpoint saved by the authors' code)",
    )
    num_features: Optional[int] = option(None, "backbone feature size (the authors' key; checked)", ge=1)
    eval: EvalConfig = option(factory=EvalConfig, help="test-time evaluation (ten_crop)")


@dataclass
class VOCDatasetConfig(DatasetConfig):
    """The dataset section of a VOC run: Pascal VOC 2007 (read by :mod:`mvmr.data.voc`, not a registry dataset)."""

    name: str = option("voc", "dataset name (the VOC protocol reads VOC2007 only)", choices=("voc",))


@dataclass
class VOCConfig(BaseTrainConfig):
    """VOC07 multi-label classification on frozen features (main_voc.py)."""

    dataset: VOCDatasetConfig = option(factory=VOCDatasetConfig, help="the data (Pascal VOC 2007)")

    num_classes: int = option(20, "VOC07 classes (seed key; must be 20)", ge=20, le=20)
    protocol: str = option(
        "linear", "linear: BCE linear head; svm: one linear SVM per class, cost by CV", choices=("linear", "svm")
    )
    svm_costs: List[float] = option(help="SVM costs tried by cross-validation", factory=lambda: [0.01, 0.1, 1.0, 10.0])
    fine_tune_from: Optional[str] = option(None, "unused (seed key)")
    encoder: Optional[EncoderConfig] = option(
        None,
        "architecture of a checkpoint saved by the authors' code "
        "(the authors' key; checked against an mvmr checkpoint's own)",
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        name = " or ".join(_type_name(a) for a in args)
        return name + (" or null" if len(args) < len(typing.get_args(tp)) else "")
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Dict):
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it converted (e.g. '1e-4' -> 1e-4, dict -> dataclass)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:  # Optional[X]: X's own message says what is wrong (e.g. a nested key's)
            raise errors[0]
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
        return build_dataclass(tp, value, prefix=f"{key}.")
    if origin in (list, List):
        (item_tp,) = typing.get_args(tp)
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads '1e-4' as a string (YAML 1.1); parse it, never eval it
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. out_dim: 2048 (a one-layer projector)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise TypeError(f"unsupported schema type {tp} for {key}")


def _check_bounds(value: Any, meta: dict, key: str) -> None:
    if value is None:
        return
    if "registry" in meta:
        names = registered_names(meta["registry"])
        if value not in names:
            raise ConfigError(
                f"{key}: unknown {meta['registry']} {value!r}{did_you_mean(str(value), names)}; "
                f"allowed: {', '.join(names)}"
            )
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, choices))}")
    for name, test, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
    ):
        if name in meta and isinstance(value, (int, float)) and not test(value, meta[name]):
            raise ConfigError(f"{key} must be {word} {meta[name]}, got {value!r}")


def build_dataclass(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and checking every value."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if cls is TrainerConfig:
        data = route_trainer_keys(data, prefix)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'{did_you_mean(unknown[0], list(fields))}; allowed under "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            value = _coerce(data[name], hints[name], key)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            raise ConfigError(f"missing required config key '{key}'")
        _check_bounds(value, f.metadata, key)
        kwargs[name] = value
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'encoder.out_dim=512-512'`` -> (['encoder', 'out_dim'], '512-512'); the value is YAML-typed."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. --set dataset.size=32), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set a.b=c`` overrides to a raw mapping; list items are addressed by index
    (``representations.0.weight``)."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, parts[: i + 1])]
                continue
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, parts)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(parts)}: '{'.'.join(parts[:-1])}' is not a section")
    return data


def _list_index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(parts)}: '{part}' is not an index of a list of {len(node)} items")
    return int(part)


SEED_LOSS_KEYS = ("std_margin", "normalize_z")  # top-level in the seed's and the authors' files, loss.* here


def move_seed_loss_keys(data: dict) -> None:
    """The seed's top-level loss keys read as their ``loss:`` names (in place); both given and different is an
    error."""
    for key in SEED_LOSS_KEYS:
        if key not in data:
            continue
        value = data.pop(key)
        loss = data.get("loss")
        if not isinstance(loss, dict):
            loss = data["loss"] = {}
        if key in loss and loss[key] != value:
            raise ConfigError(f"{key} ({value!r}) and loss.{key} ({loss[key]!r}) disagree; keep loss.{key}")
        loss[key] = value


SCHEMA_PROTOCOLS = {"PretrainConfig": "self_supervised", "SemiSupervisedConfig": "semi_supervised", "VOCConfig": "voc"}


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    schema: type = PretrainConfig,
    protocol: str | None = None,
) -> Any:
    """Read YAML ``path`` (or start from defaults when None), apply overrides, validate against ``schema``.

    A file in the authors' format is completed with what their code fixes (:mod:`mvmr.authors_config`);
    ``protocol`` (self_supervised, distillation, semi_supervised, voc; default: the schema's) says which of
    their modules the file was written for."""
    protocol = protocol or SCHEMA_PROTOCOLS.get(schema.__name__)
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file '{path}' not found; pass an existing YAML file, e.g. configs/digits_self_supervised.yaml"
            )
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"config file '{path}' is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must be a mapping of keys")
    authors = path is not None and protocol is not None and is_authors_format(data, protocol)
    data = apply_overrides(data, list(overrides or []))
    if schema is PretrainConfig:
        move_seed_loss_keys(data)
    if authors:
        fill_authors_defaults(data, protocol, source=f"'{path}'")
    cfg = build_dataclass(schema, data)
    check_consistency(cfg)
    return cfg


# Architecture arithmetic the checks below need (here, below the models, which import them)
def parse_widths(spec: str, key: str = "encoder.out_dim") -> list[int]:
    """``"2048-2048"`` -> [2048, 2048]; a one-line ConfigError for anything else."""
    parts = str(spec).split("-")
    try:
        widths = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{key} must be positive integers joined by '-', e.g. 8192-8192-8192, got {spec!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"{key} must be positive integers joined by '-', e.g. 8192-8192-8192, got {spec!r}")
    return widths


def last_map_side(size: int, small_kernel: bool, maxpool: bool | None) -> int:
    """Side of the last stage's feature map for ``size`` x ``size`` inputs: every stride-2 step (the 7x7 stem,
    the max-pool, the first block of stages 2-4; all padded) maps n to ceil(n / 2)."""
    keep_pool = (not small_kernel) if maxpool is None else maxpool
    halvings = (0 if small_kernel else 1) + (1 if keep_pool else 0) + 3
    for _ in range(halvings):
        size = -(-size // 2)
    return size


def check_consistency(cfg: Any) -> None:
    """Cross-field checks that a per-field type cannot express."""
    if getattr(cfg, "warmup_epochs", 0) > getattr(cfg, "epochs", 1):
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs}) must be <= epochs ({cfg.epochs})")
    encoder = getattr(cfg, "encoder", None)
    if encoder is not None:
        parse_widths(encoder.out_dim, key="encoder.out_dim")
        dataset = getattr(cfg, "dataset", None)
        if dataset is not None and encoder.pool_grid > 1:
            side = last_map_side(dataset.size, encoder.small_kernel, encoder.maxpool)
            if encoder.pool_grid > side:
                raise ConfigError(
                    f"encoder.pool_grid={encoder.pool_grid} is larger than the {side}x{side} last "
                    f"feature map at dataset.size={dataset.size} (it would only repeat features); "
                    f"use encoder.pool_grid <= {side}"
                )
    for i, rep in enumerate(getattr(cfg, "representations", []) or []):
        if not rep.name:
            raise ConfigError(f"representations[{i}].name is required")
    if isinstance(cfg, PretrainConfig):
        needed = 4 if cfg.loss.unbiased else 2
        if cfg.batch_size < needed:
            why = (
                "the bias-corrected dCor (loss.unbiased)"
                if cfg.loss.unbiased
                else "the MV-MR loss (its variance hinge and distance terms)"
            )
            raise ConfigError(f"batch_size must be >= {needed} for {why}; got {cfg.batch_size}")
    scatnet, dataset = getattr(cfg, "scatnet", None), getattr(cfg, "dataset", None)
    if scatnet is not None and scatnet.shape is not None and list(scatnet.shape) != [dataset.size, dataset.size]:
        raise ConfigError(
            f"scatnet.shape {list(scatnet.shape)} must be [dataset.size, dataset.size] = "
            f"[{dataset.size}, {dataset.size}] (ScatNet runs on x̄); fix it or remove scatnet.shape"
        )
    if dataset is not None and (dataset.mean is None) != (dataset.std is None):
        raise ConfigError("dataset.mean and dataset.std go together: set both (one value per channel) or neither")
    if dataset is not None and dataset.std is not None:
        if len(dataset.mean) != len(dataset.std) or min(dataset.std) <= 0:
            raise ConfigError(
                f"dataset.mean / dataset.std need one value per channel and std > 0; got {dataset.mean} / {dataset.std}"
            )
    devices = getattr(getattr(cfg, "trainer", None), "devices", 1)
    if isinstance(devices, str) and devices != "auto":
        raise ConfigError(f"trainer.devices must be a positive integer or 'auto', got {devices!r}")
    if isinstance(devices, int) and devices < 1:
        raise ConfigError(f"trainer.devices must be >= 1, got {devices}")


def to_dict(cfg: Any) -> dict:
    """The resolved config as a plain mapping (written to <run>/config.yaml)."""
    return dataclasses.asdict(cfg)


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (keys in schema order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def describe_schema(cls: type = PretrainConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows (key, type, default, help) for the README's config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_schema(tp, key + "."))
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            help_text += f" ({' / '.join(map(str, f.metadata['choices']))})"
        if "registry" in f.metadata:
            help_text += f" ({' / '.join(registered_names(f.metadata['registry']))})"
        rows.append((key, _type_name(tp), repr(default), help_text))
    return rows
