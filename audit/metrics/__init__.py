"""Fairness and quality metrics: pure math in functional.py, streaming wrappers beside it."""
