"""Checkpoint reading and atomic writing — one loader for every entry point."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mvmr.config import EncoderConfig, build_dataclass
from mvmr.errors import CheckpointError



def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by this project; a one-line CheckpointError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found; pass the .ckpt of a run (e.g. runs/<name>/checkpoints/best.ckpt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated / foreign file
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({type(err).__name__}); it may be truncated") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"'{path}' is not a checkpoint of this project (no 'state_dict')")
    return ckpt


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A kill at any moment leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose writes are atomic (temporary file, then rename)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)


def encoder_config_of(ckpt: dict) -> EncoderConfig:
    """The encoder section stored in a checkpoint of any of this project's trainers."""
    hp = ckpt.get("hyper_parameters", {})
    enc = hp.get("config", {}).get("encoder") or hp.get("encoder")
    if enc is None:
        raise CheckpointError("checkpoint has no encoder config; pass a checkpoint written by mvmr's trainers")
    return build_dataclass(EncoderConfig, enc, prefix="encoder.")


BACKBONE_PREFIXES = {"online": "backbone.", "ema": "ema_backbone."}


def backbone_prefix(state_dict: dict, weights: str, source: str) -> str:
    """The state-dict prefix of the backbone ``weights`` to load: "online", "ema" (the moving average a run with
    ema_decay > 0 keeps) or "auto" (ema when the checkpoint holds it, else online)."""
    has_ema = any(k.startswith(BACKBONE_PREFIXES["ema"]) for k in state_dict)
    if weights == "auto":
        weights = "ema" if has_ema else "online"
    if weights not in BACKBONE_PREFIXES:
        raise CheckpointError(f"backbone weights must be one of auto, online, ema; got {weights!r}")
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"'{source}' holds no moving-average weights (the run had ema_decay: 0); "
                              "use eval.weights=online or auto")
    return BACKBONE_PREFIXES[weights]


def load_backbone_weights(backbone: nn.Module, state_dict: dict, source: str, weights: str = "auto") -> str:
    """Copy the backbone's weights (``weights``: auto / online / ema, see :func:`backbone_prefix`); a one-line
    CheckpointError naming the first shape that differs. Returns the weights loaded: "online" or "ema"."""
    prefix = backbone_prefix(state_dict, weights, source)
    own = backbone.state_dict()
    theirs = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not theirs:
        raise CheckpointError(f"'{source}' holds no backbone weights (no 'backbone.*' keys)")
    for key, value in own.items():
        if key not in theirs:
            raise CheckpointError(f"'{source}' lacks backbone weight '{key}': the encoder differs from the config's")
        if theirs[key].shape != value.shape:
            raise CheckpointError(f"'{source}' does not match the configured encoder: {prefix}{key} is "
                                  f"{tuple(theirs[key].shape)} in the checkpoint, {tuple(value.shape)} in the config")
    backbone.load_state_dict({k: theirs[k] for k in own})
    return "ema" if prefix == BACKBONE_PREFIXES["ema"] else "online"
