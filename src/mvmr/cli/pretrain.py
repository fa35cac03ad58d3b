"""``main_self_supervised.py`` / ``main_clip_self_supervised.py``: parse the command line, then run
:mod:`mvmr.protocols.pretrain` (imported after parsing, so that ``--help`` answers before torch loads)."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from mvmr.cli.flags import add_common_flags, load_or_print, run_main

EXAMPLES = {
    "main_self_supervised.py": (
        "python main_self_supervised.py --config configs/digits_self_supervised.yaml\n"
        "  python main_self_supervised.py -c configs/stl10_self_supervised.yaml "
        "--set dataset.path=/data/stl10 --print_config"
    ),
    "main_clip_self_supervised.py": (
        "python main_clip_self_supervised.py --config configs/digits_clip_self_supervised.yaml\n"
        "  python main_clip_self_supervised.py -c configs/stl10_clip_self_supervised.yaml "
        "--set clip.pretrained=/path/open_clip_model.bin"
    ),
}


def build_parser(description: str, script: str = "main_self_supervised.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        epilog=f"examples:\n  {EXAMPLES[script]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        "-c",
        required=True,
        help="YAML config, e.g. configs/digits_self_supervised.yaml (the authors' config files work as they are)",
    )
    add_common_flags(parser)
    return parser


def pretrain(
    argv: Sequence[str] | None = None,
    description: str = "MV-MR self-supervised pretraining",
    require_teacher: bool = False,
) -> Any:
    """Parse ``argv``, load and check the config, then pretrain; with --print_config print it and stop."""
    script = "main_clip_self_supervised.py" if require_teacher else "main_self_supervised.py"
    args = build_parser(description, script).parse_args(argv)
    protocol = "distillation" if require_teacher else "self_supervised"
    cfg = load_or_print(args.config, args.set, "PretrainConfig", args.print_config, protocol)
    if cfg is None:
        return None
    from mvmr.protocols.pretrain import run_pretraining

    return run_pretraining(args, cfg, require_teacher)


def distill(argv: Sequence[str] | None = None) -> Any:
    """MV-MR distillation of a frozen teacher: pretraining whose representations include a ``teacher`` term."""
    return pretrain(
        argv, "MV-MR knowledge distillation of a frozen teacher (e.g. CLIP's image tower)", require_teacher=True
    )


main = run_main(pretrain)
distill_main = run_main(distill)
