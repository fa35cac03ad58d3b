"""A frozen teacher network as a representation: φ(x̄) = its embedding of x̄ (MV-MR knowledge distillation).

Three kinds of teacher, each a loader in ``TEACHER_LOADERS``:

- ``open_clip``: the image tower of an open_clip model (the paper: CLIP ViT-B/16); ``encode_image`` without
  the text tower; mean/std from the weights' preprocess config (OpenAI CLIP's unless the tag says otherwise);
- ``torchvision``: a torchvision classifier with its last Linear replaced by Identity (pooled features),
  ImageNet mean/std;
- ``mvmr``: the backbone of a pretraining checkpoint of this project, with that run's dataset mean/std.

Nothing is downloaded: ``pretrained`` is a local file, or (open_clip) a tag whose weights are already in
the Hugging Face or open_clip cache on disk.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mvmr.errors import ConfigError, DataError, MVMRError
from mvmr.frozen_backbone import load_frozen_backbone
from mvmr.registry import Registry
from mvmr.representations.base import Param, Representation, _is_number, int_param
from mvmr.representations.registry import register_representation

KINDS = ("open_clip", "torchvision", "mvmr")
INPUT_CONVENTIONS = ("teacher", "authors")
DEFAULT_MODEL_NAMES = {"open_clip": "ViT-B-16", "torchvision": "resnet50"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_INPUT_SIZE = 224
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")
FILE_HINT = "pass a local file (teacher.pretrained=/path/to/weights)"
LOAD_ERRORS = (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError)  # unreadable / mismatched


# --------------------------------------------------------------------------------------------
# The frozen network and its input convention
# --------------------------------------------------------------------------------------------
def match_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """[0, 1] images (B, C, H, W) -> (B, channels, H, W): grey repeated to RGB, RGB to grey by BT.601 luma."""
    if pixels.shape[1] == channels:
        return pixels
    if pixels.shape[1] == 1:
        return pixels.expand(-1, channels, -1, -1)
    weights = pixels.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def channels_compatible(given: int, wanted: int) -> bool:
    """Whether :func:`match_channels` can turn ``given`` channels into ``wanted``."""
    return given == wanted or given == 1 or (given == 3 and wanted == 1)


class FrozenTeacher(nn.Module):
    """A frozen encoder and its input convention: [0, 1] images (B, C, H, W) -> (B, dim) float32.

    ``prepare`` matches the channels, resizes to ``size`` (bicubic, antialiased, clipped to [0, 1] as a
    uint8 PIL pipeline would) and normalises with the teacher's own ``mean``/``std``. ``prepare_authors``
    is the authors' input instead (any values in, bilinear resize, nothing else). Always in eval mode,
    no gradients.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        channels: int,
        size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        dim: int,
    ):
        super().__init__()
        self.encoder = encoder
        self.channels = channels
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.dim = dim
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, C, H, W) -> the teacher's input (B, channels, *size) float32."""
        pixels = match_channels(pixels.float(), self.channels)
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode="bicubic", align_corners=False, antialias=True).clamp(
                0, 1
            )
        return (pixels - self.mean) / self.std

    def prepare_authors(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' teacher input (``step`` in their src/model/clip_self_supervised_module.py): the
        dataset-normalised x̄ (B, C, H, W) as it is, bilinearly resized to ``size`` (align_corners=False, no
        antialias; they wrote 224, CLIP ViT-B/16's size), no clamp, no re-normalisation -> (B, channels, *size).
        Grey x̄ is repeated to RGB (their code had no grey case)."""
        x = match_channels(x.float(), self.channels)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder on already prepared inputs (B, channels, *size) -> (B, dim) float32."""
        embedding = self.encoder(inputs)
        if isinstance(embedding, (tuple, list)):  # towers that also return tokens (e.g. CoCa)
            embedding = embedding[0]
        return embedding.flatten(1).float()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(self.prepare(pixels))


# --------------------------------------------------------------------------------------------
# Weights: a local file, or an open_clip tag already on disk
# --------------------------------------------------------------------------------------------
def safetensors_name(filename: str) -> Optional[str]:
    """The .safetensors twin open_clip prefers for a Hugging Face weights file name, if any."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME  # optional extra `clip`

    if filename == HF_WEIGHTS_NAME:
        return HF_SAFE_WEIGHTS_NAME
    stem, suffix = os.path.splitext(filename)
    return stem + ".safetensors" if suffix in (".bin", ".pth") else None


def cached_open_clip_file(tag_cfg: dict) -> Optional[Path]:
    """The local copy of an open_clip tag's weights (Hugging Face cache, then ~/.cache/clip), or None.

    Reads the disk only: the same places open_clip would download to, never the network.
    """
    from huggingface_hub import try_to_load_from_cache  # optional extra `clip` (open_clip's dependency)
    from open_clip.constants import HF_WEIGHTS_NAME

    if tag_cfg.get("file"):
        return Path(tag_cfg["file"]) if os.path.isfile(tag_cfg["file"]) else None
    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        for name in (safetensors_name(filename), filename):
            found = try_to_load_from_cache(repo_id, name) if name else None
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if tag_cfg.get("url"):
        candidate = Path("~/.cache/clip").expanduser() / os.path.basename(tag_cfg["url"])
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(kind: str, model_name: Optional[str], pretrained: str) -> tuple[Path, Optional[str]]:
    """(local weights file, open_clip tag or None) for ``pretrained``; a one-line DataError if not on disk."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path, None
    if kind == "open_clip":
        import open_clip  # the optional extra `clip`: imported only for an open_clip teacher

        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if tag_cfg:
            cached = cached_open_clip_file(tag_cfg)
            if cached is None:
                raise DataError(
                    f"teacher.pretrained: the weights of open_clip {model_name} tag '{pretrained}' are "
                    f"not in the local cache and nothing is downloaded at run time; {FILE_HINT}"
                )
            return cached, pretrained
        raise DataError(
            f"teacher.pretrained: '{pretrained}' is neither a file nor an open_clip tag of {model_name}; {FILE_HINT}"
        )
    raise DataError(f"teacher.pretrained: file '{pretrained}' not found; {FILE_HINT}")


def read_state_dict(file: Path) -> dict:
    """A plain state dict from ``file`` (a bare state dict, or one under 'state_dict'; 'module.' prefixes dropped)."""
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict, found {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items()}


# --------------------------------------------------------------------------------------------
# Loaders: (model_name, weights file, open_clip tag, input_size) -> FrozenTeacher
# --------------------------------------------------------------------------------------------
TeacherLoader = Callable[[Optional[str], Path, Optional[str], Optional[int]], FrozenTeacher]
TEACHER_LOADERS: Registry[TeacherLoader] = Registry("teacher kind")


@TEACHER_LOADERS.register("open_clip")
def load_open_clip(
    model_name: Optional[str], file: Path, tag: Optional[str], input_size: Optional[int]
) -> FrozenTeacher:
    """The image tower of open_clip ``model_name``; mean/std as the model declares (the tag's, if a tag)."""
    import open_clip  # the optional extra `clip`: imported only for an open_clip teacher

    tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag else {}
    model = open_clip.create_model(
        model_name,
        pretrained=str(file),
        device="cpu",
        force_image_size=input_size,
        force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        force_preprocess_cfg={key: tag_cfg[key] for key in ("mean", "std") if key in tag_cfg},
    )
    preprocess = open_clip.get_model_preprocess_cfg(model)
    visual = model.visual  # the text tower is dropped with ``model``
    dim = getattr(visual, "output_dim", None) or open_clip.get_model_config(model_name)["embed_dim"]
    return FrozenTeacher(
        visual, channels=3, size=visual.image_size, mean=preprocess["mean"], std=preprocess["std"], dim=int(dim)
    )


def remove_classifier(model: nn.Module) -> tuple[str, int]:
    """Replace the last Linear of ``model``'s classifier by Identity: (its qualified name, in_features)."""
    for attr in CLASSIFIER_NAMES:
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return attr, head.in_features
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            last = list(head._modules)[-1]
            features = head[-1].in_features
            setattr(head, last, nn.Identity())
            return f"{attr}.{last}", features
    raise ConfigError(
        f"teacher.model_name: {type(model).__name__} has no final Linear in "
        f"{'/'.join(CLASSIFIER_NAMES)} to remove; pick a torchvision classifier such as resnet50"
    )


@TEACHER_LOADERS.register("torchvision")
def load_torchvision(
    model_name: Optional[str], file: Path, tag: Optional[str], input_size: Optional[int]
) -> FrozenTeacher:
    """torchvision ``model_name`` with a saved state dict, classifier removed (any class count), ImageNet stats."""
    model = torchvision.models.get_model(model_name, weights=None)
    classifier, dim = remove_classifier(model)
    state = {key: value for key, value in read_state_dict(file).items() if not key.startswith(classifier + ".")}
    model.load_state_dict(state, strict=True)
    return FrozenTeacher(
        model, channels=3, size=input_size or TORCHVISION_INPUT_SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, dim=dim
    )


@TEACHER_LOADERS.register("mvmr")
def load_mvmr(model_name: Optional[str], file: Path, tag: Optional[str], input_size: Optional[int]) -> FrozenTeacher:
    """The backbone of a checkpoint of this project (its trained, online weights, with its run's dataset
    mean/std and size) or of an authors' file (mvmr.checkpoint_formats: architecture inferred from the
    weights, 3 channels with ImageNet mean/std, 224 px unless ``input_size``), read by
    :func:`mvmr.frozen_backbone.load_frozen_backbone` with ``torch.load(weights_only=True)``."""
    frozen = load_frozen_backbone(file, weights="online", image_size=input_size)
    info = frozen.info
    return FrozenTeacher(
        frozen.backbone,
        channels=info.channels,
        size=input_size or frozen.image_size,
        mean=info.mean,
        std=info.std,
        dim=frozen.backbone.feature_dim,
    )


def one_line(err: Exception, limit: int = 300) -> str:
    """An exception's message squeezed onto one line."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------------------------
# The representation
# --------------------------------------------------------------------------------------------
def _choice(value: Any) -> bool:
    return value in KINDS


def _optional_name(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def _name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _numbers(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_number(v) for v in value)


def _floats(value: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@register_representation
class Teacher(Representation):
    """φ(x̄) = a frozen teacher's embedding of x̄: (B, C, H, W) normalised -> (B, D) float32.

    ``forward``: x̄ · dataset_std + dataset_mean -> [0, 1] pixels; grey -> RGB if the teacher wants RGB
    (RGB -> grey by BT.601 luma for a grey teacher); bicubic antialiased resize to ``input_size``;
    normalisation with the TEACHER'S mean/std (not the dataset's: the authors' code fed CLIP
    dataset-normalised images); the teacher in float32 (autocast off; φ is cached once anyway).
    ``input_convention: authors`` feeds the teacher their input instead, only to reproduce their runs:
    x̄ itself (dataset-normalised) bilinearly resized to ``input_size`` (:meth:`FrozenTeacher.prepare_authors`).
    D: open_clip ``visual.output_dim`` (CLIP ViT-B/16: 512), torchvision ``in_features`` of the removed
    classifier (resnet50: 2048), mvmr the checkpoint's feature size. The default teacher (CLIP
    ViT-B/16) on a 3×96×96 input gives (B, 512).

    ``dataset_mean``/``dataset_std`` are the normalisation of x̄; the training code injects them from
    the dataset. Construction only checks that the weights file is on disk; the network is loaded on
    first use (``output_dim``, ``forward`` or ``.teacher``), so a reused cache or an evaluation of the
    student never loads it. It lives outside the module tree: its weights
    are not in ``parameters()`` nor in checkpoints, ``train()`` does not touch it, and ``.to(device)``
    moves it (with the device, never the dtype).
    """

    name = "teacher"
    param_specs = {
        "kind": Param("open_clip", f"one of {', '.join(KINDS)}", _choice, "teacher family"),
        "model_name": Param(
            None,
            "a non-empty string or null",
            _optional_name,
            "open_clip architecture or torchvision model name (null: ViT-B-16 / resnet50; must be null for mvmr)",
        ),
        "pretrained": Param(
            None,
            "a local weights file (open_clip: or a tag whose weights are cached on disk)",
            _name,
            "open_clip checkpoint, torchvision state dict, or a .ckpt of this project",
        ),
        "input_size": int_param(None, "teacher input resolution (null: the teacher's own)", minimum=1, optional=True),
        "dataset_mean": Param(
            None,
            "a list of finite numbers, one per channel",
            _numbers,
            "normalisation of x̄ (injected by the training code)",
            convert=_floats,
        ),
        "dataset_std": Param(
            None,
            "a list of finite numbers > 0, one per channel",
            _numbers,
            "normalisation of x̄ (injected by the training code)",
            convert=_floats,
        ),
        "input_convention": Param(
            "teacher",
            f"one of {', '.join(INPUT_CONVENTIONS)}",
            lambda value: value in INPUT_CONVENTIONS,
            "teacher: [0, 1] pixels, bicubic antialiased resize, the teacher's mean/std; "
            "authors: x̄ as it is (dataset-normalised), bilinear resize (their CLIP input)",
        ),
    }
    dim_formula = "teacher embedding size D"
    example_dim = "512 (CLIP ViT-B/16)"  # describe_representations cannot load weights to measure it

    def __init__(self, in_channels: int, image_size: int, **params: Any):
        super().__init__(in_channels, image_size, **params)
        for key in ("dataset_mean", "dataset_std"):
            if len(self.settings[key]) != in_channels:
                raise self.invalid(key, f"a list of {in_channels} numbers (one per channel)")
        if min(self.dataset_std) <= 0:
            raise self.invalid("dataset_std", "a list of finite numbers > 0")
        self.model_name = self.settings["model_name"] = self._checked_model_name()
        self.weights_file, self.tag = resolve_weights(self.kind, self.model_name, self.pretrained)
        stat = self.weights_file.stat()
        self.weights_identity = (str(self.weights_file.resolve()), stat.st_size, stat.st_mtime_ns)
        self.register_buffer("x_mean", torch.tensor(self.dataset_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("x_std", torch.tensor(self.dataset_std).view(1, -1, 1, 1), persistent=False)
        self._frozen: list[FrozenTeacher] = []  # a list keeps the teacher out of the module tree

    def _checked_model_name(self) -> Optional[str]:
        """The architecture name, defaulted per kind and checked against the library's list."""
        if self.kind == "mvmr":
            if self.model_name is not None:
                raise self.invalid("model_name", "null for kind mvmr (the checkpoint defines the backbone)")
            return None
        name = self.model_name or DEFAULT_MODEL_NAMES[self.kind]
        if self.kind == "open_clip":
            import open_clip  # the optional extra `clip`: imported only for an open_clip teacher

            known, where = open_clip.list_models(), "an open_clip architecture (open_clip.list_models())"
        else:
            known, where = torchvision.models.list_models(module=torchvision.models), "a torchvision classifier"
        if name not in known:
            raise ConfigError(f"teacher.model_name must be {where} for kind {self.kind}, got {name!r}")
        return name

    @property
    def loaded(self) -> bool:
        return bool(self._frozen)

    @property
    def teacher(self) -> FrozenTeacher:
        """The frozen teacher, loaded on first access onto this module's device."""
        if not self._frozen:
            self._frozen.append(self._load().to(self.x_mean.device))
        return self._frozen[0]

    def _load(self) -> FrozenTeacher:
        loader = TEACHER_LOADERS.get(self.kind, key="teacher.kind")
        try:
            teacher = loader(self.model_name, self.weights_file, self.tag, self.input_size)
        except MVMRError:
            raise
        except LOAD_ERRORS as err:
            what = " ".join(filter(None, (self.kind, self.model_name)))
            raise DataError(
                f"teacher.pretrained: '{self.weights_file}' cannot be loaded as a {what} teacher "
                f"({type(err).__name__}: {one_line(err)}); {FILE_HINT}"
            ) from None
        if not channels_compatible(self.in_channels, teacher.channels):
            raise ConfigError(
                f"teacher: a {teacher.channels}-channel teacher cannot take {self.in_channels}-channel "
                "images; use a teacher trained on 1 or 3 channels, or set dataset.to_rgb"
            )
        return teacher

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "Teacher":
        super()._apply(fn, recurse)
        if self._frozen:
            self._frozen[0].to(device=self.x_mean.device)
        return self

    def output_dim(self) -> int:
        return self.teacher.dim

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_convention == "authors":
            return self.teacher.embed(self.teacher.prepare_authors(x))
        pixels = (x * self.x_std + self.x_mean).clamp(0, 1)
        return self.teacher(pixels)

    def extra_repr(self) -> str:
        # The cache hashes this: a teacher file rewritten in place (new size or mtime) gives a new entry.
        path, size, mtime_ns = self.weights_identity
        return f"{super().extra_repr()}, weights={path!r}, weights_bytes={size}, weights_mtime_ns={mtime_ns}"
