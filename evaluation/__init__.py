"""Evaluation-only tools: measuring instruments that nothing in training/ or service/ may tune
to (independent_photos.py: phone-style photos from a second, independently written renderer)."""
