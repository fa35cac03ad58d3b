"""MV-MR: multi-views and multi-representations for self-supervised learning."""
__version__ = "0.1.0"

