"""Checkpoint reading and atomic writing — one loader for every entry point.

Every file is read with ``torch.load(weights_only=True)``: tensors, storages, dtypes, ``torch.Size``, plain
containers, numbers and strings, and nothing that runs code while unpickling. A file that needs any other type
is refused with a one-line :class:`CheckpointError` naming it (:func:`read_checkpoint`). Lightning's own reads
(``trainer.fit(ckpt_path=...)``: resume, the tuner's restore) go through :class:`AtomicCheckpointIO`, so they
are read the same way.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from mvmr.config import EncoderConfig, build_dataclass
from mvmr.errors import CheckpointError

# Types a checkpoint may hold beyond what torch's weights-only unpickler reads by default (tensors, storages,
# dtypes, devices, torch.Size, OrderedDict, Counter, set, bytearray, complex, and the builtin containers,
# numbers and strings). Empty, because nothing this project or the authors' code writes needs more:
#  - Lightning 2.6 writes ``dict(module.hparams)`` (a plain dict, not its AttributeDict), callback states
#    keyed by strings (ModelCheckpoint: str paths and tensor scores; LearningRateMonitor: none), loop progress
#    as nested dicts of ints, optimiser / LambdaLR / GradScaler state dicts of tensors and numbers;
#  - our RNGStateCallback stores NumPy's generator as (str, int64 tensor, int, int, float), not an ndarray
#    (methods/resilience.py ``rng_state``), Python's as a tuple of ints, torch's and CUDA's as uint8 tensors;
#  - hyper_parameters are ``dataclasses.asdict`` of the config and DatasetInfo (str, int, float, bool, None,
#    lists, tuples, dicts);
#  - the authors' Lightning 1.5.10 files: ``dict(hparams)`` of int / float, string callback keys
#    (Callback.state_key), scheduler ``__dict__`` numbers; their .pth exports: state dicts only.
# Checked by loading a tiny pretraining run's best/last .ckpt, its resume, the tuner's restore, the DDP
# resume and the semi-supervised run (tests/config/test_checkpoint_formats.py, test_resilience.py, test_e2e_*.py).
# A type that must be added goes here (never through torch.serialization.add_safe_globals, which would
# widen every torch.load of the process).
CHECKPOINT_SAFE_GLOBALS: tuple = ()

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _allowed_global_names() -> set[str]:
    names = {f"{g.__module__}.{g.__qualname__}" for g in CHECKPOINT_SAFE_GLOBALS}
    names |= {
        f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals() if hasattr(g, "__qualname__")
    }
    try:  # torch's built-in list (private; without it every global is reported)
        from torch._weights_only_unpickler import _get_allowed_globals

        names |= set(_get_allowed_globals())
    except ImportError:
        pass
    return names


def _pickle_globals(path: Path) -> list[str]:
    """The globals a checkpoint's (first) pickle names, in order, read with ``pickletools`` (nothing runs)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name in _STRING_OPS:
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
        return found
    except Exception:  # a malformed pickle: report what was found so far (nothing)
        return []


