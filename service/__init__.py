"""Serving half of rnnserve. Importing the package imports neither BentoML nor torch."""

__version__ = "0.1.0"
