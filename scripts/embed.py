#!/usr/bin/env python
"""Embed a folder of images: python scripts/embed.py --ckpt CKPT --data FOLDER --out FILE.npz"""

import sys

from mvmr.cli.embed import main

if __name__ == "__main__":
    sys.exit(main())
