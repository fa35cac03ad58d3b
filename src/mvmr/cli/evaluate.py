"""``evaluate_self_supervised.py``: parse the command line, then run :mod:`mvmr.protocols.evaluate` (imported
after parsing, so that ``--help`` answers before torch loads)."""

from __future__ import annotations

import argparse
from typing import Sequence

from mvmr.cli.flags import add_common_flags, load_or_print, run_main

EXAMPLES = (
    "python evaluate_self_supervised.py --config configs/digits_self_supervised.yaml "
    "--ckpt runs/digits_demo/checkpoints/best.ckpt --retrain\n"
    "  python evaluate_self_supervised.py -c configs/stl10_self_supervised.yaml -p last.ckpt --protocol authors"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Linear evaluation of a pretrained MV-MR encoder",
        epilog=f"examples:\n  {EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", required=True, help="the self-supervised config the model was trained with")
    parser.add_argument(
        "--ckpt",
        "-p",
        "--path_ckpt",
        dest="ckpt",
        required=True,
        help="checkpoint to evaluate (runs/<name>/checkpoints/best.ckpt, or a .ckpt / .pth saved by the authors' code)",
    )
    parser.add_argument(
        "--epochs",
        "-e",
        type=int,
        default=None,
        help="linear-head epochs with --retrain (default: eval.epochs; the authors' script: 100)",
    )
    parser.add_argument("--retrain", action="store_true", help="train a new linear head on frozen features")
    parser.add_argument(
        "--protocol",
        choices=("mvmr", "authors"),
        default="mvmr",
        help="mvmr: choices made on held-out training data (default); authors: the number computed "
        "as the authors' evaluate_self_supervised.py does (probe on x̄ + mirror; --retrain: "
        "Adam 1e-3, augmented training images, best epoch chosen on the test split)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    add_common_flags(parser, tuning=False)
    return parser


def evaluate(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parse ``argv``, load the config, evaluate; with --print_config print the config and stop."""
    args = build_parser().parse_args(argv)
    cfg = load_or_print(args.config, args.set, "PretrainConfig", args.print_config)
    if cfg is None:
        return {}
    from mvmr.protocols.evaluate import run_evaluation

    return run_evaluation(args, cfg)


main = run_main(evaluate)
