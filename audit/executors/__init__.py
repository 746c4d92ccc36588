"""Executors that run a suite's cells: local (in audit.runner) and Ray."""
