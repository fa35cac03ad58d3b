#!/usr/bin/env python
"""Linear evaluation: python evaluate_self_supervised.py --config <cfg> --ckpt <ckpt> [--epochs N] [--retrain]"""

import sys

from mvmr.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
