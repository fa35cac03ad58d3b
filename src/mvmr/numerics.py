"""Numerical helpers shared by the representations and the losses."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def autocast_disabled(device: torch.device) -> ContextManager:
    """A context that turns autocast off on ``device``'s type (a no-op where autocast does not exist, e.g. meta):
    the representations and the loss compute in float32 whatever the training precision."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
