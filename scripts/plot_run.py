#!/usr/bin/env python
"""Plot a run: python scripts/plot_run.py runs/<name> [--out DIR] [--ckpt CKPT] [--tsne_points N]

Writes <run>/plots/run.png (loss terms, learning rate, online probe, from metrics.csv) and tsne.png (backbone
features of test images, or of the training images of an unlabelled folder).
"""

import sys

from mvmr.cli.flags import run_main
from mvmr.cli.plots import main

if __name__ == "__main__":
    sys.exit(run_main(main)())
