"""The projector g: an MLP described by a string such as ``"8192-8192-8192"``."""

from __future__ import annotations

from torch import nn

from mvmr.config import parse_widths


def build_projector(in_dim: int, spec: str, last_bias: bool = True) -> nn.Sequential:
    """Linear-BN-ReLU blocks for every width but the last, which is a plain Linear (with a bias unless
    ``last_bias`` is False: the authors' projector has no bias anywhere).

    (B, in_dim) -> (B, widths[-1]). Example: in_dim=512, spec="2048-2048" gives
    Linear(512, 2048) BN ReLU Linear(2048, 2048).
    """
    widths = parse_widths(spec)
    layers: list[nn.Module] = []
    prev = in_dim
    for width in widths[:-1]:
        layers += [nn.Linear(prev, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        prev = width
    layers.append(nn.Linear(prev, widths[-1], bias=last_bias))
    return nn.Sequential(*layers)
