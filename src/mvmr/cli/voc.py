"""``main_voc.py`` and ``evaluate_voc.py``: parse the command line, then run :mod:`mvmr.protocols.voc` (imported
after parsing, so that ``--help`` answers before torch loads)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from mvmr.cli.flags import add_common_flags, load_or_print, run_main

TRAIN_EXAMPLE = (
    "python main_voc.py --config_voc configs/imagenet_voc.yaml --config_self "
    "configs/imagenet_self_supervised.yaml --ckpt runs/imagenet_self_supervised/checkpoints/last.ckpt\n"
    "  python main_voc.py -c configs/imagenet_voc.yaml -p their_checkpoint.pth"
)
EVAL_EXAMPLE = (
    "python evaluate_voc.py --config configs/imagenet_voc.yaml --ckpt runs/imagenet_voc/checkpoints/best.ckpt"
)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="VOC07 multi-label linear classification on frozen features",
        epilog=f"examples:\n  {TRAIN_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config_voc",
        "--config",
        "-c",
        dest="config_voc",
        required=True,
        help="VOC config, e.g. configs/imagenet_voc.yaml",
    )
    parser.add_argument(
        "--config_self",
        default=None,
        help="the self-supervised config of the pretrained model (checked; for a checkpoint saved by "
        "the authors' code it gives the architecture and normalisation)",
    )
    parser.add_argument(
        "--ckpt",
        "--path_self",
        "--path_ckpt",
        "-p",
        dest="path_self",
        required=True,
        help="pretrained self-supervised checkpoint (a run's .ckpt, or the authors' .ckpt / .pth)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_common_flags(parser)
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="VOC07 per-class AP and mAP of a main_voc.py checkpoint",
        epilog=f"example:\n  {EVAL_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", required=True, help="VOC config")
    parser.add_argument("--ckpt", "-p", required=True, help="checkpoint written by main_voc.py")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_common_flags(parser, tuning=False)
    return parser


def _config(path: str, overrides: list[str], print_only: bool):
    return load_or_print(path, overrides, "VOCConfig", print_only)


def train(argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and train the VOC head; with --print_config print the config and stop."""
    args = train_parser().parse_args(argv)
    cfg = _config(args.config_voc, args.set, args.print_config)
    if cfg is None:
        return None
    from mvmr.protocols.voc import run_training

    return run_training(args, cfg)


def evaluate(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` and evaluate; with --print_config print the config and stop."""
    args = eval_parser().parse_args(argv)
    cfg = _config(args.config, args.set, args.print_config)
    if cfg is None:
        return {}
    from mvmr.protocols.voc import run_evaluation

    return run_evaluation(args, cfg)


train_main = run_main(train)
evaluate_main = run_main(evaluate)
