"""Moved: the ensemble speed measurement is the command ``ddbench ensemble-speed`` (the learners
plugin, :mod:`ddbench_learners.speed`). This script forwards to it::

    python tests/benchmarks/ensemble_speed.py --device cuda    # = ddbench ensemble-speed --device cuda
"""
from __future__ import annotations

import sys

from ddbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["ensemble-speed", *sys.argv[1:]]))
