"""The encoder f: a torchvision ResNet without its classifier, with an optional small-image stem."""
from __future__ import annotations

from typing import Callable, Dict

import torchvision
from torch import nn

from mvmr.registry import Registry

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
BACKBONES.register("resnet18")(torchvision.models.resnet18)
BACKBONES.register("resnet34")(torchvision.models.resnet34)
BACKBONES.register("resnet50")(torchvision.models.resnet50)


def build_backbone(name: str, *, in_channels: int = 3, small_kernel: bool = False,
                   maxpool: bool | None = None, zero_init_residual: bool = True) -> tuple[nn.Module, int]:
    """Return ``(backbone, feature_dim)``; backbone maps (B, C, H, W) -> (B, feature_dim).

    ``small_kernel`` replaces the 7x7 stride-2 stem with a 3x3 stride-1 convolution (CIFAR/STL-sized
    images) and drops the max-pool unless ``maxpool`` is True. Weights are random (``weights=None``).
    """
    net = BACKBONES.get(name, key="encoder.backbone")(weights=None, zero_init_residual=zero_init_residual)
    if small_kernel:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    keep_pool = (not small_kernel) if maxpool is None else maxpool
    if not keep_pool:
        net.maxpool = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def backbone_state_dict(state_dict: Dict[str, object], prefix: str = "backbone.") -> Dict[str, object]:
    """Select the backbone's weights from a module state dict (``backbone.*`` keys, prefix removed)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
