"""MV-MR: multi-views and multi-representations for self-supervised learning."""

__version__ = "0.1.0"

__all__ = ["load_encoder"]


def __getattr__(name: str):
    """``mvmr.load_encoder`` without importing torch on ``import mvmr``."""
    if name == "load_encoder":
        from mvmr.api import load_encoder

        return load_encoder
    raise AttributeError(f"module 'mvmr' has no attribute {name!r}")
