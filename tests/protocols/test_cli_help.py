"""Every script answers --help without doing work and before torch / Lightning load; examples in --help work."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = [
    "main_self_supervised.py",
    "main_clip_self_supervised.py",
    "main_semi_supervised.py",
    "main_voc.py",
    "evaluate_self_supervised.py",
    "evaluate_semi_supervised.py",
    "evaluate_voc.py",
    "scripts/embed.py",
    "scripts/plot_run.py",
    "scripts/demo.py",
    "scripts/config_reference.py",
    "benchmarks/data_path.py",
]
PROBE = """
import runpy, sys
sys.argv = [{script!r}, "--help"]
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("EXIT", code, "HEAVY", sorted(m for m in ("torch", "pytorch_lightning") if m in sys.modules))
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_harmless_and_loads_no_torch(script, tmp_path):
    config_doc = ROOT / "docs" / "CONFIG.md"
    before = config_doc.stat().st_mtime_ns
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(script=script, path=str(ROOT / script))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert "usage:" in proc.stdout, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    heavy_ok = script.startswith("benchmarks/")  # benchmarks are measurement scripts: torch is their subject
    assert last.startswith("EXIT 0") and (heavy_ok or last.endswith("HEAVY []")), last
    assert config_doc.stat().st_mtime_ns == before and not list(tmp_path.iterdir())  # nothing written


def test_every_flag_has_help_text():
    import argparse

    from mvmr.cli import embed, evaluate, pretrain, semi, voc

    parsers = [
        pretrain.build_parser("x"),
        evaluate.build_parser(),
        semi.train_parser(),
        semi.eval_parser(),
        voc.train_parser(),
        voc.eval_parser(),
        embed.build_parser(),
    ]
    for parser in parsers:
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{parser.prog}: {action.option_strings} has no help text"


def test_checkpoint_flag_is_ckpt_with_the_seed_and_authors_names_as_aliases():
    from mvmr.cli import evaluate, semi, voc

    for parser, aliases in [
        (evaluate.build_parser(), ("--path_ckpt", "-p")),
        (semi.train_parser(), ("--path_ckpt", "-p")),
        (voc.train_parser(), ("--path_self", "--path_ckpt", "-p")),
    ]:
        action = next(a for a in parser._actions if "--ckpt" in a.option_strings)
        assert action.option_strings[0] == "--ckpt" and set(aliases) <= set(action.option_strings)
