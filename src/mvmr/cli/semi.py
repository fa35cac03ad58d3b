"""``main_semi_supervised.py`` and ``evaluate_semi_supervised.py``: parse the command line, then run
:mod:`mvmr.protocols.semi` (imported after parsing, so that ``--help`` answers before torch loads)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from mvmr.cli.flags import add_common_flags, load_or_print, run_main

TRAIN_EXAMPLE = (
    "python main_semi_supervised.py --config configs/digits_semi_supervised.yaml "
    "--ckpt runs/digits_demo/checkpoints/best.ckpt"
)
EVAL_EXAMPLE = (
    "python evaluate_semi_supervised.py --config configs/digits_semi_supervised.yaml "
    "--ckpt runs/digits_semi_supervised/checkpoints/best.ckpt"
)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Semi-supervised fine-tuning of a pretrained MV-MR encoder",
        epilog=f"example:\n  {TRAIN_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", "-c", required=True, help="semi-supervised config, e.g. configs/digits_semi_supervised.yaml"
    )
    parser.add_argument(
        "--ckpt",
        "--path_ckpt",
        "-p",
        dest="ckpt",
        default=None,
        help="pretrained checkpoint: a run's .ckpt, or a .ckpt / .pth saved by the authors' code "
        "(default: fine_tune_from of the config)",
    )
    add_common_flags(parser)
    return parser


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate a semi-supervised checkpoint on the test split",
        epilog=f"example:\n  {EVAL_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", required=True, help="the semi-supervised config the model was trained with")
    parser.add_argument("--ckpt", "-p", required=True, help="checkpoint written by main_semi_supervised.py")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_common_flags(parser, tuning=False)
    return parser


def _config(args):
    return load_or_print(args.config, args.set, "SemiSupervisedConfig", args.print_config)


def train(argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and fine-tune; with --print_config print the config and stop."""
    args = train_parser().parse_args(argv)
    cfg = _config(args)
    if cfg is None:
        return None
    from mvmr.protocols.semi import run_fine_tuning

    return run_fine_tuning(args, cfg)


def evaluate(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` and evaluate; with --print_config print the config and stop."""
    args = eval_parser().parse_args(argv)
    cfg = _config(args)
    if cfg is None:
        return {}
    from mvmr.protocols.semi import run_evaluation

    return run_evaluation(args, cfg)


train_main = run_main(train)
evaluate_main = run_main(evaluate)
