#!/usr/bin/env python3
"""`python launch.py CONFIG [options]` is the same as `slurm-rl launch CONFIG [options]`."""

import sys

from slurm_rl.cli import main

if __name__ == "__main__":
    main(["launch", *sys.argv[1:]])
