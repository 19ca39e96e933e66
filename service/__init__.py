"""Serving half of rnnserve. Importing the package imports neither BentoML nor torch."""
