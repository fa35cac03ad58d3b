"""Command-line flags and the error wrapper shared by every entry script; imports nothing heavy, so that
``--help`` answers before torch and Lightning load."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable, Sequence

from mvmr.errors import MVMRError


def doc_summary(doc: str | None) -> str:
    """A module docstring's first paragraph on one line: a script's ``--help`` description."""
    return " ".join((doc or "").split("\n\n")[0].split())


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (a bad value is a one-line usage error, not a traceback later)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def run_main(fn: Callable[[Sequence[str] | None], Any]) -> Callable[[Sequence[str] | None], int]:
    """Wrap an entry point: MVMRError -> 'error: ...' on stderr and exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            fn(argv)
        except MVMRError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
            return 130
        return 0

    return wrapper


def add_common_flags(parser: argparse.ArgumentParser, *, tuning: bool = True) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, YAML-typed), e.g. --set dataset.size=32; repeatable",
    )
    parser.add_argument(
        "--print_config",
        action="store_true",
        help="print the resolved config as YAML (what <run>/config.yaml holds) and exit, without "
        "building a model or reading data",
    )
    if tuning:
        parser.add_argument(
            "--auto_bs", action="store_true", help="find the largest batch size that fits (Lightning Tuner)"
        )
        parser.add_argument("--auto_lr", action="store_true", help="pick the learning rate with Lightning's LR finder")
        parser.add_argument("--resume", default=None, metavar="CKPT", help="resume from this checkpoint")


def load_or_print(path: str, overrides: list[str], schema_name: str, print_only: bool, protocol: str | None = None):
    """The validated config of ``path`` with ``--set`` overrides (schema ``mvmr.config.<schema_name>``); with
    ``--print_config`` (``print_only``) print it as YAML and return None. Imports the config module here, after
    parsing, so that ``--help`` never imports it."""
    from mvmr import config

    cfg = config.load_config(path, overrides, schema=getattr(config, schema_name), protocol=protocol)
    if print_only:
        print(config.config_yaml(cfg), end="")
        return None
    return cfg