def _refusal(path: Path, err: Exception) -> str:
    """The one-line reason a weights-only load failed."""
    text = str(err)
    allowed = _allowed_global_names()
    blocked = list(dict.fromkeys(g for g in _pickle_globals(path) if g not in allowed))
    match = _GLOBAL_IN_MESSAGE.search(text)
    if not blocked and match:
        blocked = [match.group(1)]
    if blocked:
        names = ", ".join(f"'{g}'" for g in blocked[:3]) + (f" and {len(blocked) - 3} more" if len(blocked) > 3 else "")
        return (
            f"'{path}' is not a checkpoint mvmr can load safely: it needs {names}, neither a tensor nor a "
            "plain container or number (checkpoints are read with torch.load(weights_only=True) and nothing "
            "else is allowed)"
        )
    detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), None)
    if detail is not None:
        return f"'{path}' is not a checkpoint mvmr can load safely ({detail.rstrip('.')})"
    return f"'{path}' cannot be read ({type(err).__name__}); it may be truncated"


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """The contents of a checkpoint file of any layout, read with ``torch.load(weights_only=True)`` (plus
    ``CHECKPOINT_SAFE_GLOBALS``). One-line CheckpointError if missing, unreadable, or needing another type."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint '{path}' not found; pass the .ckpt of a run (e.g. runs/<name>/checkpoints/best.ckpt)"
        )
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refusal(path, err)) from None
    except Exception as err:  # truncated / foreign file
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({type(err).__name__}); it may be truncated"
        ) from None


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """Read a Lightning-style checkpoint (a dict with 'state_dict'), safely (:func:`read_checkpoint`); a one-line
    CheckpointError if missing, unreadable, unsafe or without 'state_dict'."""
    ckpt = read_checkpoint(path, map_location)
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
    """Lightning checkpoint IO whose writes are atomic (temporary file, then rename) and whose reads (resume,
    the tuner's restore) are :func:`load_checkpoint`'s: ``weights_only=True`` always, whatever Lightning passes
    (its default, None, would leave the choice to torch and an environment variable), local files only."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path, map_location: Any = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> Dict[str, Any]:
        return load_checkpoint(path, map_location)


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
        raise CheckpointError(
            f"'{source}' holds no moving-average weights (the run had ema_decay: 0); use eval.weights=online or auto"
        )
    return BACKBONE_PREFIXES[weights]


def copy_backbone_weights(backbone: nn.Module, theirs: dict, source: str, where: str = "backbone.") -> None:
    """Load ``theirs`` (the backbone's own key names) into ``backbone`` after checking that both hold the same
    weights with the same shapes; a one-line CheckpointError naming the first that differs (``where``: the
    prefix of those keys in the file, so the message names them as stored)."""
    own = backbone.state_dict()
    if not theirs:
        raise CheckpointError(f"'{source}' holds no backbone weights (no '{where}*' keys)")
    for key, value in own.items():
        if key not in theirs:
            raise CheckpointError(
                f"'{source}' lacks backbone weight '{where}{key}': the encoder differs from the config's"
            )
        if theirs[key].shape != value.shape:
            raise CheckpointError(
                f"'{source}' does not match the configured encoder: {where}{key} is "
                f"{tuple(theirs[key].shape)} in the checkpoint, {tuple(value.shape)} in the config"
            )
    extra = next((key for key in theirs if key not in own), None)
    if extra is not None:
        raise CheckpointError(
            f"'{source}' holds backbone weight '{where}{extra}' that the configured encoder lacks: "
            "the encoder differs from the config's (e.g. fewer blocks per stage)"
        )
    backbone.load_state_dict({k: theirs[k] for k in own})


def load_backbone_weights(backbone: nn.Module, state_dict: dict, source: str, weights: str = "auto") -> str:
    """Copy the backbone's weights (``weights``: auto / online / ema, see :func:`backbone_prefix`) from a state
    dict of this project; a one-line CheckpointError naming the first key or shape that differs. Returns the
    weights loaded: "online" or "ema"."""
    prefix = backbone_prefix(state_dict, weights, source)
    theirs = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    copy_backbone_weights(backbone, theirs, source, prefix)
    return "ema" if prefix == BACKBONE_PREFIXES["ema"] else "online"


def resolved_maxpool(encoder: EncoderConfig) -> bool:
    """Whether the backbone keeps the stem max-pool (``maxpool: null`` means: not with ``small_kernel``)."""
    return (not encoder.small_kernel) if encoder.maxpool is None else bool(encoder.maxpool)


def check_same_architecture(given: EncoderConfig, stored: EncoderConfig, source: str) -> None:
    """A one-line CheckpointError when ``given`` builds another function than the run's ``stored`` encoder with
    the same weights: the architecture keys that no weight shape shows (the stem max-pool, the pooling grid).
    Call after :func:`copy_backbone_weights`, which checks everything the shapes show."""
    for key, ours, theirs in (
        ("maxpool", resolved_maxpool(given), resolved_maxpool(stored)),
        ("pool_grid", given.pool_grid, stored.pool_grid),
    ):
        if ours != theirs:
            raise CheckpointError(
                f"'{source}' does not match the configured encoder: encoder.{key} is {theirs} in "
                f"the checkpoint's run, {ours} in the config"
            )
