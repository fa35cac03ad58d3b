"""Numerical helpers shared by the representations and the losses."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

EXACT_MATMUL_PRECISION = "highest"  # torch's name for float32 matrix products in full IEEE float32


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Compute in true float32 inside the block, whatever the training run set: autocast off on ``device``'s type
    (where autocast exists) and float32 matrix products and cuDNN convolutions without TensorFloat-32 or
    bfloat16 passes; the previous settings come back on exit.

    The representations and the dCor terms need it: a distance from a Gram matrix, n_i + n_j − 2 G_ij, and a local
    variance, E[x²] − E[x]², cancel, so the 10-bit mantissa of TF32 (what ``set_float32_matmul_precision("high")``
    and cuDNN's default give float32 products on Ampere and later GPUs) would move them by far more than float32
    rounding. Uses torch's legacy switches only (``set_float32_matmul_precision``, ``cudnn.allow_tf32``): mixing
    them with the per-backend ``fp32_precision`` API makes ``torch.get_float32_matmul_precision`` raise, and
    Lightning calls it when it sets up a CUDA run.
    """
    matmul = torch.get_float32_matmul_precision()
    conv = torch.backends.cudnn.allow_tf32
    autocast = (
        torch.autocast(device_type=device.type, enabled=False)
        if torch.amp.is_autocast_available(device.type)
        else contextlib.nullcontext()
    )
    with autocast:
        if matmul != EXACT_MATMUL_PRECISION:
            torch.set_float32_matmul_precision(EXACT_MATMUL_PRECISION)
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            if matmul != EXACT_MATMUL_PRECISION:
                torch.set_float32_matmul_precision(matmul)
            torch.backends.cudnn.allow_tf32 = conv
