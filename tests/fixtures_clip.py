"""A tiny random open_clip model standing in for CLIP ViT-B/16 (sizes only), and a guard against network use."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import open_clip
import torch

TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_open_clip(folder: Path, name: str, cfg: dict = TINY_VIT) -> tuple[torch.nn.Module, Path]:
    """Register open_clip architecture ``name`` (``cfg``) and save a seeded random model of it:
    (model in eval mode, its state-dict file)."""
    (Path(folder) / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(Path(folder) / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    path = Path(folder) / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return model, path


def refuse_network(monkeypatch) -> list:
    """Make every socket connection fail; returns the list of attempts (libraries may swallow the error)."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts
