"""What a checkpoint holds, in this project's terms, whichever code wrote it.

:func:`read_weights` takes the contents of a file (:func:`mvmr.checkpoint.read_checkpoint`) and returns its
backbone (torchvision ResNet key names: ``conv1.weight``, ``layer1.0.bn1.running_mean``, ...; no ``fc``), its
projector, online probe and classifier when it has them, and the name of its layout:

- ``mvmr``: a checkpoint of this project: ``state_dict`` with ``backbone.*`` (``ema_backbone.*`` with
  ``ema_decay`` > 0), ``projector.*``, ``probe.weight/bias`` (pretraining) or ``head.weight/bias``
  (semi-supervised), and ``hyper_parameters`` {"config", "info"};
- ``authors-lightning-self-supervised``: a Lightning 1.5 .ckpt of the authors' ``SelfSupervisedModule`` or
  ``CLIPSelfSupervisedModule`` (vkinakh/mv-mr src/model/self_supervised_module.py,
  clip_self_supervised_module.py): ``_encoder.backbone.*``, ``_encoder.projector.*``,
  ``online_finetuner.weight/bias``; their ``_scatnet.*``, ``_hog.*`` and ``clip.*`` entries are not read;
- ``authors-lightning-finetuned``: a .ckpt of their ``SemiSupervisedModule`` or ``VocLinearEvalModule``
  (src/model/semi_supervised_module.py, voc_linear_eval_module.py): ``encoder.*`` (the bare ResNet),
  ``classifier.weight/bias``;
- ``authors-export-self-supervised``: their scripts/save_self_weights.py / save_clip_weights.py .pth:
  {"encoder": ResnetMultiProj state dict (``backbone.*``, ``projector.*``), "online_finetuner": Linear state};
- ``authors-export-finetuned``: their scripts/save_semi_weights.py / save_voc_weights.py .pth:
  {"encoder": ResNet state dict, "classifier": Linear state}.

The authors' files carry no architecture and no normalisation: :func:`infer_encoder_config` reads the
architecture from the weights' names and shapes (their ResnetMultiProj, src/model/resnet.py: a torchvision
ResNet-18 or -50 with ``fc`` = Identity, the 3x3 stride-1 ``small_kernel`` stem keeping the max-pool), and
``AUTHORS_MEAN`` / ``AUTHORS_STD`` are the normalisation they used for STL10 and ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from mvmr.checkpoint import BACKBONE_PREFIXES, backbone_prefix
from mvmr.config import EncoderConfig, build_dataclass
from mvmr.errors import CheckpointError

FORMATS = (
    "mvmr",
    "authors-lightning-self-supervised",
    "authors-lightning-finetuned",
    "authors-export-self-supervised",
    "authors-export-finetuned",
)
# their src/transform/transform.py DATASET_STATS: IMAGENET_STATS for stl10 and the imagenet variants
AUTHORS_MEAN = (0.485, 0.456, 0.406)
AUTHORS_STD = (0.229, 0.224, 0.225)
AUTHORS_IMAGE_SIZE = 224  # what load_encoder assumes for their files when no image_size is given
EXPECTED_LAYOUTS = (
    "'state_dict' with backbone.* (mvmr), 'state_dict' with _encoder.backbone.* or encoder.conv1.weight "
    "(the authors' Lightning .ckpt), or 'encoder' with backbone.* or conv1.weight (the authors' .pth "
    "exports)"
)
Tensors = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class CheckpointWeights:
    """The weights of a checkpoint file in this project's terms."""

    format: str  # one of FORMATS
    backbone: Tensors  # torchvision ResNet key names, no fc
    where: str  # the prefix of the backbone's keys in the file (names them in errors)
    projector: Optional[Tensors] = None  # keys of the projector's nn.Sequential: 0.weight, 1.running_mean, ...
    probe: Optional[Tensors] = None  # online linear probe on backbone features: weight (n_classes, D), bias
    classifier: Optional[Tensors] = None  # a fine-tuned linear head on backbone features: weight, bias
    weights: str = "online"  # "online" or "ema" (the moving average of a run of this project)

    @property
    def from_authors(self) -> bool:
        return self.format != "mvmr"

    @property
    def n_classes(self) -> int:
        """Classes of the probe, else of the classifier; 0 without either."""
        head = self.probe or self.classifier
        return int(head["weight"].shape[0]) if head else 0


def _under(state: Any, prefix: str) -> Optional[Tensors]:
    """The entries of ``state`` under ``prefix``, prefix removed; None if there are none."""
    if not isinstance(state, dict):
        return None
    found = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    return found or None


def _linear(state: Any) -> Optional[Tensors]:
    """A Linear layer's {weight, bias} (None unless ``state`` is exactly that)."""
    if isinstance(state, dict) and set(state) == {"weight", "bias"}:
        return dict(state)
    return None


def checkpoint_format(ckpt: Any) -> Optional[str]:
    """The layout of a checkpoint's contents (one of FORMATS), or None when it is none of them."""
    if not isinstance(ckpt, dict):
        return None
    state, encoder = ckpt.get("state_dict"), ckpt.get("encoder")
    if isinstance(state, dict):
        if _under(state, BACKBONE_PREFIXES["online"]):
            return "mvmr"
        if _under(state, "_encoder.backbone."):
            return "authors-lightning-self-supervised"
        if "encoder.conv1.weight" in state:
            return "authors-lightning-finetuned"
    if isinstance(encoder, dict):
        if _under(encoder, "backbone."):
            return "authors-export-self-supervised"
        if "conv1.weight" in encoder:
            return "authors-export-finetuned"
    return None


