"""Encoder (torchvision ResNet) and projector."""

from mvmr.models.encoder import BACKBONES, backbone_from_config, build_backbone, use_channels_last
from mvmr.models.projector import build_projector, parse_widths

__all__ = [
    "BACKBONES",
    "backbone_from_config",
    "build_backbone",
    "build_projector",
    "parse_widths",
    "use_channels_last",
]
