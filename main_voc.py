#!/usr/bin/env python
"""VOC07 linear classification: python main_voc.py --config_voc <voc cfg> --config_self <self cfg> --path_self <ckpt>"""

import sys

from mvmr.cli.voc import train_main

if __name__ == "__main__":
    sys.exit(train_main())