def read_weights(ckpt: Any, source: str, weights: str = "auto") -> CheckpointWeights:
    """The weights of a checkpoint's contents in this project's terms (see the module docstring for the
    layouts). ``weights``: "auto", "online" or "ema" (the moving average: only checkpoints of this project
    with ``ema_decay`` > 0 have one; "auto" takes it when present). One-line CheckpointError for an unknown
    layout (naming the keys expected) or ``weights="ema"`` on an authors' file."""
    fmt = checkpoint_format(ckpt)
    if fmt is None:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
        inner = f", state_dict keys {list(state)[:4]}" if isinstance(state, dict) else ""
        raise CheckpointError(
            f"'{source}' has a layout mvmr does not know (top-level keys {keys}{inner}); expected {EXPECTED_LAYOUTS}"
        )
    if fmt == "mvmr":
        state = ckpt["state_dict"]
        prefix = backbone_prefix(state, weights, source)
        head = _linear(_under(state, "head."))
        return CheckpointWeights(
            fmt,
            _under(state, prefix) or {},
            prefix,
            projector=_under(state, "projector."),
            probe=_linear(_under(state, "probe.")),
            classifier=head,
            weights="ema" if prefix == BACKBONE_PREFIXES["ema"] else "online",
        )
    if weights not in ("auto", "online", "ema"):
        raise CheckpointError(f"backbone weights must be one of auto, online, ema; got {weights!r}")
    if weights == "ema":
        raise CheckpointError(
            f"'{source}' is a checkpoint of the authors' code ({fmt}): it holds no moving-average "
            "weights; use weights=online or auto"
        )
    if fmt == "authors-lightning-self-supervised":
        state = ckpt["state_dict"]
        return CheckpointWeights(
            fmt,
            _under(state, "_encoder.backbone."),
            "_encoder.backbone.",
            projector=_under(state, "_encoder.projector."),
            probe=_linear(_under(state, "online_finetuner.")),
        )
    if fmt == "authors-lightning-finetuned":
        state = ckpt["state_dict"]
        return CheckpointWeights(
            fmt, _under(state, "encoder."), "encoder.", classifier=_linear(_under(state, "classifier."))
        )
    if fmt == "authors-export-self-supervised":
        return CheckpointWeights(
            fmt,
            _under(ckpt["encoder"], "backbone."),
            "encoder/backbone.",
            projector=_under(ckpt["encoder"], "projector."),
            probe=_linear(ckpt.get("online_finetuner")),
        )
    return CheckpointWeights(fmt, dict(ckpt["encoder"]), "encoder/", classifier=_linear(ckpt.get("classifier")))


def _blocks_per_stage(backbone_state: Tensors) -> tuple[int, ...]:
    return tuple(
        len({k.split(".")[1] for k in backbone_state if k.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4)
    )


def infer_encoder_config(backbone_state: Tensors, projector_state: Optional[Tensors] = None) -> EncoderConfig:
    """The EncoderConfig of a ResNet state dict (torchvision key names, e.g. an authors' checkpoint).

    ``backbone``: resnet18 / resnet34 / resnet50 from the block type (``layer1.0.conv3`` present: Bottleneck)
    and the blocks per stage; ``small_kernel``: conv1 is 3x3 (7x7: the standard stem); ``width``: conv1's output
    channels; ``maxpool``: True (the authors' small_kernel stem keeps it); ``pool_grid``: 1. With
    ``projector_state`` (keys of an nn.Sequential of Linear / BatchNorm1d / ReLU) also ``out_dim`` (the Linear
    widths) and ``projector_last_bias``. A one-line CheckpointError for any other layout.
    """
    from mvmr.models.encoder import BACKBONES  # lazy: checkpoint readers need no model code until here

    conv1 = backbone_state.get("conv1.weight")
    expected = "torchvision ResNet-18/34/50 weights (conv1.weight, bn1.*, layer1.0.* ... layer4.*)"
    if not isinstance(conv1, torch.Tensor) or conv1.dim() != 4 or conv1.shape[-1] not in (3, 7):
        found = None if conv1 is None else tuple(conv1.shape)
        raise CheckpointError(
            f"cannot tell the architecture of these weights: expected {expected} with a 3x3 or "
            f"7x7 conv1.weight, found conv1.weight {found}"
        )
    bottleneck = "layer1.0.conv3.weight" in backbone_state
    blocks = _blocks_per_stage(backbone_state)
    name = next(
        (
            n
            for n in BACKBONES.names()
            if (BACKBONES.get(n).block.expansion == 4) == bottleneck and tuple(BACKBONES.get(n).layers) == blocks
        ),
        None,
    )
    if name is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise CheckpointError(
            f"cannot tell the architecture of these weights: {kind} blocks "
            f"{'-'.join(map(str, blocks))} per stage are none of resnet18 (BasicBlock 2-2-2-2), "
            f"resnet34 (BasicBlock 3-4-6-3), resnet50 (Bottleneck 3-4-6-3); expected {expected}"
        )
    fields = {
        "backbone": name,
        "small_kernel": conv1.shape[-1] == 3,
        "maxpool": True,
        "width": int(conv1.shape[0]),
        "pool_grid": 1,
    }
    if projector_state:
        linears = sorted(
            int(k.split(".")[0])
            for k, v in projector_state.items()
            if k.split(".")[0].isdigit() and k.endswith(".weight") and v.dim() == 2
        )
        if linears:
            fields["out_dim"] = "-".join(str(projector_state[f"{i}.weight"].shape[0]) for i in linears)
            fields["projector_last_bias"] = f"{linears[-1]}.bias" in projector_state
    return build_dataclass(EncoderConfig, fields, prefix="encoder.")
