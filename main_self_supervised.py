#!/usr/bin/env python
"""MV-MR self-supervised pretraining.

python main_self_supervised.py --config <cfg> [--set k=v] [--auto_bs] [--auto_lr]
"""

import sys

from mvmr.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
