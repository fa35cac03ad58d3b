#!/usr/bin/env python
"""`make demo`: MV-MR pretraining on the embedded digits dataset, then linear + k-NN evaluation.

Equivalent to
    python main_self_supervised.py --config configs/digits_self_supervised.yaml --set resume=false
    python evaluate_self_supervised.py --config configs/digits_self_supervised.yaml \
        --ckpt runs/<run>/checkpoints/best.ckpt --retrain
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "digits_self_supervised.yaml")


def main() -> int:
    argparse.ArgumentParser(
        description="The make demo job: MV-MR pretraining on scikit-learn's digits, then linear "
        "and k-NN evaluation (a few minutes on a laptop CPU); no arguments"
    ).parse_args()
    from mvmr.cli.evaluate import evaluate
    from mvmr.cli.flags import run_main
    from mvmr.cli.pretrain import pretrain

    start = time.time()
    runs = {}

    def job(argv):
        runs["run"] = pretrain(
            [
                "--config",
                CONFIG,
                "--set",
                "resume=false",
                "--set",
                f"run_dir={ROOT / 'runs'}",
                "--set",
                "name=digits_demo",
            ]
        )
        print(f"pretraining took {time.time() - start:.0f} s")
        ckpt = runs["run"].best if runs["run"].best.is_file() else runs["run"].last
        evaluate(["--config", CONFIG, "--ckpt", str(ckpt), "--retrain", "--no_progress"])
        print(f"demo finished in {time.time() - start:.0f} s")

    return run_main(job)(None)


if __name__ == "__main__":
    sys.exit(main())
