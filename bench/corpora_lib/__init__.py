"""Helpers of bench/corpora.py (a folder, so `make bench`'s `bench/*.py` loop does not run them):
`corpus` builds the labelled mixed corpus, `markup` wraps real prose in wiki and HTML markup,
`report` scores the stages' outputs against the labels."""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("lmdata") is None:  # bench/corpora.py may have pinned another checkout first
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
