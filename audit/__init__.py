"""diffaudit: fairness audits and debiasing benchmarks for diffusion models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffaudit")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
