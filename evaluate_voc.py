#!/usr/bin/env python
"""VOC07 evaluation: python evaluate_voc.py --config <voc cfg> --ckpt <ckpt from main_voc.py>"""

import sys

from mvmr.cli.voc import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
