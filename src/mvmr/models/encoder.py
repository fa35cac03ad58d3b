"""The encoder f: a ResNet trunk (torchvision's blocks and layout, no classifier) with a configurable base width
and an optional small-image stem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Type, Union

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from mvmr.models.small_map_conv import SmallMapConv2d, use_small_map_matmul
from mvmr.registry import Registry

Block = Type[Union[BasicBlock, Bottleneck]]


@dataclass(frozen=True)
class ResNetSpec:
    block: Block
    layers: Sequence[int]


BACKBONES: Registry[ResNetSpec] = Registry("backbone")
BACKBONES.register("resnet18")(ResNetSpec(BasicBlock, (2, 2, 2, 2)))
BACKBONES.register("resnet34")(ResNetSpec(BasicBlock, (3, 4, 6, 3)))
BACKBONES.register("resnet50")(ResNetSpec(Bottleneck, (3, 4, 6, 3)))


class ResNetTrunk(nn.Module):
    """torchvision's ResNet without ``fc``, stage widths ``width * (1, 2, 4, 8)``.

    With ``width=64`` and the standard stem it has exactly torchvision's parameter names, shapes, initialisation
    scheme and forward pass (tested), so checkpoints carry ``conv1.*``, ``layer1.0.*``, ... keys.
    (B, C, H, W) -> (B, 8 * width * block.expansion * pool_grid²): the last stage's map average-pooled to a
    ``pool_grid`` x ``pool_grid`` grid and flattened channel-major (1: global average pooling, torchvision's).
    """

    def __init__(
        self,
        spec: ResNetSpec,
        *,
        width: int = 64,
        in_channels: int = 3,
        small_kernel: bool = False,
        maxpool: bool = True,
        zero_init_residual: bool = True,
        pool_grid: int = 1,
    ):
        super().__init__()
        if small_kernel:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if maxpool else nn.Identity()
        self._inplanes = width
        self.layer1 = self._stage(spec.block, width, spec.layers[0], stride=1)
        self.layer2 = self._stage(spec.block, 2 * width, spec.layers[1], stride=2)
        self.layer3 = self._stage(spec.block, 4 * width, spec.layers[2], stride=2)
        self.layer4 = self._stage(spec.block, 8 * width, spec.layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_grid, pool_grid))
        self.out_dim = 8 * width * spec.block.expansion * pool_grid**2
        self._init_weights(zero_init_residual)

    def _stage(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self._inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # each residual branch starts as the identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    small_kernel: bool = False,
    maxpool: bool | None = None,
    zero_init_residual: bool = True,
    width: int = 64,
    pool_grid: int = 1,
    small_map_matmul: bool = True,
) -> tuple[nn.Module, int]:
    """Return ``(backbone, feature_dim)``; backbone maps (B, C, H, W) -> (B, feature_dim).

    ``small_kernel`` replaces the 7x7 stride-2 stem with a 3x3 stride-1 convolution (CIFAR/STL-sized images)
    and drops the max-pool unless ``maxpool`` is True. ``width`` is the first stage's channel count (64 in the
    standard ResNets; 32 quarters the compute). ``pool_grid`` g > 1 average-pools the last map to g x g and
    flattens it (features g² times wider; keeps the coarse layout of aligned images). ``small_map_matmul`` runs
    the 3x3 convolutions whose input map has at most 4 positions as one matrix product on the CPU (the same
    function; see ``models/small_map_conv.py``). Weights are random.
    """
    spec = BACKBONES.get(name, key="encoder.backbone")
    keep_pool = (not small_kernel) if maxpool is None else maxpool
    net = ResNetTrunk(
        spec,
        width=width,
        in_channels=in_channels,
        small_kernel=small_kernel,
        maxpool=keep_pool,
        zero_init_residual=zero_init_residual,
        pool_grid=pool_grid,
    )
    return use_small_map_matmul(net, small_map_matmul), net.out_dim


def backbone_from_config(encoder, in_channels: int) -> tuple[nn.Module, int]:
    """``build_backbone`` with every architecture key of an ``EncoderConfig`` (the one place that maps them)."""
    return build_backbone(
        encoder.backbone,
        in_channels=in_channels,
        small_kernel=encoder.small_kernel,
        maxpool=encoder.maxpool,
        zero_init_residual=encoder.zero_init_residual,
        width=encoder.width,
        pool_grid=encoder.pool_grid,
        small_map_matmul=encoder.small_map_matmul,
    )


def use_channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Store ``module``'s 4-D (convolution) weights in channels_last, in place; returns it.

    Feeding channels_last inputs to weights kept in the default layout makes oneDNN reorder every weight on
    every call (forward and backward): 1.22x slower per pretraining step on the Fashion-MNIST config
    (benchmarks/results/speed.md).
    """
    return module.to(memory_format=torch.channels_last) if enabled else module


def backbone_state_dict(state_dict: Dict[str, object], prefix: str = "backbone.") -> Dict[str, object]:
    """Select the backbone's weights from a module state dict (``backbone.*`` keys, prefix removed)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def strided_convs_on_single_pixels(backbone: nn.Module, channels: int, size: int) -> list[str]:
    """Names of the convolutions with a kernel > 1 and a stride > 1 whose input is 1x1 when ``backbone`` is fed
    (1, channels, size, size) images and that run as ``F.conv2d`` there (a ``SmallMapConv2d`` taking its matrix
    product path is not one). Found with a float32 dry run; the backbone's mode is restored."""
    found, hooks = [], []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1 and max(module.kernel_size) > 1:

            def record(mod, inputs, name=name):
                as_matmul = isinstance(mod, SmallMapConv2d) and mod.uses_matmul(inputs[0])
                if inputs[0].shape[-2:] == (1, 1) and not as_matmul:
                    found.append(name)

            hooks.append(module.register_forward_pre_hook(record))
    training = backbone.training
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            backbone.eval()(torch.zeros(1, channels, size, size, device=next(backbone.parameters()).device))
    finally:
        backbone.train(training)
        for hook in hooks:
            hook.remove()
    return found
