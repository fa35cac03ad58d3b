#!/usr/bin/env python
"""Evaluate a semi-supervised model: python evaluate_semi_supervised.py --config <cfg> --ckpt <ckpt>"""

import sys

from mvmr.cli.semi import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
