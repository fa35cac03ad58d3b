#!/usr/bin/env python
"""MV-MR distillation of a frozen teacher (CLIP image tower).

python main_clip_self_supervised.py --config <cfg> [--auto_bs] [--auto_lr]
"""

import sys

from mvmr.cli.pretrain import distill_main

if __name__ == "__main__":
    sys.exit(distill_main())
