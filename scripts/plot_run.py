#!/usr/bin/env python
"""Plot a run: python scripts/plot_run.py runs/<name> [--out DIR] [--ckpt CKPT] [--tsne_points N]

Writes loss_terms.png, probe_accuracy.png (from metrics.csv) and tsne.png (test-set backbone features).
"""
import sys

from mvmr.cli.common import run_main
from mvmr.cli.plots import main

if __name__ == "__main__":
    sys.exit(run_main(main)())
