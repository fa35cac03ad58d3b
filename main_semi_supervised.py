#!/usr/bin/env python
"""Semi-supervised fine-tuning.

python main_semi_supervised.py --config <cfg> --path_ckpt <pretrained> [--auto_bs] [--auto_lr]
"""

import sys

from mvmr.cli.semi import train_main

if __name__ == "__main__":
    sys.exit(train_main())
