"""Helpers of bench/scale.py: the generated corpus and one measured pipeline run."""
